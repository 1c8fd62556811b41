"""Named model hyper-parameter presets (keyword arguments of ``ForgatherConfig``)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Llama-like: RMSNorm, RoPE, SwiGLU, pre-LN. ~4.46M parameters (embeddings tied with the head).
    "tiny_llama_4m": {
        "vocab_size": 4096,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "norm": "rmsnorm",
        "norm_eps": 1e-5,
        "layer_type": "pre_ln",
        "feedforward": "swiglu",
        "hidden_act": "silu",
        "positional_encoding": "rope",
        "rope_theta": 10000.0,
        "attention_backend": "sdpa",
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
    },
}


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of preset ``name`` updated with ``overrides``."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None
    return {**base, **overrides}
