"""Text samples from the model being trained, at each evaluation."""

from __future__ import annotations

import sys
import warnings
from typing import Any, TextIO

import torch

from forgather.ml.train.callbacks.base import TrainerCallback


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, list | tuple):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"cannot find logits in the model output ({type(output).__name__})")
    return logits


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float):
    logits = logits.float()
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / max(temperature, 1e-6)
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1)


@torch.no_grad()
def sample_loop(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_length: int | None = None,
) -> torch.Tensor:
    """Greedy (or sampling) decoding by calling the model on the whole sequence each step.

    Works with any model that maps `input_ids` to logits `[batch, seq, vocab]` (a tensor, a tuple
    whose first item are the logits, or an output with `.logits`). Returns the new tokens only.
    """
    ids = input_ids
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        context = ids[:, -max_length:] if max_length else ids
        try:
            output = model(input_ids=context)
        except TypeError:
            output = model(context)
        token = _pick(_logits(output)[:, -1, :], do_sample, temperature, top_k, top_p)
        new.append(token)
        ids = torch.cat([ids, token.to(ids.dtype)], dim=-1)
        if eos_token_id is not None and bool((token == eos_token_id).all()):
            break
    if not new:
        return input_ids[:, :0]
    return torch.cat(new, dim=-1)


class TextSampleCallback(TrainerCallback):
    """Generates a completion of each prompt at every evaluation (rank 0 only).

    Uses `model.generate` when the model has it (greedy unless `generation_kwargs` say otherwise),
    else a plain decoding loop over the logits (`do_sample`, `temperature`, `top_k`, `top_p` of
    `generation_kwargs` apply). The tokenizer is the `processing_class` the trainer passes.
    With `every_eval=False` samples are made once, at the end of training.
    Each round appends `{"samples": [{"prompt", "text"}...], "step": N}` to `state.log_history`,
    where JsonLinesLogger (a `samples` record) and TensorBoardLogger (text `samples`) pick it up,
    and prints the samples (`print_samples`, to `output`, default stdout).
    The global RNG state is saved and restored around generation so that sampling does not change
    the training run; `seed` makes sampling repeatable (seeded with seed + step).
    Under FSDP or tensor parallelism generation on rank 0 alone would hang: use it with DDP or
    single-process training.
    """

    def __init__(
        self,
        prompts: list[str],
        max_new_tokens: int = 40,
        every_eval: bool = True,
        generation_kwargs: dict[str, Any] | None = None,
        print_samples: bool = True,
        output: TextIO | None = None,
        seed: int = 0,
    ):
        if isinstance(prompts, str):
            prompts = [prompts]
        self.prompts = list(prompts)
        self.max_new_tokens = int(max_new_tokens)
        self.every_eval = every_eval
        self.generation_kwargs = dict(generation_kwargs or {})
        self.print_samples = print_samples
        self.output = output
        self.seed = seed
        self._generate_failed = False
        self._split_noted = False
        self.last_samples: list[dict[str, str]] = []

    # ---- generation ----

    def _encode(self, tokenizer: Any, prompt: str, device: torch.device) -> torch.Tensor:
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=True)
        input_ids = encoded["input_ids"]
        if input_ids.numel() == 0:
            start = tokenizer.bos_token_id
            if start is None:
                start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
            input_ids = torch.tensor([[start]])
        return input_ids.to(device)

    def complete(self, model: Any, tokenizer: Any, prompt: str) -> str:
        """The model's continuation of `prompt` (decoded, special tokens skipped)."""
        from forgather.ml.train.throughput import model_device
        from forgather.ml.unwrap import unwrap_model

        model = unwrap_model(model)
        device = model_device(model)
        input_ids = self._encode(tokenizer, prompt, device)
        kwargs = {"do_sample": False, **self.generation_kwargs}
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        new_tokens = None
        generate = getattr(model, "generate", None)
        if callable(generate) and not self._generate_failed:
            try:
                output = generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=pad,
                    **kwargs,
                )
                sequences = getattr(output, "sequences", output)
                new_tokens = sequences[:, input_ids.shape[1] :]
            except Exception as error:  # a model whose generate() does not work: use the loop
                warnings.warn(
                    f"model.generate failed ({error}); sampling with a plain decoding loop",
                    stacklevel=2,
                )
                self._generate_failed = True
        if new_tokens is None:
            config = getattr(model, "config", None)
            new_tokens = sample_loop(
                model,
                input_ids,
                self.max_new_tokens,
                eos_token_id=eos,
                do_sample=bool(kwargs.get("do_sample", False)),
                temperature=float(kwargs.get("temperature", 1.0) or 1.0),
                top_k=int(kwargs.get("top_k", 0) or 0),
                top_p=float(kwargs.get("top_p", 1.0) or 1.0),
                max_length=getattr(config, "max_position_embeddings", None),
            )
        return tokenizer.decode(new_tokens[0].tolist(), skip_special_tokens=True)

    def generate_samples(self, model: Any, tokenizer: Any, step: int = 0) -> list[dict[str, str]]:
        """One completion per prompt, in eval mode, without touching the global RNG state."""
        from forgather.ml.train.throughput import model_device
        from forgather.ml.unwrap import unwrap_model

        inner = unwrap_model(model)
        was_training = inner.training
        device = model_device(inner)
        devices = [device] if device.type == "cuda" else []
        inner.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(self.seed + step)
                return [
                    {"prompt": prompt, "text": self.complete(inner, tokenizer, prompt)}
                    for prompt in self.prompts
                ]
        finally:
            inner.train(was_training)

    def _run(self, state: Any, kwargs: dict[str, Any]) -> None:
        if not state.is_world_process_zero or not self.prompts:
            return
        model = kwargs.get("model")
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        if model is None or tokenizer is None:
            warnings.warn(
                "TextSampleCallback needs the model and processing_class (tokenizer) kwargs",
                stacklevel=3,
            )
            return
        from forgather.ml.unwrap import split_across_ranks

        split = split_across_ranks(model)
        if split is not None:  # rank 0 alone cannot run a model split over the ranks
            if not self._split_noted:
                self._split_noted = True
                print(
                    f"samples during training are skipped: the model is split over the ranks "
                    f"({split}); the training script samples from the whole model at the end",
                    file=self.output if self.output is not None else sys.stdout,
                    flush=True,
                )
            return
        samples = self.generate_samples(model, tokenizer, state.global_step)
        self.last_samples = samples
        state.log_history.append({"samples": samples, "step": state.global_step})
        if self.print_samples:
            out = self.output if self.output is not None else sys.stdout
            lines = [f"samples at step {state.global_step}:"]
            for sample in samples:
                lines.append(f"  > {sample['prompt']}{sample['text']}")
            print("\n".join(lines), file=out, flush=True)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.every_eval:
            self._run(state, kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.every_eval:
            self._run(state, kwargs)
