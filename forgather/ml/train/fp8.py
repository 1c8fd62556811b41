"""FP8 training through torchao (`fp8: tensorwise | rowwise | rowwise_with_gw_hp`).

The model's linear layers inside its blocks become torchao `Float8Linear`s: their matmuls run in
float8 (e4m3 forward, e5m2 gradients for `tensorwise`) with dynamic scales, while the weights, the
optimizer state and everything outside those matmuls keep their dtype. The output head stays as it
is (its logits feed the loss, where float8 costs accuracy, and the fused loss reads its weight), as
does any layer whose sizes are not multiples of 16 (what the float8 kernels take).
"""

from __future__ import annotations

from typing import Any

import torch

from forgather.ml.train.args import FP8_RECIPES

MIN_CAPABILITY = (8, 9)  # Ada Lovelace and Hopper have FP8 tensor cores
MARK = "_forgather_fp8_layers"  # set on a converted model: the names of its float8 layers


def check(recipe: str | None, device: torch.device) -> None:
    """One clear error when this run cannot train in FP8 (before anything is built)."""
    if recipe is None:
        return
    if device.type != "cuda":
        raise ValueError(
            f"fp8={recipe} needs an NVIDIA GPU with FP8 tensor cores (compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+: Ada, Hopper or later); this run trains on "
            f"{device.type}. Remove fp8 to train in bf16"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise ValueError(
            f"fp8={recipe} needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ (Ada, "
            f"Hopper or later); {torch.cuda.get_device_name(device)} has "
            f"{capability[0]}.{capability[1]}. Remove fp8 to train in bf16"
        )
    _torchao_float8()


def _torchao_float8() -> Any:
    try:
        import torchao.float8 as float8
    except ImportError:
        raise ValueError(
            "fp8 needs torchao: pip install torchao (a release built for this torch)"
        ) from None
    return float8


def convert(model: torch.nn.Module, recipe: str) -> list[str]:
    """Swap the linear layers of `model` (not its output head, not sizes off the multiple of 16)
    for torchao's Float8Linear in place; returns the names of the swapped layers."""
    if recipe not in FP8_RECIPES:
        raise ValueError(f"fp8 must be one of {FP8_RECIPES}, got {recipe!r}")
    float8 = _torchao_float8()
    converted = getattr(model, MARK, None)
    if converted is not None:  # a second train() on the same model
        return converted
    head = _output_head(model)
    swapped: list[str] = []

    def wanted(module: torch.nn.Module, name: str) -> bool:
        take = (
            isinstance(module, torch.nn.Linear)
            and module is not head
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )
        if take:
            swapped.append(name)
        return take

    float8.convert_to_float8_training(
        model,
        module_filter_fn=wanted,
        config=float8.Float8LinearConfig.from_recipe_name(recipe),
    )
    if not swapped:
        raise ValueError(
            f"fp8={recipe}: {type(model).__name__} has no linear layer FP8 can take (sizes "
            "multiples of 16, the output head excepted)"
        )
    setattr(model, MARK, swapped)
    return swapped


def _output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None


__all__ = ["FP8_RECIPES", "check", "convert"]
