"""What every parallel strategy provides to the `Trainer` loop."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)


def diloco_worker_key(rank: int, manifest: dict[str, Any]) -> str:
    """The key of the inner optimizer state rank `rank` takes from a DiLoCo checkpoint."""
    return f"worker{rank % int(manifest.get('world_size') or 1)}"


def load_optimizer_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    load: Callable[[dict[str, Any]], None],
    manifest: dict[str, Any],
    rank: int = 0,
) -> None:
    """Read the per-parameter optimizer state of a checkpoint with `load` and apply it; the param
    groups' settings stay this run's (learning rates come back with the LR scheduler)."""
    state = get_optimizer_state_dict(model, optimizer)  # also initialises lazy state
    template = {"state": state["state"]}
    if manifest.get("parallelism") == "diloco":  # a DiLoCo checkpoint keeps every worker's
        load({diloco_worker_key(rank, manifest): template})
    else:
        load(template)
    set_optimizer_state_dict(model, optimizer, state)


class Strategy:
    """A way to train one model on the ranks of `env`; the defaults are those of one process.

    The trainer calls, in order: `prepare(model)` before it builds the optimizer (a strategy that
    shards parameters does it here), `wrap(model)` after (the module the training forward runs
    through), then per step `no_sync()` around every micro-batch but the last and
    `clip_gradients()` before the optimizer step.
    """

    name = "single"
    #: Whether each rank holds only a shard of the weights (then `full_state_dict` gathers them).
    sharded = False
    # True: the trainer builds the model on the meta device and `prepare` materialises it
    builds_on_meta = False
    #: Whether the strategy runs a step's forward and backward itself (`forward_backward`).
    runs_steps = False
    #: Set by the trainer before `prepare`: returns one batch of the training data (a strategy
    #: that traces the model needs an example).
    example_batch: Callable[[], dict[str, Any]] | None = None

    def __init__(self, args: Any, env: Any, device: torch.device):
        self.args = args
        self.env = env
        self.device = device

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def no_sync(self) -> AbstractContextManager:
        return nullcontext()

    def clip_gradients(self, model: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
        """Clip to `max_norm` (only measure when None); returns the total norm before clipping."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if max_norm is None:
            return torch.nn.utils.get_total_norm(grads)
        return torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.grad is not None], max_norm
        )

    def data_parallel(self) -> tuple[int, int]:
        """(rank, size) of this process among those that read different data."""
        return self.env.rank, self.env.world_size

    def model_digest(self, model: torch.nn.Module) -> str:
        """The digest of the whole model (names, shapes, dtypes), as checkpoints record it."""
        from forgather.ml.train.checkpoint import model_digest

        return model_digest(model)

    def full_model(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A module to save with `full_state_dict`'s weights (rank 0): the model itself here."""
        return model

    def whole_model(
        self, model: torch.nn.Module, state: dict[str, torch.Tensor]
    ) -> torch.nn.Module:
        """A new, unsplit model of `model`'s class and config holding `state` (rank 0)."""
        from forgather.ml.unwrap import plain_class

        whole = plain_class(model)(model.config)
        missing, unexpected = whole.load_state_dict(state, strict=False)
        tied = getattr(whole, "_tied_weights_keys", None) or []
        if [k for k in missing if k not in tied] or unexpected:
            raise RuntimeError(
                f"gathered weights do not fit {type(whole).__name__}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        return whole

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere); every rank must call it."""
        return model.state_dict() if self.env.is_main_process else None

    def after_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        """Called on every rank after optimizer step `step` (1-based), before the LR step."""

    def before_save(self, model: torch.nn.Module) -> None:
        """Called on every rank before a checkpoint or the final model is written."""

    def optimizer_state_dict(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """What a checkpoint stores of the optimizer (DCP, keyed by parameter name)."""
        return get_optimizer_state_dict(model, optimizer)

    def load_optimizer_state_dict(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        load: Callable[[dict[str, Any]], None],
        manifest: dict[str, Any],
    ) -> None:
        """Fill a template of `optimizer_state_dict`'s shape with `load` and apply it.

        Only the per-parameter state is read; the param groups' settings stay this run's (their
        learning rates come back with the LR scheduler's state). So any strategy's checkpoint loads,
        whichever parameters each of its ranks held.
        """
        load_optimizer_state(model, optimizer, load, manifest, self.env.rank)

    def describe(self) -> str:
        return self.name
