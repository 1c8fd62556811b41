"""`parallelism: diloco`: workers train alone for H steps, then average what they learned.

DiLoCo (Douillard et al., 2023). Every rank is a worker with the whole model and its own optimizer
(the inner optimizer: the run's normal one) and its own data. Gradients are never synchronised; after
every `diloco_sync_every` (H) optimizer steps the workers compute the pseudo-gradient
`global - local` of every parameter, all-reduce its mean (one all-reduce of the model's size per H
steps, where DDP does one per step), and an outer optimizer — SGD with Nesterov momentum, learning
rate `diloco_outer_lr` — steps the global copy with it; every worker then continues from the new
global weights. So nodes on a slow LAN talk every H steps instead of every step.

Workers of different speeds do not deadlock: each runs the same number of inner steps and waits in
the all-reduce of the next sync for the slowest one (the fast ones idle there; nothing is dropped).
Checkpoints are written at synchronised points: a save at a step that is not a multiple of H
synchronises first (an outer step), as does the end of training, so the saved model is the one
global model. Each worker's inner optimizer state is saved under its own key, so a resume with the
same world size is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from forgather.ml.train.parallel.base import Strategy, diloco_worker_key


class DiLoCoStrategy(Strategy):
    """Local inner steps, an averaged outer Nesterov step every `diloco_sync_every` steps."""

    name = "diloco"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sync_every = self.args.diloco_sync_every
        self._names: list[str] = []
        self._global: list[torch.Tensor] = []
        self._outer: torch.optim.SGD | None = None
        self._synced_step = 0
        self._last_step = 0
        #: Bytes this rank has all-reduced for synchronisation (for benchmarks/parallel.py).
        self.bytes_reduced = 0

    def describe(self) -> str:
        return f"diloco (sync every {self.sync_every} steps)"

    def extra_state_bytes(self) -> int:
        """Bytes this strategy keeps besides the model and inner optimizer: the global weights
        and the outer momentum (two more copies of the trainable parameters, fp32 masters)."""
        tensors = [*self._global, *(s["momentum_buffer"] for s in self._outer.state.values())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._global = [p.detach().clone() for _, p in named]
        for tensor in self._global:
            tensor.requires_grad_(True)
        self._outer = torch.optim.SGD(
            self._global,
            lr=self.args.diloco_outer_lr,
            momentum=self.args.diloco_outer_momentum,
            nesterov=self.args.diloco_outer_momentum > 0,
        )
        self._params = [p for _, p in named]
        return model

    def after_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        self._last_step = step
        if step % self.sync_every == 0:
            self.synchronise()

    def before_save(self, model: torch.nn.Module) -> None:
        if self._last_step != self._synced_step:
            self.synchronise()

    @torch.no_grad()
    def synchronise(self) -> None:
        """The outer step: average the pseudo-gradients, step the global weights, adopt them."""
        pseudo = [g - p for g, p in zip(self._global, self._params, strict=True)]
        flat = torch.cat([t.reshape(-1) for t in pseudo])
        if self.env.initialized:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.env.world_size
            self.bytes_reduced += flat.numel() * flat.element_size()
        offset = 0
        for tensor in self._global:
            tensor.grad = flat[offset : offset + tensor.numel()].view_as(tensor).clone()
            offset += tensor.numel()
        self._outer.step()
        self._outer.zero_grad(set_to_none=True)
        for tensor, param in zip(self._global, self._params, strict=True):
            param.copy_(tensor)
        self._synced_step = self._last_step

    # --- checkpoints: each worker's inner state under its own key, the outer state once ---

    def _outer_state(self) -> dict[str, Any]:
        state = self._outer.state
        return {
            name: {"momentum_buffer": state[tensor]["momentum_buffer"]}
            for name, tensor in zip(self._names, self._global, strict=True)
            if state.get(tensor, {}).get("momentum_buffer") is not None
        }

    def optimizer_state_dict(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        inner = get_optimizer_state_dict(model, optimizer)
        return {f"worker{self.env.rank}": inner, "outer": self._outer_state()}

    def load_optimizer_state_dict(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        load: Callable[[dict[str, Any]], None],
        manifest: dict[str, Any],
    ) -> None:
        if manifest.get("parallelism") != self.name:  # from ddp/fsdp: one inner state for all
            super().load_optimizer_state_dict(model, optimizer, load, manifest)
            self._adopt_weights(manifest)
            return
        worker = diloco_worker_key(self.env.rank, manifest)
        inner = get_optimizer_state_dict(model, optimizer)
        template: dict[str, Any] = {worker: {"state": inner["state"]}}
        if self.args.diloco_outer_momentum > 0:
            template["outer"] = {
                name: {"momentum_buffer": torch.zeros_like(tensor)}
                for name, tensor in zip(self._names, self._global, strict=True)
            }
        load(template)
        set_optimizer_state_dict(model, optimizer, inner)
        for name, tensor in zip(self._names, self._global, strict=True):
            if "outer" in template:
                self._outer.state[tensor]["momentum_buffer"] = template["outer"][name][
                    "momentum_buffer"
                ]
        self._adopt_weights(manifest)

    @torch.no_grad()
    def _adopt_weights(self, manifest: dict[str, Any]) -> None:
        """The loaded weights are the global weights (checkpoints are written synchronised)."""
        for tensor, param in zip(self._global, self._params, strict=True):
            tensor.copy_(param)
        self._synced_step = self._last_step = int(manifest.get("step") or 0)
