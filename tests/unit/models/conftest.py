"""Tiny model configs and helpers shared by the model tests."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from forgather.ml.models.transformer import ForgatherConfig, ForgatherForCausalLM
from tests.remote_venv import (  # noqa: F401 (venv fixtures, shared with e2e)
    remote_torchao_venv,
    remote_venv,
    torchao_python,
)

VOCAB = 97


def tiny_config(**overrides) -> ForgatherConfig:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(overrides)
    return ForgatherConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> ForgatherForCausalLM:
    torch.manual_seed(seed)
    return ForgatherForCausalLM(tiny_config(**overrides)).eval()


def with_backend(model: ForgatherForCausalLM, backend: str) -> ForgatherForCausalLM:
    """The same weights under another attention backend."""
    for module in model.modules():
        if hasattr(module, "backend") and hasattr(module, "q_proj"):
            module.backend = backend
    model.config.attention_backend = backend
    return model


@functools.cache
def flex_skip_reason() -> str | None:
    """Why flex attention cannot run forward here, or None if it can."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:  # pragma: no cover - depends on the torch build
        return f"torch.nn.attention.flex_attention unavailable: {err}"
    try:
        q = torch.randn(1, 1, 4, 8)
        mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, 4, 4, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flex_attention(q, q, q, block_mask=mask)
    except Exception as err:  # pragma: no cover - depends on the torch build
        return f"flex_attention cannot run on CPU in torch {torch.__version__}: {err}"
    return None


FLEX_NO_CPU_BACKWARD = (
    f"torch {torch.__version__} has no flex_attention backward on CPU "
    "(NotImplementedError: FlexAttention does not support backward on CPU)"
)


def backend_param(backend: str, needs_backward: bool = False):
    """A pytest param for an attention backend, skipped where flex cannot run on CPU."""
    marks = []
    if backend == "flex":
        reason = flex_skip_reason()
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        elif needs_backward:  # these tests run on CPU (CUDA ones are in test_cuda.py)
            marks.append(pytest.mark.skip(reason=FLEX_NO_CPU_BACKWARD))
    return pytest.param(backend, marks=marks, id=backend)


ALL_BACKENDS = [backend_param(b) for b in ("eager", "sdpa", "flex")]
