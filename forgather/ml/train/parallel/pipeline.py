"""`parallelism: pipeline`: the layers split into stages, one or more per rank, run by a schedule.

The model's decoder layers are cut into `world × pipeline_stages_per_rank` equal ranges (a stage
count that does not divide the layers is refused); the first stage also holds the embeddings, the
last the final norm and the head. Each rank builds the model, keeps only its stages' modules (the
others are dropped before the optimizer is made, so it holds only its share of the weights and
optimizer state) and runs `torch.distributed.pipelining` with the chosen schedule. The
gradient-accumulation micro-batches of an optimizer step are the pipeline's micro-batches.

With `pipeline_fsdp` D > 1 (2-D) the world is a (world/D) x D mesh: the D consecutive ranks of a
row run the same stages, each stage sharded over them with FSDP2 (per decoder layer and at the
stage's root), and they split the batch; the pipeline's sends and receives go between the ranks of
a column. torch's pipeline stages drive FSDP's gradient sync (reduce-scatter after the last
micro-batch only).

`pipeline_splitter` picks how the model is cut: `manual` (forgather causal LMs, as above) or `torch`
(torch's tracer, for any model `torch.export` captures whole, e.g. Hugging Face's Llama; see
`pipeline_trace`); `auto` takes `manual` for forgather causal LMs and `torch` for the rest.

Parameter names stay those of the whole model (layers live in a `ModuleDict` keyed by their
original index), so checkpoints are interchangeable with every other strategy. Tied input and output
embeddings stay tied: the first and last stages each hold the weight, start equal, and add their
gradients before every optimizer step. Every rank sees the whole batch (pipeline ranks do not split
the data); each micro-batch's position ids and attention mask travel with its hidden states.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from forgather.errors import ForgatherError
from forgather.ml.models.transformer.norms import RMSNorm
from forgather.ml.train.parallel.base import Strategy
from forgather.ml.unwrap import local_tensor

# name: (torch class, stage layout): "single" one stage per rank; "loop" stage r, r+W, r+2W, ...;
# "v" stages r and 2W-1-r (a V: the first and last stage on rank 0).
SCHEDULES = {
    "GPipe": ("ScheduleGPipe", "single"),
    "1F1B": ("Schedule1F1B", "single"),
    "Interleaved1F1B": ("ScheduleInterleaved1F1B", "loop"),
    "LoopedBFS": ("ScheduleLoopedBFS", "loop"),
    "InterleavedZeroBubble": ("ScheduleInterleavedZeroBubble", "loop"),
    "ZBV": ("ScheduleZBVZeroBubble", "v"),
}


class PipelineSetupError(ForgatherError):
    """The model or the schedule cannot be split into pipeline stages as asked."""


def stage_ids(rank: int, world: int, per_rank: int, layout: str) -> list[int]:
    """The pipeline stages rank `rank` runs."""
    if layout == "v":
        return [rank, 2 * world - 1 - rank]
    return [rank + k * world for k in range(per_rank)]


def layer_ranges(num_layers: int, num_stages: int) -> list[range]:
    """Equal, consecutive layer ranges, one per stage."""
    if num_layers % num_stages:
        raise PipelineSetupError(
            f"{num_stages} pipeline stages do not divide the model's {num_layers} layers: use a "
            "world size (x pipeline_stages_per_rank) that divides the layers"
        )
    size = num_layers // num_stages
    return [range(i * size, (i + 1) * size) for i in range(num_stages)]


_FIRST_INPUTS = ("input_ids", "position_ids", "attention_mask")


def first_stage_inputs(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, position ids, attention mask) of a batch, as the first stage takes them:
    positions 0.. and an all-ones mask where the batch has none."""
    ids = batch["input_ids"]
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    return ids, positions.contiguous(), mask


