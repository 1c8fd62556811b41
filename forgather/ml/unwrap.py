"""The plain model under training wrappers and its class name, its repeated blocks, and a sharded
tensor's own part (one owner for each)."""

from __future__ import annotations

from typing import Any

from torch import nn


def unwrap_model(model: Any) -> Any:
    """The model inside `torch.compile` and DDP-style (`.module`) wrappers.

    FSDP2 shards a model in place (no wrapper), so a sharded model is returned as it is.
    """
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
            if not isinstance(inner, nn.Module) or hasattr(model, "config"):
                return model
        model = inner
    return model


def plain_class(model: Any) -> type:
    """The class of the unwrapped model, without FSDP2's dynamic `FSDP<Name>` subclass."""
    cls = type(unwrap_model(model))
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return cls
    while issubclass(cls, FSDPModule) and cls is not FSDPModule:
        cls = next(base for base in cls.__bases__ if base is not FSDPModule)
    return cls


def model_class_name(model: Any) -> str:
    """The class name of the unwrapped model, without FSDP2's dynamic `FSDP<Name>` subclass."""
    return plain_class(model).__name__


def split_across_ranks(model: Any) -> str | None:
    """How `model` is split over processes ("fsdp", "pipeline"), or None when this rank holds it
    whole. A split model runs only with every rank taking part: it cannot generate on one rank."""
    model = unwrap_model(model)
    if getattr(model, "pipeline_stage", None):
        return "pipeline"
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    return "fsdp" if isinstance(model, FSDPModule) else None


def local_tensor(tensor: Any) -> Any:
    """This rank's part of a tensor: an FSDP shard's (DTensor's) local tensor, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def local_nbytes(tensor: Any) -> int:
    """Bytes of this rank's part of a tensor (see `local_tensor`)."""
    local = local_tensor(tensor)
    return local.numel() * local.element_size()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules whose class is in `_no_split_modules` (Hugging Face's
    name for them), else the children of its largest `ModuleList` of one class; [] if neither."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    lists = [
        m
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(child) for child in m}) == 1
    ]
    return list(max(lists, key=len)) if lists else []
