"""The trainer: one training loop for a single process and for every parallel strategy (torchrun).

Read top to bottom: `__init__` (environment, seed, model), `train()` (set-up, resume, the epoch loop,
the final save), `train_step()` (one optimizer step over a gradient-accumulation group), `evaluate()`,
and the helpers for logging, checkpoints and callbacks. Data order, checkpoints, RNG, the loss,
LR schedules, the distributed environment and the parallel strategies (`parallel/`) each live in
their own module.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from forgather.errors import ForgatherError
from forgather.ml.data.streaming import TokenStream, as_token_stream, resumable_loader
from forgather.ml.optim import get_lr_scheduler, make_optimizer
from forgather.ml.signatures import accepts_keyword, first_parameter_name
from forgather.ml.train import activation_checkpointing, fp8
from forgather.ml.train.args import HYPERPARAMETERS, TrainingArguments
from forgather.ml.train.callbacks.base import CallbackHandler
from forgather.ml.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
)
from forgather.ml.train.data_state import (
    DataPosition,
    EvalBatchSampler,
    ResumableDistributedSampler,
    batches_per_epoch,
    check_data_state,
    check_stream_data_state,
    data_state_dict,
    stream_data_state_dict,
)
from forgather.ml.train.distributed import DistributedEnvironment
from forgather.ml.train.fast_path import check as check_fast_path
from forgather.ml.train.fast_path import fast_path
from forgather.ml.train.loss import IGNORE_INDEX, causal_lm_loss, logits_of
from forgather.ml.train.parallel import make_strategy
from forgather.ml.train.rng import get_rng_state, set_rng_state, set_seed
from forgather.ml.train.state import TrainerControl, TrainerState
from forgather.ml.unwrap import model_class_name, transformer_blocks, unwrap_model

CONTROL_FLAGS = (
    "should_training_stop",
    "should_epoch_stop",
    "should_save",
    "should_evaluate",
    "should_log",
    "should_abort_without_save",
)
# Trainer-state fields a resumed run takes from the checkpoint (the rest describe this run's set-up).
RESUMED_STATE_FIELDS = (
    "global_step",
    "epoch",
    "num_input_tokens_seen",
    "total_flos",
    "best_metric",
    "best_model_checkpoint",
    "log_history",
)


# Set by `fgl up --elastic` (trainer_args.keep_global_batch).
KEEP_GLOBAL_BATCH_ENV = "FORGATHER_KEEP_GLOBAL_BATCH"


class TrainerSetupError(ForgatherError):
    """The trainer's parts do not fit together (e.g. a tokenizer larger than the model's vocabulary)."""


def check_vocab(model: torch.nn.Module, tokenizer: Any) -> None:
    """Refuse a tokenizer whose token ids would not fit the model's embedding."""
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if tokenizer is None or vocab_size is None:
        return
    try:
        tokens = len(tokenizer)
    except TypeError:
        return
    if tokens > vocab_size:
        raise TrainerSetupError(
            f"the tokenizer has {tokens} tokens but the model's vocab_size is {vocab_size}: "
            "build the model with vocab_size >= len(tokenizer) (training configs pass "
            "`vocab_size: !call:len [ *tokenizer ]`)"
        )


