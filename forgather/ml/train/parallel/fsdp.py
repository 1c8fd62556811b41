"""`parallelism: fsdp`: FSDP2 (`fully_shard`) per transformer block and at the root.

Each rank keeps 1/world of every parameter, gradient and optimizer state; a block's parameters are
all-gathered just before its forward (and backward) and freed after (`fsdp_reshard_after_forward`).
With `fsdp_replicate` R > 1 the ranks form an R x (world/R) mesh (HSDP): sharded within a group,
replicated across groups, so the all-gathers stay inside a node.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from forgather.errors import ForgatherError
from forgather.ml.train.parallel.base import Strategy
from forgather.ml.unwrap import transformer_blocks


class FSDPSetupError(ForgatherError):
    """The model or the world cannot be sharded as asked."""


def shard_options(args, mesh) -> dict:
    """`fully_shard` keyword arguments from the `fsdp_*` training arguments, on `mesh`."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    options = {"mesh": mesh, "reshard_after_forward": args.fsdp_reshard_after_forward}
    name = args.fsdp_param_dtype or ("bfloat16" if args.bf16 else None)
    if name not in (None, "float32"):
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=getattr(torch, name), reduce_dtype=torch.float32
        )
    if args.fsdp_cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    return options


class FSDPStrategy(Strategy):
    """FSDP2 over all ranks (HSDP with `fsdp_replicate`); the plain model in one process."""

    name = "fsdp"
    sharded = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._root: torch.nn.Module | None = None

    def describe(self) -> str:
        if self._root is None:
            return "fsdp (one process: nothing to shard)"
        replicate = self.args.fsdp_replicate
        layout = f"{replicate} x {self.env.world_size // replicate} HSDP" if replicate > 1 else ""
        return f"fsdp {layout}".strip()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        blocks = transformer_blocks(model)
        if not blocks:
            raise FSDPSetupError(
                f"parallelism=fsdp shards a model block by block, but {type(model).__name__} has "
                "no blocks (no _no_split_modules classes and no ModuleList of one layer type)"
            )
        if not self.env.is_distributed:
            return model
        from torch.distributed.fsdp import fully_shard

        options = shard_options(self.args, self._mesh())
        for block in blocks:
            fully_shard(block, **options)
        fully_shard(model, **options)
        self._root = model
        return model

    def _mesh(self):
        from torch.distributed.device_mesh import init_device_mesh

        world, replicate = self.env.world_size, self.args.fsdp_replicate
        device_type = self.device.type
        if replicate == 1:
            return init_device_mesh(device_type, (world,))
        if world % replicate:
            raise FSDPSetupError(
                f"fsdp_replicate={replicate} does not divide the world size {world}"
            )
        return init_device_mesh(
            device_type, (replicate, world // replicate), mesh_dim_names=("replicate", "shard")
        )

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        if self._root is None:
            yield
            return
        self._root.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self._root.set_requires_gradient_sync(True)

    def clip_gradients(self, model: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
        norm = super().clip_gradients(model, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        if self._root is None:
            return super().full_state_dict(model)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)  # a collective: every rank
        return state if self.env.is_main_process else None