class StageModule(nn.Module):
    """One stage of a forgather causal LM: its layers, plus the embeddings (first stage) or the
    final norm and head (last). Registers only its own modules, so the schedule clears exactly this
    stage's gradients.

    Takes (input ids or hidden states, position ids, attention mask) and passes the position ids and
    mask on with its hidden states, so every stage masks each micro-batch's documents as the whole
    model would; the last stage returns the logits.
    """

    def __init__(self, lm: nn.Module, layers: list[int], first: bool, last: bool):
        super().__init__()
        inner = lm.model
        self.config = lm.config
        self.first, self.last = first, last
        self.embed_tokens = inner.embed_tokens if first else None
        self.absolute_positions = inner.absolute_positions if first else None
        self.dropout = inner.dropout
        self.layers = nn.ModuleList(inner.layers[str(i)] for i in layers)
        self.layer_ids = list(layers)
        self.norm = inner.norm if last else None
        self.lm_head = lm.lm_head if last else None
        self.rotary = inner.rotary
        self._checkpointing = inner.gradient_checkpointing
        self._checkpoint_every = getattr(inner, "gradient_checkpointing_every", 1)

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from torch.utils.checkpoint import checkpoint

        from forgather.ml.models.transformer.attention import build_attention_mask

        batch, length = x.shape[:2]
        if self.first:
            hidden = self.embed_tokens(x)
            if self.config.embedding_scale is not None:
                hidden = hidden * self.config.embedding_scale
            if self.absolute_positions is not None:
                hidden = hidden + self.absolute_positions(position_ids, hidden.dtype)
            hidden = self.dropout(hidden)
        else:
            hidden = x
        mask = build_attention_mask(
            (batch, length),
            0,
            x.device,
            attention_mask,
            position_ids,
            window=getattr(self.config, "sliding_window", None),
        )
        rotary = self.rotary(position_ids) if self.rotary is not None else None
        recompute = self._checkpointing and self.training and torch.is_grad_enabled()
        for layer_id, layer in zip(self.layer_ids, self.layers, strict=True):
            if recompute and layer_id % self._checkpoint_every == 0:
                hidden, _ = checkpoint(
                    layer.__call__, hidden, rotary, mask, None, False, use_reentrant=False
                )
            else:
                hidden, _ = layer(hidden, rotary, mask, None, False)
        if self.last:
            return self.lm_head(self.norm(hidden))
        return hidden, position_ids, attention_mask


def _name_seed(seed: int, name: str) -> int:
    """A seed from the run's seed and a module's name, the same in every process."""
    return zlib.crc32(f"{seed}:{name}".encode())


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _as_embedding(weight: nn.Parameter) -> nn.Embedding:
    """An embedding module around `weight` (no copy), so it is initialised as the embedding is."""
    module = nn.Embedding.__new__(nn.Embedding)
    nn.Module.__init__(module)
    module.weight = weight
    return module