class Trainer:
    """Trains `model` on `train_dataset` as `args` say; see `docs/trainers/options.md`.

    - `model` or `model_init` (called with no arguments after seeding) gives the model.
    - `data_collator(list_of_samples) -> batch dict` (default: transformers' `default_data_collator`).
    - `optimizer_factory`: called as `optimizer_factory(named_parameters)` with a list of
      `(name, parameter)` pairs when its first parameter is named `named_parameters`, else as
      `optimizer_factory(params)` with a list of the trainable parameters (so `torch.optim.AdamW` as a
      partial works). Default: AdamW (or SGD) from `args`, no weight decay on biases and norms.
    - `lr_scheduler_factory(optimizer=optimizer, num_training_steps=max_steps)` (the steps only
      when it takes them: a torch scheduler such as `!partial:torch.optim.lr_scheduler:StepLR`
      gets the optimizer alone); default:
      `get_lr_scheduler(args.lr_scheduler_type, ...)` with the warmup from `args`.
    - `compute_loss_func(outputs, labels) -> loss`: replaces the default shifted causal-LM
      cross-entropy. Either way `labels` (default: `input_ids`) are popped from the batch, not passed
      to the model.
    - `callbacks`: objects with any of the `TrainerCallback` methods.

    `checkpoint_metadata` (`config_digest`, `git_sha`, `image_digest`) may be set before `train()`;
    it goes into each checkpoint's manifest.
    """

    def __init__(
        self,
        *,
        args: TrainingArguments,
        model: torch.nn.Module | None = None,
        model_init: Callable[[], torch.nn.Module] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        data_collator: Callable | None = None,
        processing_class: Any = None,
        optimizer_factory: Callable | None = None,
        lr_scheduler_factory: Callable | None = None,
        callbacks: Iterable[Any] | None = None,
        compute_loss_func: Callable | None = None,
    ):
        self.args = args
        self.env = DistributedEnvironment.from_env()
        self.device = self.env.default_device(args.device)
        self.env.init_process_group(self.device, args.ddp_backend, args.ddp_timeout)
        set_seed(args.seed)
        self.strategy = make_strategy(args, self.env, self.device)
        # a strategy that materialises only its part builds the model on `meta` (no memory)
        on_meta = model is None and self.strategy.builds_on_meta
        if model is None:
            if model_init is None:
                raise ValueError("Trainer needs a model or a model_init")
            with torch.device("meta") if on_meta else nullcontext():
                model = model_init()
        check_vocab(model, processing_class)
        self.model = model if on_meta else model.to(self.device)
        self.wrapped_model: torch.nn.Module = self.model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        if data_collator is None:
            from transformers import default_data_collator as data_collator
        self.data_collator = data_collator
        self.processing_class = processing_class
        self.optimizer_factory = optimizer_factory
        self.lr_scheduler_factory = lr_scheduler_factory
        self.compute_loss_func = compute_loss_func
        self._loss_impl = self._choose_loss_impl()
        self.fp8_layers: list[str] = []  # the layers `fp8` runs in float8 (set by train())
        # Training and evaluation never decode: a model that would build a KV cache (Hugging Face
        # models do by default, even in training) is told not to (memory, and a compiled block
        # would otherwise be specialised to its layer's cache entry).
        forward = unwrap_model(self.model).forward
        self._no_cache = {"use_cache": False} if accepts_keyword(forward, "use_cache") else {}
        self.callback_handler = CallbackHandler(callbacks or [])
        self.checkpoint_metadata: dict[str, Any] = {}

        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.grad_scaler: torch.amp.GradScaler | None = None
        self.train_dataloader: DataLoader | None = None
        self.train_sampler: ResumableDistributedSampler | None = None
        self.train_stream: TokenStream | None = None
        self.eval_dataloader: DataLoader | None = None
        self.checkpoints: CheckpointManager | None = None
        self.position = DataPosition()
        self.state = TrainerState(
            logging_steps=args.logging_steps,
            eval_steps=args.eval_steps,
            save_steps=args.save_steps,
            train_batch_size=args.per_device_train_batch_size,
            effective_batch_size=args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * self.strategy.data_parallel()[1],
            is_world_process_zero=self.env.is_main_process,
            is_local_process_zero=self.env.is_local_main_process,
            world_size=self.env.world_size,
            rank=self.env.rank,
        )
        self.control = TrainerControl()
        self._last_eval: tuple[int, dict[str, float], bool] | None = None  # step, metrics, improved
        self._last_save_step = -1
        self._dispatch("on_init_end")

    # ------------------------------------------------------------------ training

    def train(self) -> TrainerState:
        """Train (resuming first if `args.resume_from_checkpoint`), save a final checkpoint unless
        aborted, and return the trainer state."""
        args, state = self.args, self.state
        self._setup_training()
        self.checkpoints.lock_output_dir()  # one run per output directory, until train ends
        try:
            with fast_path(args):  # the SDPA backend, activation budget and TF32 switches
                rng_state = self._resume_or_start()
                self._dispatch("on_train_begin")
                # after on_train_begin, so callbacks cannot shift the RNG stream
                if rng_state is not None:
                    set_rng_state(rng_state)
                start_time, start_step = time.perf_counter(), state.global_step

                while state.global_step < state.max_steps and not self._stopping():
                    self._train_epoch()
                if not self.control.should_abort_without_save:
                    if args.save_strategy != "no" and self._last_save_step != state.global_step:
                        self._save_checkpoint()
                    best = self.checkpoints.best() if args.load_best_model_at_end else None
                    if best is not None:
                        self.checkpoints.load_weights(best, self.model)

                self._log_summary(time.perf_counter() - start_time, state.global_step - start_step)
                self._dispatch("on_train_end")
                return state
        finally:
            self.checkpoints.unlock_output_dir()

    def _train_epoch(self) -> None:
        """Run the rest of the current epoch (from `self.position`), then its end-of-epoch actions."""
        args, state, position = self.args, self.state, self.position
        accumulation = args.gradient_accumulation_steps
        self.control.should_epoch_stop = False
        if self.train_sampler is not None:  # a stream's loader knows its own place
            self.train_sampler.set_epoch(
                position.epoch, start=position.batches_consumed * args.per_device_train_batch_size
            )
        self._dispatch("on_epoch_begin")
        batches = iter(self.train_dataloader)
        while position.batches_consumed < self.batches_per_epoch:
            if state.global_step >= state.max_steps or self._stopping():
                return  # stopped in the middle of an epoch: no end-of-epoch actions
            if self.control.should_epoch_stop:
                break
            count = min(accumulation, self.batches_per_epoch - position.batches_consumed)
            micro_batches = [self._to_device(next(batches)) for _ in range(count)]
            for batch in micro_batches:
                self._tokens_pending += _count_tokens(batch)
            self._dispatch("on_step_begin")
            loss, grad_norm = self.train_step(micro_batches)

            position.batches_consumed += count
            state.global_step += 1
            state.epoch = position.epoch + position.batches_consumed / self.batches_per_epoch
            self._loss_sum += loss
            self._run_loss_sum += loss
            self._interval_steps += 1
            self._grad_norm = grad_norm
            self._schedule_flags(
                log=args.logging_strategy == "steps"
                and (
                    state.global_step % args.logging_steps == 0
                    or (args.logging_first_step and state.global_step == 1)
                ),
                evaluate=args.eval_strategy == "steps" and state.global_step % args.eval_steps == 0,
                save=args.save_strategy == "steps" and state.global_step % args.save_steps == 0,
            )
            self._dispatch("on_step_end")
            self._act_on_control()

        position.epoch, position.batches_consumed = position.epoch + 1, 0
        state.epoch = float(position.epoch)
        self._schedule_flags(
            log=args.logging_strategy == "epoch",
            evaluate=args.eval_strategy == "epoch",
            save=args.save_strategy == "epoch",
        )
        self._dispatch("on_epoch_end")
        self._act_on_control()

    def train_step(self, micro_batches: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over a gradient-accumulation group; returns (mean loss, grad norm)."""
        self.wrapped_model.train()
        count = len(micro_batches)
        if self.strategy.runs_steps:  # a pipeline schedule runs the micro-batches itself
            step_loss = self.strategy.forward_backward(
                micro_batches, self._logits_loss, self._autocast
            )
            for _ in range(count - 1):
                self._dispatch("on_substep_end")
            return self._optimizer_step(step_loss)
        step_loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            is_last = i == count - 1
            # Gradients are synchronised only in the backward pass of the last micro-batch.
            with self.strategy.no_sync() if not is_last else nullcontext():
                with self._autocast():
                    loss = self.compute_loss(self.wrapped_model, batch) / count
                self._backward(loss)
            step_loss += loss.detach()
            if not is_last:
                self._dispatch("on_substep_end")
        return self._optimizer_step(step_loss)

    def _optimizer_step(self, step_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, step the optimizer and the LR schedule, zero the gradients."""
        self._dispatch("on_pre_optimizer_step")
        grad_norm = self._clip_gradients()
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.strategy.after_optimizer_step(self.model, self.state.global_step + 1)
        self._dispatch("on_optimizer_step")
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm

    def _logits_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss from logits, for strategies that run the model themselves (pipeline)."""
        if self.compute_loss_func is not None:
            return self.compute_loss_func(logits, labels)
        return causal_lm_loss(logits, labels)

    def _choose_loss_impl(self) -> str | None:
        """The fused loss backend the model computes its loss with (`fused_loss`), "model" (the
        model's own loss from the labels), or None: the trainer computes it from the logits."""
        from forgather.ml.models.transformer.loss import resolve_impl
        from forgather.ml.unwrap import unwrap_model

        choice = self.args.fused_loss
        if choice == "model":
            if self.compute_loss_func is not None:
                raise ValueError(
                    "fused_loss=model: the model computes its own loss, but a compute_loss_func "
                    "is given; use fused_loss=off to have it used"
                )
            return "model"
        if choice == "off" or self.compute_loss_func is not None:
            return None
        model = unwrap_model(self.model)
        if "loss_impl" not in inspect.signature(model.forward).parameters:
            if choice == "auto":
                return None
            raise ValueError(
                f"fused_loss={choice}: {type(model).__name__} computes no fused loss (forgather "
                "causal LMs do); use fused_loss=off or auto"
            )
        if choice == "auto":
            return "auto" if self.device.type == "cuda" else None
        try:
            return resolve_impl(choice, self.device)
        except ValueError as error:
            raise ValueError(f"fused_loss={choice}: {error}") from None

    def _compile(self, wrapped: torch.nn.Module) -> torch.nn.Module:
        """`torch_compile`: the whole model (`torch_compile_scope: model`), or each repeated
        block in place (`blocks`; the returned module is then `wrapped` itself)."""
        args = self.args
        if not args.torch_compile:
            return wrapped
        options = {
            "backend": args.torch_compile_backend or "inductor",
            "mode": args.torch_compile_mode,
        }
        if args.torch_compile_scope == "model":
            return torch.compile(wrapped, **options)
        blocks = transformer_blocks(self.model)
        if not blocks:
            raise ValueError(
                f"torch_compile_scope=blocks: {model_class_name(self.model)} has no repeated blocks "
                "to compile (neither `_no_split_modules` classes nor a ModuleList of one class); "
                "use torch_compile_scope=model"
            )
        for block in blocks:
            block.compile(**options)
        return wrapped

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of one batch: labels are popped (default: the input ids), the model sees the rest."""
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        if labels is None:
            labels = inputs["input_ids"]
        if self._loss_impl == "model":  # the model's own loss from the labels, in its forward
            return model(**inputs, **self._no_cache, labels=labels).loss
        if self._loss_impl is not None:  # the model computes it, fused with its head
            return model(**inputs, **self._no_cache, labels=labels, loss_impl=self._loss_impl).loss
        outputs = model(**inputs, **self._no_cache)
        if self.compute_loss_func is not None:
            return self.compute_loss_func(outputs, labels)
        return causal_lm_loss(logits_of(outputs), labels)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset: Any = None) -> dict[str, float]:
        """Mean loss over the evaluation batches (all ranks together), and its perplexity."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset")
        stream = as_token_stream(dataset)
        if stream is not None:
            self.eval_dataloader = None
            batches, counted = self._stream_eval_batches(stream)
        else:
            self.eval_dataloader = self._eval_dataloader(dataset)
            batches = self.eval_dataloader
            counted = self.eval_dataloader.batch_sampler.real_batches  # the rest only keep step
        start = time.perf_counter()
        model = self.model  # the plain module: no DDP hooks, no recompilation for eval shapes
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, batches
        with torch.no_grad():
            for index, batch in enumerate(batches):
                if self.strategy.runs_steps:
                    loss = self.strategy.eval_loss(
                        self._to_device(batch), self._logits_loss, self._autocast
                    )
                else:
                    with self._autocast():
                        loss = self.compute_loss(model, self._to_device(batch))
                if index < counted:
                    totals[0] += loss.double()
                    totals[1] += 1
        model.train(was_training)
        loss_sum, batches = self.env.all_reduce(totals).tolist()
        if batches == 0:
            raise ValueError("the evaluation dataset gave no batches")
        eval_loss = loss_sum / batches
        metrics = {
            "eval_loss": eval_loss,
            "eval_perplexity": math.exp(eval_loss) if eval_loss < 700 else math.inf,
            "eval_runtime": time.perf_counter() - start,
            "eval_batches": int(batches),
        }
        improved = self._track_best(metrics)
        self._last_eval = (self.state.global_step, metrics, improved)
        self._log(metrics)
        self._dispatch("on_evaluate", metrics=metrics)
        return metrics

    # ------------------------------------------------------------------ set-up

    def _setup_training(self) -> None:
        args, env = self.args, self.env
        if self.train_dataset is None:
            raise ValueError("train() needs a train_dataset")
        self.train_stream = as_token_stream(self.train_dataset)
        if self.train_stream is None and (
            not hasattr(self.train_dataset, "__len__")
            or not hasattr(self.train_dataset, "__getitem__")
        ):
            raise TypeError(
                "the train_dataset must be map-style (len and indexing) or a stream "
                "(forgather.ml.data.streaming.token_stream) for exact resume"
            )
        check_fast_path(args, self.device)
        fp8.check(args.fp8, self.device)
        if self.train_stream is not None:
            self._setup_stream(self.train_stream)
        else:
            self._setup_map_style()
        max_steps = self.state.max_steps

        if args.fp8 is not None:  # before checkpointing and sharding wrap the layers
            self.fp8_layers = fp8.convert(self.model, args.fp8)
        if args.gradient_checkpointing:
            activation_checkpointing.enable(
                self.model, args.gradient_checkpointing_every, args.gradient_checkpointing_policy
            )
        # A sharding strategy shards the parameters first: the optimizer holds the shards.
        self.strategy.example_batch = self._example_batch
        self.model = self.strategy.prepare(self.model)
        self.state.parallelism = self.strategy.describe()
        self.optimizer = self._create_optimizer()
        if args.optimizer_in_backward:
            self.optimizer = self._optimizer_in_backward(self.optimizer)
        self.lr_scheduler = self._create_scheduler(max_steps)
        if args.fp16:
            self.grad_scaler = torch.amp.GradScaler(self.device.type)

        self.wrapped_model = self._compile(self.strategy.wrap(self.model))

        self.checkpoints = CheckpointManager(
            args.output_dir,
            env=env,
            save_total_limit=args.save_total_limit,
            keep_best=args.save_best,
            metric_for_best_model=args.metric_for_best_model,
            greater_is_better=args.greater_is_better,
            metadata={
                **self.checkpoint_metadata,
                "hyperparameters": {name: getattr(args, name) for name in HYPERPARAMETERS},
            },
            save_on_each_node=args.save_on_each_node,
            allow_changed_hyperparameters=args.allow_changed_hyperparameters,
        )
        zero = torch.zeros((), device=self.device)
        self._loss_sum, self._run_loss_sum = zero.clone(), zero.clone()
        self._tokens_pending = torch.zeros((), dtype=torch.int64, device=self.device)
        self._interval_steps = 0
        self._grad_norm = zero.clone()
        self._last_lr = self.optimizer.param_groups[0]["lr"]

    def _create_optimizer(self) -> torch.optim.Optimizer:
        args = self.args
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            try:
                return make_optimizer(
                    named,
                    name=args.optim,
                    lr=args.learning_rate,
                    weight_decay=args.weight_decay,
                    betas=(args.adam_beta1, args.adam_beta2),
                    eps=args.adam_epsilon,
                    **args.optim_kwargs,
                )
            except (TypeError, ValueError) as error:  # a misspelt or out-of-range option
                raise TrainerSetupError(
                    f"trainer_args.optim {args.optim!r} with trainer_args.optim_kwargs "
                    f"{args.optim_kwargs}: {error}"
                ) from error
        named_factory = first_parameter_name(self.optimizer_factory) == "named_parameters"
        try:
            return self.optimizer_factory(named if named_factory else [p for _, p in named])
        except ValueError as error:  # an option out of range, a pattern matching nothing
            raise TrainerSetupError(f"optimizer_factory: {error}") from error

    def _optimizer_in_backward(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """`optimizer` split per parameter and stepped in the backward pass, where that can be."""
        from forgather.ml.optim.in_backward import OptimizerInBackward

        args = self.args
        refusals = [
            (self.env.world_size > 1, f"runs in one process, not {self.env.world_size} (its "
             "hooks would step before the gradients are averaged across ranks)"),
            (args.gradient_accumulation_steps != 1, "needs gradient_accumulation_steps: 1, not "
             f"{args.gradient_accumulation_steps} (each gradient is used as soon as it exists)"),
            (args.max_grad_norm is not None, "cannot clip by the global gradient norm (no "
             "parameter waits for the others): set max_grad_norm: null (the norm is still logged)"),
            (args.fp16, "does not work with fp16's gradient scaler: use bf16"),
        ]  # fmt: skip
        for refused, why in refusals:
            if refused:
                raise ValueError(f"optimizer_in_backward {why}")
        return OptimizerInBackward(optimizer)

    def _create_scheduler(self, max_steps: int) -> Any:
        args = self.args
        factory = self.lr_scheduler_factory
        if factory is not None:  # a torch scheduler takes no num_training_steps: give it its own
            steps = (
                {"num_training_steps": max_steps}
                if accepts_keyword(factory, "num_training_steps")
                else {}
            )
            return factory(optimizer=self.optimizer, **steps)
        warmup = args.warmup_steps or math.ceil(args.warmup_ratio * max_steps)
        return get_lr_scheduler(
            args.lr_scheduler_type, self.optimizer, warmup, max_steps, **args.lr_scheduler_kwargs
        )

    def _setup_map_style(self) -> None:
        """The seeded, resumable sampler and loader of a map-style training set; max_steps."""
        args = self.args
        data_rank, data_world = self.strategy.data_parallel()
        # pipeline micro-batches must be of one size: the epoch's incomplete last batch is dropped
        self._drop_last = args.dataloader_drop_last or self.strategy.runs_steps
        self.train_sampler = ResumableDistributedSampler(
            len(self.train_dataset),
            seed=args.data_seed,
            rank=data_rank,
            world_size=data_world,
            shuffle=True,
            drop_last=self._drop_last,
        )
        self.train_dataloader = DataLoader(
            self.train_dataset,
            batch_size=args.per_device_train_batch_size,
            sampler=self.train_sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and self.device.type == "cuda",
            drop_last=self._drop_last,
            # Its own generator: creating an iterator must not consume the global torch RNG.
            generator=torch.Generator().manual_seed(args.data_seed),
        )
        self.batches_per_epoch = batches_per_epoch(
            self.train_sampler, args.per_device_train_batch_size, self._drop_last
        )
        if self.batches_per_epoch == 0:
            raise ValueError("the training dataset is smaller than one batch per process")
        steps_per_epoch = math.ceil(self.batches_per_epoch / args.gradient_accumulation_steps)
        if args.max_steps > 0:
            max_steps = args.max_steps
        else:
            max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
        self.state.max_steps = max_steps
        self.state.num_train_epochs = (
            math.ceil(max_steps / steps_per_epoch) if args.max_steps > 0 else args.num_train_epochs
        )

    def _setup_stream(self, stream: TokenStream) -> None:
        """This rank's part of a streaming training set, in a loader that saves its place.

        A stream has no length: `max_steps` ends the run, and the stream repeats (pass after pass)
        until then, so no rank runs out before another. The position is torchdata's
        `StatefulDataLoader` state (each worker's stream position and shuffle buffer), saved per rank.
        """
        args = self.args
        if args.max_steps <= 0:
            raise ValueError(
                "trainer_args.max_steps: a streaming train_dataset has no length, so the run needs "
                f"max_steps > 0 to know when to stop (got {args.max_steps})"
            )
        data_rank, data_world = self.strategy.data_parallel()
        self.train_stream = stream.split_by_node(data_rank, data_world)
        workers = args.dataloader_num_workers
        if workers > 1 and self.env.is_main_process:
            shards = self.train_stream.num_shards
            if shards < workers:
                sys.stderr.write(
                    f"forgather: the training stream has {shards} file(s) per rank, fewer than "
                    f"dataloader_num_workers={workers}: {workers - shards} worker(s) will idle\n"
                )
        self._drop_last = True  # a repeating stream has no short last batch
        self.train_sampler = None
        self.train_dataloader = resumable_loader(
            self.train_stream,
            batch_size=args.per_device_train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory and self.device.type == "cuda",
            drop_last=True,
        )
        self.batches_per_epoch = sys.maxsize  # one endless pass; max_steps stops it
        self.state.max_steps = args.max_steps
        self.state.num_train_epochs = 1

    def _stream_data_state(self) -> dict[str, Any]:
        return stream_data_state_dict(
            self.position,
            self.strategy.data_parallel()[1],
            self.args.per_device_train_batch_size,
            self.args.dataloader_num_workers,
        )

    def _resume_or_start(self) -> dict[str, Any] | None:
        """Load the checkpoint asked for (returning its RNG state), or check the output dir is free."""
        args, env = self.args, self.env
        spec = args.resume_from_checkpoint
        if spec == "auto":
            spec = True if self.checkpoints.latest_on_any_node() is not None else None
        if spec:
            path = self.checkpoints.resolve(spec)
            loaded = self.checkpoints.load(
                path,
                model=self.model,
                optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler,
                grad_scaler=self.grad_scaler,
                strategy=self.strategy,
            )
            if self.train_stream is None and (
                args.keep_global_batch or os.environ.get(KEEP_GLOBAL_BATCH_ENV) == "1"
            ):
                self._keep_global_batch(loaded.data_state)
            try:
                if self.train_stream is not None:
                    self.position = check_stream_data_state(
                        loaded.data_state, loaded.rank_data_state, self._stream_data_state()
                    )
                    self.train_dataloader.load_state_dict(loaded.rank_data_state)
                else:
                    self.position = check_data_state(
                        loaded.data_state, self.train_sampler, args.per_device_train_batch_size
                    )
            except ValueError as error:
                raise CheckpointError(f"{path}: {error}") from None
            self._note_reshard(loaded.manifest)
            for name in RESUMED_STATE_FIELDS:
                if name in loaded.trainer_state:
                    setattr(self.state, name, loaded.trainer_state[name])
            self._last_save_step = self.state.global_step
            rng_state = loaded.rng_state
        else:
            existing = self.checkpoints.latest_on_any_node()
            if existing is not None:
                if not args.overwrite_output_dir:
                    raise CheckpointError(
                        f"{self.checkpoints.dir} already holds checkpoints (latest {existing.name}): "
                        "resume with `forgather train --resume latest` (resume_from_checkpoint=True), or start "
                        "over with `trainer_args.overwrite_output_dir=true`"
                    )
                self.checkpoints.delete_all()
            rng_state = None
        self.checkpoints.clean_temp_dirs()
        env.barrier()
        return rng_state

    def _keep_global_batch(self, data_state: dict[str, Any]) -> None:
        """Raise (or lower) gradient accumulation so the checkpoint's global batch stays."""
        args = self.args
        ranks = self.strategy.data_parallel()[1]
        accumulation = args.gradient_accumulation_steps
        saved = int(data_state["per_device_batch_size"]) * int(data_state["world_size"])
        per_micro_step = args.per_device_train_batch_size * ranks
        if saved == per_micro_step:
            return
        say = sys.stderr.write if self.env.is_main_process else (lambda text: None)
        if self.strategy.name == "pipeline" or (saved * accumulation) % per_micro_step:
            say(
                f"forgather: cannot keep the global batch of {saved * accumulation} samples on "
                f"{ranks} data-parallel rank(s) of {args.per_device_train_batch_size}: it becomes "
                f"{per_micro_step * accumulation}\n"
            )
            return
        args.gradient_accumulation_steps = saved * accumulation // per_micro_step
        self.state.effective_batch_size = saved * accumulation
        say(
            f"forgather: keeping the global batch of {saved * accumulation} samples on {ranks} "
            f"data-parallel rank(s): gradient_accumulation_steps {accumulation} -> "
            f"{args.gradient_accumulation_steps}\n"
        )

    def _note_reshard(self, manifest: dict[str, Any]) -> None:
        """Say so when a checkpoint of another world size or strategy is resumed (resharded)."""
        saved_world, saved_strategy = manifest.get("world_size"), manifest.get("parallelism", "ddp")
        if saved_world == self.env.world_size and saved_strategy == self.strategy.name:
            return
        if self.env.is_main_process:
            sys.stderr.write(
                f"forgather: resharding checkpoint {manifest.get('step')} from {saved_strategy} on "
                f"{saved_world} process(es) to {self.strategy.describe()} on {self.env.world_size}; "
                "the data continues at the same sample; ranks the checkpoint lacked start a fresh RNG\n"
            )

    # ------------------------------------------------------------------ control, logging, saving

    def _schedule_flags(self, *, log: bool, evaluate: bool, save: bool) -> None:
        """Set the flags the strategies ask for at this point; callbacks may add more."""
        self.control.should_log |= log
        self.control.should_evaluate |= evaluate and self.eval_dataset is not None
        self.control.should_save |= save

    def _act_on_control(self) -> None:
        """Make every rank agree on the control flags, then log, evaluate and save as they say."""
        self._sync_control()
        control = self.control
        if control.should_abort_without_save:
            return
        if control.should_log:
            self._log_training()
        if self.control.should_evaluate and self.eval_dataset is not None:
            self.evaluate()
            if self.args.save_best and self._last_eval[2]:
                self.control.should_save = True  # keep the new best
        if self.control.should_save:
            self._save_checkpoint()
        self.control.reset_step_flags()

    def _sync_control(self) -> None:
        if not self.env.is_distributed:
            return
        flags = torch.tensor(
            [int(getattr(self.control, name)) for name in CONTROL_FLAGS], device=self.device
        )
        self.env.all_reduce(flags, op="max")
        for name, value in zip(CONTROL_FLAGS, flags.tolist(), strict=True):
            setattr(self.control, name, bool(value))

    def _stopping(self) -> bool:
        return self.control.should_training_stop or self.control.should_abort_without_save

    def _sync_tokens(self) -> None:
        tokens = self.env.all_reduce(self._tokens_pending.clone())
        # ranks that see the same data (pipeline stages) count the same tokens
        tokens //= self.env.world_size // self.strategy.data_parallel()[1]
        self.state.num_input_tokens_seen += int(tokens.item())
        self._tokens_pending.zero_()

    def _log_training(self) -> None:
        """Log the mean loss since the last log (over all ranks), grad norm, LR, epoch and tokens."""
        if self._interval_steps == 0:
            return
        loss_sum = self.env.all_reduce(self._loss_sum.clone(), op="mean").item()
        self._sync_tokens()
        logs = {
            "loss": loss_sum / self._interval_steps,
            "grad_norm": self._grad_norm.item(),
            "learning_rate": self._last_lr,
            "epoch": self.state.epoch,
            "tokens": self.state.num_input_tokens_seen,
        }
        self._loss_sum.zero_()
        self._interval_steps = 0
        self._log(logs)

    def _log_summary(self, runtime: float, steps: int) -> None:
        self._sync_tokens()
        total_loss = self.env.all_reduce(self._run_loss_sum.clone(), op="mean").item()
        samples = steps * self.state.effective_batch_size
        self._log(
            {
                "train_runtime": runtime,
                "train_samples_per_second": samples / runtime if runtime > 0 else 0.0,
                "train_steps_per_second": steps / runtime if runtime > 0 else 0.0,
                "train_loss": total_loss / steps if steps else math.nan,
                "tokens": self.state.num_input_tokens_seen,
            }
        )

    def _log(self, logs: dict[str, float]) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._dispatch("on_log", logs=logs)

    def _track_best(self, metrics: dict[str, float]) -> bool:
        """Update `state.best_metric`; True when `metrics` improve on it."""
        value = metrics.get(self.args.metric_for_best_model)
        if value is None:
            return False
        best = self.state.best_metric
        if best is None or (value > best if self.args.greater_is_better else value < best):
            self.state.best_metric = value
            return True
        return False

    def _save_checkpoint(self) -> None:
        self.strategy.before_save(self.model)
        step = self.state.global_step
        self._sync_tokens()
        metrics, improved = None, False
        if self._last_eval is not None and self._last_eval[0] == step:
            _, metrics, improved = self._last_eval
        if improved:
            self.state.best_model_checkpoint = str(self.checkpoints.dir / f"checkpoint-{step}")
        path = self.checkpoints.save(
            step=step,
            epoch=self.state.epoch,
            model=self.model,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            trainer_state=self.state.to_dict(),
            data_state=self._stream_data_state()
            if self.train_stream is not None
            else data_state_dict(
                self.position, self.train_sampler, self.args.per_device_train_batch_size
            ),
            rank_data_state=self.train_dataloader.state_dict()
            if self.train_stream is not None
            else None,
            rng_state=get_rng_state(),
            grad_scaler=self.grad_scaler,
            metrics=metrics,
            tokenizer=self.processing_class,
            strategy=self.strategy,
        )
        self._last_save_step = step
        self._dispatch("on_save", checkpoint_dir=str(path))

    def _dispatch(self, event: str, **kwargs: Any) -> None:
        self.control = self.callback_handler.dispatch(
            event,
            self.args,
            self.state,
            self.control,
            model=self.model,
            processing_class=self.processing_class,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            train_dataloader=self.train_dataloader,
            eval_dataloader=self.eval_dataloader,
            **kwargs,
        )

    # ------------------------------------------------------------------ small helpers

    def _example_batch(self) -> dict[str, Any]:
        """The first per-device batch of the training set (read directly: no sampler moves)."""
        size = self.args.per_device_train_batch_size
        if self.train_stream is not None:  # a fresh read of this rank's stream: the loader stays
            rows = itertools.islice(self.train_stream.single_pass(), size)
            return self.data_collator(list(rows))
        rows = min(len(self.train_dataset), size)
        return self.data_collator([self.train_dataset[i] for i in range(rows)])

    def _eval_dataloader(self, dataset: Any) -> DataLoader:
        sampler = EvalBatchSampler(
            len(dataset),
            self.args.per_device_eval_batch_size,
            rank=self.strategy.data_parallel()[0],
            world_size=self.strategy.data_parallel()[1],
            max_batches=self.args.max_eval_steps,
            equal_counts=self.strategy.sharded,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and self.device.type == "cuda",
        )

    def _stream_eval_batches(self, stream: TokenStream) -> tuple[Iterable[Any], int]:
        """This rank's evaluation batches from one pass over its part of a stream, and how many count.

        `max_eval_steps` caps the batches of all ranks together. Under a sharded strategy every
        rank must run as many batches as the others (the forward is a collective): the batches are
        read first and a rank with fewer repeats its first ones, which do not count.
        """
        rank, world = self.strategy.data_parallel()
        loader = DataLoader(
            stream.split_by_node(rank, world).single_pass(),
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self.data_collator,
        )
        limit = self.args.max_eval_steps
        batches: Iterable[Any] = loader
        if limit > 0:
            batches = itertools.islice(loader, -(-limit // world))
        if not self.strategy.sharded:
            return batches, sys.maxsize
        batches = list(batches)
        counted = len(batches)
        most = int(self.env.all_reduce(torch.tensor([counted], device=self.device), "max"))
        if most and not batches:
            raise ValueError(
                f"the evaluation stream gave rank {rank} of {world} no batches while others have "
                f"{most}: give the evaluation data at least as many files or rows as ranks"
            )
        batches += [batches[i % counted] for i in range(most - counted)] if counted else []
        return batches, counted

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def _autocast(self):
        if self.args.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.args.fp16:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.grad_scaler is not None:
            loss = self.grad_scaler.scale(loss)
        loss.backward()

    def _clip_gradients(self) -> torch.Tensor:
        """Clip to `max_grad_norm` (or only measure when None); returns the norm before clipping."""
        take_norm = getattr(self.optimizer, "take_grad_norm", None)
        if take_norm is not None:  # stepped in the backward pass: the hooks measured the norm
            return take_norm().to(self.device)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        return self.strategy.clip_gradients(self.model, self.args.max_grad_norm)

    # ------------------------------------------------------------------ saving the model

    def save_model(self, output_dir: str | None = None) -> None:
        """Write the model (and tokenizer) as a loadable directory; rank 0 writes, all ranks wait.

        Models with `save_pretrained` save themselves (a forgather model's directory also gets the
        source it loads by, whoever saves it) and the tokenizer joins them; plain modules get
        `model.safetensors`.
        """
        output_dir = output_dir or self.args.output_dir
        self.strategy.before_save(self.model)
        # Sharded strategies gather the full weights first (a collective every rank joins).
        state = self.strategy.full_state_dict(self.model) if self.strategy.sharded else None
        if self.env.is_main_process:
            model = unwrap_model(self.model)
            if state is not None:
                model = self.strategy.full_model(model, state)
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(
                    output_dir, **({} if state is None else {"state_dict": state})
                )
                if hasattr(self.processing_class, "save_pretrained"):
                    self.processing_class.save_pretrained(output_dir)
            else:
                from safetensors.torch import save_file

                Path(output_dir).mkdir(parents=True, exist_ok=True)
                weights = state if state is not None else model.state_dict()
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                    str(Path(output_dir) / "model.safetensors"),
                )
        self.env.barrier()

    def generation_model(self) -> torch.nn.Module | None:
        """The whole model, for generating text on rank 0 (None on the other ranks).

        Every rank must call it: under a strategy that splits the model (fsdp, pipeline) the
        weights are gathered to rank 0 into a whole copy built from the model's config.
        """
        model = unwrap_model(self.model)
        if not self.strategy.sharded or not self.env.is_distributed:
            return model if self.env.is_main_process else None
        state = self.strategy.full_state_dict(self.model)
        if not self.env.is_main_process:
            return None
        return self.strategy.whole_model(model, state).to(self.device)

    def close(self, failed: bool = False) -> None:
        """Leave the process group (under torchrun); call once done with the trainer.

        `failed`: this rank is stopping on an error, so it leaves without waiting for the others.
        """
        self.env.cleanup(failed)


def _count_tokens(batch: dict[str, Any]) -> torch.Tensor:
    """Non-padding tokens of a batch: the attention mask's sum, else labels that are not ignored."""
    if isinstance(batch.get("attention_mask"), torch.Tensor):
        return batch["attention_mask"].sum()
    if isinstance(batch.get("labels"), torch.Tensor):
        return (batch["labels"] != IGNORE_INDEX).sum()
    return torch.tensor(batch["input_ids"].numel())


__all__ = ["Trainer"]