def _is_forgather_lm(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return (
        getattr(getattr(model, "config", None), "model_type", None) == "forgather-causal-lm"
        and isinstance(getattr(inner, "layers", None), nn.ModuleList)
        and hasattr(model, "lm_head")
    )


class PipelineStrategy(Strategy):
    """Pipeline stages over all ranks with a `torch.distributed.pipelining` schedule."""

    name = "pipeline"
    sharded = True
    runs_steps = True  # the schedule runs forward and backward of a step, not the trainer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        schedule = self.args.pipeline_schedule
        self.schedule_class, self.layout = SCHEDULES[schedule]
        per_rank = self.args.pipeline_stages_per_rank
        if per_rank is None:
            per_rank = 1 if self.layout == "single" else 2
        if self.layout == "single" and per_rank != 1:
            raise PipelineSetupError(
                f"pipeline_schedule={schedule} runs one stage per rank; "
                f"pipeline_stages_per_rank={per_rank} needs Interleaved1F1B, LoopedBFS, "
                "InterleavedZeroBubble or ZBV"
            )
        if self.layout == "v" and per_rank != 2:
            raise PipelineSetupError("pipeline_schedule=ZBV runs exactly 2 stages per rank")
        self.per_rank = per_rank
        if not self.env.is_distributed:  # one process, one stage: the plain model, as ddp
            self.runs_steps = self.sharded = False
        world, self.dp = self.env.world_size, self.args.pipeline_fsdp
        if world % self.dp:
            raise PipelineSetupError(
                f"pipeline_fsdp={self.dp} does not divide the world size {world}"
            )
        self.pp_size = world // self.dp
        if self.dp > 1 and self.pp_size < 2:
            raise PipelineSetupError(
                f"pipeline_fsdp={self.dp} on {world} ranks leaves one pipeline rank: use "
                "parallelism=fsdp, or more ranks"
            )
        self.pp_rank, self.dp_rank = divmod(self.env.rank, self.dp)
        self.num_stages = self.pp_size * per_rank
        self.my_stages = stage_ids(self.pp_rank, self.pp_size, per_rank, self.layout)
        self._pp_group = None
        self._dp_mesh = None
        self.builds_on_meta = bool(self.args.pipeline_build_on_meta)
        self._stage_modules: list[StageModule] = []
        self._schedules: dict[int, Any] = {}
        self._tie_group = None
        self._tied: nn.Parameter | None = None
        self._count_tied_here = True
        self._digest: str | None = None
        self.loss_fn = None
        self.splitter = "manual"
        self._eval_modules: list[nn.Module] = []  # the traced splitter's evaluation-mode stages
        self._trace_shape: tuple[int, int] | None = None

    def describe(self) -> str:
        sharding = f", each sharded over {self.dp} ranks" if self.dp > 1 else ""
        cut = " cut by torch's tracer" if self.splitter == "torch" else ""
        return (
            f"pipeline ({self.args.pipeline_schedule}, {self.num_stages} stages{cut}{sharding}, "
            f"stages {self.my_stages} on rank {self.env.rank})"
        )

    def data_parallel(self) -> tuple[int, int]:
        # the ranks of one stage (pipeline_fsdp) split the batch; a column of stages shares one
        return self.dp_rank, self.dp

    def holds_first(self) -> bool:
        return 0 in self.my_stages

    def holds_last(self) -> bool:
        return self.num_stages - 1 in self.my_stages

    def _choose_splitter(self, model: nn.Module) -> str:
        splitter = self.args.pipeline_splitter
        if splitter == "auto":
            return "manual" if _is_forgather_lm(model) else "torch"
        if splitter == "manual" and not _is_forgather_lm(model):
            raise PipelineSetupError(
                f"pipeline_splitter=manual splits forgather causal LMs (ForgatherForCausalLM) by "
                f"layer ranges; {type(model).__name__} is not one: use pipeline_splitter=torch"
            )
        return splitter

    def prepare(self, model: nn.Module) -> nn.Module:
        self.splitter = self._choose_splitter(model)
        if self.splitter == "torch":
            return self._prepare_traced(model)
        from forgather.ml.train.checkpoint import model_digest

        self._digest = model_digest(model)  # of the whole model, before it is cut
        inner = model.model
        ranges = layer_ranges(len(inner.layers), self.num_stages)
        on_meta = any(p.is_meta for p in model.parameters())
        tied = model.lm_head.weight is inner.embed_tokens.weight
        if not self.env.is_distributed:  # one process, one stage: the plain model
            return self._materialise(model, tied) if on_meta else model
        if self.dp > 1:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(
                self.device.type, (self.pp_size, self.dp), mesh_dim_names=("pp", "dp")
            )
            self._pp_group, self._dp_mesh = mesh["pp"].get_group(), mesh["dp"]
            if tied and self.holds_first() and self.holds_last():
                raise PipelineSetupError(
                    f"pipeline_fsdp with pipeline_schedule={self.args.pipeline_schedule} puts the "
                    "first and last stage on one rank, which FSDP cannot shard with tied "
                    "embeddings; pick another schedule"
                )
        if tied and self.env.is_distributed:
            self._setup_tied_weights(model)
        mine = sorted(i for stage in self.my_stages for i in ranges[stage])
        inner.layers = nn.ModuleDict({str(i): inner.layers[i] for i in mine})
        first, last = self.holds_first(), self.holds_last()
        if not first:
            inner.embed_tokens = None
        if not last:
            inner.norm = None
            model.lm_head = None
        if last and not first and tied:  # keep the last stage's copy a parameter of its own
            model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
        if on_meta:
            self._materialise(model, tied)
        if tied and (first or last):
            self._tied = inner.embed_tokens.weight if first else model.lm_head.weight
        model.pipeline_stage = self.describe()  # callbacks that need the whole model look here
        self._model = model
        self._stage_modules = [
            StageModule(
                model,
                list(ranges[stage]),
                first=stage == 0,
                last=stage == self.num_stages - 1,
            )
            for stage in self.my_stages
        ]
        if self.dp > 1:
            self._shard_stages()
            if tied and (first or last):  # sharding replaced the parameter objects
                self._tied = inner.embed_tokens.weight if first else model.lm_head.weight
        return model

    def _prepare_traced(self, model: nn.Module) -> nn.Module:
        """Cut `model` with torch's tracer; keep this rank's stages and their parameters."""
        from forgather.ml.train.checkpoint import model_digest
        from forgather.ml.train.parallel import pipeline_trace as trace

        name = type(model).__name__
        refused = (
            (self.builds_on_meta, "pipeline_build_on_meta"),
            (self.dp > 1, f"pipeline_fsdp={self.dp}"),
        )
        for flag, option in refused:
            if flag:
                raise PipelineSetupError(
                    f"{option} needs pipeline_splitter=manual (forgather causal LMs); {name} is "
                    "cut by torch's tracer"
                )
        shared = trace.shared_weights(model)
        if shared:
            raise PipelineSetupError(
                f"pipeline_splitter=torch cannot keep {' and '.join(shared[0])} one tensor (torch's "
                f"tracer gives each stage its own copy); untie them (tie_word_embeddings=false) or "
                "use a forgather causal LM (pipeline_splitter=manual keeps them tied)"
            )
        _, blocks = trace.block_list(model)
        ranges = layer_ranges(blocks, self.num_stages)
        self._digest = model_digest(model)  # of the whole model, before it is cut
        if not self.env.is_distributed:  # one process, one stage: the plain model
            return model
        if self.example_batch is None:
            raise PipelineSetupError("pipeline_splitter=torch traces an example micro-batch")
        rows = self.args.per_device_train_batch_size
        first_rows = {k: v[:rows] for k, v in self.example_batch().items() if k in _FIRST_INPUTS}
        example = tuple(t.to(self.device) for t in first_stage_inputs(first_rows))
        self._trace_shape = tuple(example[0].shape)
        self._stage_modules = trace.trace_stages(model, ranges, example, self.my_stages, True)
        self._eval_modules = trace.trace_stages(model, ranges, example, self.my_stages, False)
        trace.keep_only(model, self._stage_modules)
        model.pipeline_stage = self.describe()
        self._model = model
        return model

    def _materialise(self, model: nn.Module, tied: bool) -> nn.Module:
        """Give the modules left on this rank (built on meta) memory on its device, and initialise
        each with the model's own `_init_weights`, seeded by the run's seed and the module's name,
        so every rank initialises a module it holds alike (the tied embedding and its copy on the
        last stage included)."""
        known = (nn.Embedding, nn.Linear, nn.LayerNorm, RMSNorm)
        for name, module in model.named_modules():
            if any(True for _ in module.parameters(recurse=False)) and not isinstance(
                module, known
            ):
                raise PipelineSetupError(
                    f"pipeline_build_on_meta: cannot initialise {name} ({type(module).__name__}) "
                    "after building on meta; build the model normally"
                )
        inner = model.model
        model.to_empty(device=self.device)
        shared = tied and inner.embed_tokens is not None and model.lm_head is not None
        if shared:  # first and last stage on this rank: one weight again
            model.lm_head.weight = inner.embed_tokens.weight
        for name, module in model.named_modules():
            if not isinstance(module, known):
                continue
            if name == "lm_head" and tied:
                if shared:
                    continue  # the embedding's weight
                # the last stage's copy of the tied weight starts as the embedding does
                name, module = "model.embed_tokens", _as_embedding(module.weight)
            with torch.random.fork_rng(devices=_rng_devices(self.device)):
                torch.manual_seed(_name_seed(self.args.seed, name))
                model._init_weights(module)
        return model

    def _shard_stages(self) -> None:
        """FSDP2 over the stage's ranks: each decoder layer, then each stage's root."""
        from torch.distributed.fsdp import fully_shard

        from forgather.ml.train.parallel.fsdp import shard_options

        options = shard_options(self.args, self._dp_mesh)
        for module in self._stage_modules:
            for layer in module.layers:
                fully_shard(layer, **options)
            fully_shard(module, **options)

    def _setup_tied_weights(self, model: nn.Module) -> None:
        """Groups of the ranks holding the first and the last stage, one per position within a
        stage's FSDP ranks (every rank must join every group)."""
        size = self.pp_size
        first = next(r for r in range(size) if 0 in stage_ids(r, size, self.per_rank, self.layout))
        last = next(
            r
            for r in range(size)
            if self.num_stages - 1 in stage_ids(r, size, self.per_rank, self.layout)
        )
        if first != last:
            for position in range(self.dp):
                ranks = sorted({first * self.dp + position, last * self.dp + position})
                group = dist.new_group(ranks)
                if self.env.rank in ranks:
                    self._tie_group = group
            # the tied weight counts once in the gradient norm: on the first stage's ranks
            self._count_tied_here = self.pp_rank == first

    def _schedule(self, n: int, train: bool, shape: tuple):
        """The schedule for `n` micro-batches of a batch of `shape` (evaluation gets its own: some
        schedules keep per-stage state that a forward-only run would change). Stages size their
        send and receive buffers at their first step, so each micro-batch shape (an evaluation
        set's last, shorter batch) gets stages of its own."""
        key = (n, train, shape)
        if key not in self._schedules:
            from torch.distributed.pipelining import PipelineStage, schedules

            modules = self._stage_modules if train or not self._eval_modules else self._eval_modules
            stages = [
                PipelineStage(module, stage, self.num_stages, self.device, group=self._pp_group)
                for module, stage in zip(modules, self.my_stages, strict=True)
            ]
            cls = getattr(schedules, self.schedule_class)
            target = stages[0] if self.layout == "single" else stages
            try:
                self._schedules[key] = cls(
                    target, n_microbatches=n, loss_fn=self._loss, scale_grads=False
                )
            except (ValueError, RuntimeError) as error:
                raise PipelineSetupError(
                    f"pipeline_schedule={self.args.pipeline_schedule} with {n} micro-batches per "
                    f"step (gradient_accumulation_steps) and {self.num_stages} stages: {error}"
                ) from None
            if train:
                self._n = n
        return self._schedules[key]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # each micro-batch's loss is divided by their number: the step's loss is their mean
        return self.loss_fn(logits, labels) / self._current_n

    def _run(self, batch: dict[str, Any], n: int, train: bool) -> torch.Tensor:
        self._current_n = n
        if self._trace_shape is not None:  # the traced stages take one micro-batch shape
            from forgather.ml.train.parallel.pipeline_trace import fit_to_trace

            batch = fit_to_trace(batch, self._trace_shape[1])
        shape: tuple = tuple(batch["input_ids"].shape)
        if self.dp > 1:
            # a new shape builds new stages, whose first step runs a shape-inference forward: the
            # ranks of a stage (FSDP collectives in every forward) must build them together
            shape = tuple(self.env.all_gather_object(shape))
        schedule = self._schedule(n, train, shape)
        ids, positions, mask = first_stage_inputs(batch)
        labels = batch.get("labels")
        if labels is None:
            labels = ids
        args = (ids, positions, mask) if self.holds_first() else ()
        target = labels if self.holds_last() else None
        losses: list[torch.Tensor] = []
        if train:
            schedule.step(*args, target=target, losses=losses, return_outputs=False)
        else:
            schedule.eval(*args, target=target, losses=losses)
        loss = torch.zeros((), device=self.device)
        if losses:
            loss = torch.stack([x.detach().float() for x in losses]).sum()
        # the loss exists on the last stage's ranks: make every rank hold it (the mean over the
        # stage's FSDP ranks, which each ran a part of the batch)
        return self.env.all_reduce(loss) / self.dp

    def forward_backward(
        self, micro_batches: list[dict[str, Any]], loss_fn: Any, autocast: Any
    ) -> torch.Tensor:
        """Forward and backward of one optimizer step; returns the step's mean loss on every rank.

        A step of fewer micro-batches than the schedule needs (the end of an epoch) runs them
        repeated: the mean loss and gradient over the repeats are those of the micro-batches once.
        """
        self.loss_fn = loss_fn
        sizes = {len(mb["input_ids"]) for mb in micro_batches}
        if len(sizes) > 1:
            raise PipelineSetupError(
                f"pipeline micro-batches must be of one size, got {sorted(sizes)} "
                "(dataloader_drop_last keeps them equal)"
            )
        repeats = -(-self.pp_size // len(micro_batches))  # ceil
        micro_batches = micro_batches * repeats
        batch = {
            key: torch.cat([mb[key] for mb in micro_batches])
            for key in micro_batches[0]
            if isinstance(micro_batches[0][key], torch.Tensor)
        }
        for module in self._stage_modules:
            module.train()
        with autocast():
            loss = self._run(batch, len(micro_batches), train=True)
        if self._tie_group is not None and self._tied.grad is not None:
            dist.all_reduce(local_tensor(self._tied.grad), group=self._tie_group)
        return loss

    def eval_loss(self, batch: dict[str, Any], loss_fn: Any, autocast: Any) -> torch.Tensor:
        """The mean loss of an evaluation batch on every rank (split into micro-batches)."""
        self.loss_fn = loss_fn
        batch, n = self._eval_chunks(batch)
        for module in self._stage_modules:
            module.eval()
        if self.layout == "v":
            # torch's ZBV schedule has no forward-only run (its eval() trips over its own backward
            # actions): evaluate with a training run and drop the gradients it leaves.
            with torch.enable_grad(), autocast():
                loss = self._run(batch, n, train=True)
            for module in self._stage_modules:
                module.zero_grad(set_to_none=True)
            return loss
        with torch.no_grad(), autocast():
            return self._run(batch, n, train=False)

    def _eval_chunks(self, batch: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The batch (repeated if it has fewer rows than the schedule needs micro-batches) and a
        micro-batch count that divides its rows, as near the training count as there is: equal
        micro-batches, so the mean of their losses is the batch's.

        Under `pipeline_fsdp` the ranks of a stage must run as many micro-batches as each other
        (each forward is an FSDP collective) although their batches may differ in size: always
        one per pipeline rank, each batch repeated until its rows divide by that."""
        rows = len(batch["input_ids"])
        least = self.pp_size
        if self._trace_shape is not None:
            # traced stages take micro-batches of the traced rows only: repeat the batch until its
            # rows make whole micro-batches, at least one per pipeline rank
            size = self._trace_shape[0]
            repeats = size // math.gcd(rows, size)
            repeats *= -(-least // (rows * repeats // size))
        elif self.dp > 1:
            repeats = least // math.gcd(rows, least)
        else:
            repeats = -(-least // rows) if rows < least else 1
        if repeats > 1:
            batch = {
                k: v.repeat(repeats, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }
            rows *= repeats
        if self._trace_shape is not None:
            return batch, rows // self._trace_shape[0]
        if self.dp > 1:
            return batch, least
        wanted = getattr(self, "_n", self.args.gradient_accumulation_steps)
        divisors = [d for d in range(least, rows + 1) if rows % d == 0]
        return batch, min(divisors, key=lambda d: (abs(d - wanted), d))

    def clip_gradients(self, model: nn.Module, max_norm: float | None) -> torch.Tensor:
        """The norm over all stages' gradients (the tied weight counted once); clip to it."""
        grads = [
            p.grad
            for p in model.parameters()
            if p.grad is not None and (self._count_tied_here or p is not self._tied)
        ]
        # every rank's gradients (and FSDP shards) are distinct: their squares add up to the norm
        local = (
            torch.stack([local_tensor(g).detach().float().pow(2).sum() for g in grads]).sum()
            if grads
            else torch.zeros((), device=self.device)
        )
        norm = self.env.all_reduce(local).sqrt()
        if max_norm is not None:
            coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            for p in model.parameters():
                if p.grad is not None:
                    local_tensor(p.grad).detach().mul_(coefficient.to(p.grad.device))
        return norm

    def model_digest(self, model: nn.Module) -> str:
        return self._digest

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        # FSDP shards are gathered within each stage's ranks (a collective of those ranks); one
        # copy of each stage goes to rank 0
        own = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
            for k, v in model.state_dict().items()
        }
        if self.dp_rank != 0:
            own = {}
        parts = self.env.gather_object(own)
        if not self.env.is_main_process:
            return None
        merged: dict[str, torch.Tensor] = {}
        for part in parts:
            merged.update(part)
        return merged

    def full_model(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        return self.whole_model(model, state)  # a stage cannot save the whole model itself
