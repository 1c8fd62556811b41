"""Named model hyper-parameter presets (keyword arguments of ``ForgatherConfig``): a CPU-sized
member of each family, the 110M benchmark shape and the shapes of public checkpoints. A preset may
name a `base` preset and change some of its fields."""

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
    # --- CPU-sized members of each family (the same shape as tiny_llama_4m) ---
    "tiny_qwen3": {"base": "tiny_llama_4m", "qk_norm": True, "norm_eps": 1e-6},
    "tiny_mistral": {
        "base": "tiny_llama_4m", "num_key_value_heads": 2, "tie_word_embeddings": False,
        "sliding_window": 128,
    },
    # DeepNet: post-LN with the residual scaled by alpha and DeepNet's init (from the depth)
    "tiny_deepnet": {
        "base": "tiny_llama_4m", "layer_type": "deepnet", "norm": "layernorm",
        "num_hidden_layers": 8,
    },
    # GPT-2: pre-LN LayerNorm, learned absolute positions, GELU MLP, biases, tied head
    "tiny_gpt2": {
        "base": "tiny_llama_4m", "norm": "layernorm", "feedforward": "mlp",
        "hidden_act": "gelu_new", "intermediate_size": 1024, "positional_encoding": "learned",
        "attention_bias": True, "mlp_bias": True,
    },
    # ~110M: the shape of the GPU benchmarks (docs/performance.md)
    "llama_110m": {
        "base": "tiny_llama_4m", "vocab_size": 32000, "hidden_size": 768,
        "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
        "num_key_value_heads": 12,
    },
    # --- the shapes of public checkpoints (what `forgather convert` gives for their config.json) ---
    "llama3_2_1b": {
        "base": "tiny_llama_4m", "vocab_size": 128256, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
    },
    "mistral_7b": {  # Mistral-7B v0.3 (no sliding window)
        "base": "tiny_llama_4m", "vocab_size": 32768, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "tie_word_embeddings": False,
    },
    "gpt2_124m": {
        "base": "tiny_gpt2", "vocab_size": 50257, "hidden_size": 768, "intermediate_size": 3072,
        "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
        "max_position_embeddings": 1024,
    },
    "qwen3_0_6b": {
        "base": "tiny_llama_4m", "vocab_size": 151936, "hidden_size": 1024,
        "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
        "rope_theta": 1000000.0, "norm_eps": 1e-6, "qk_norm": True, "tie_word_embeddings": True,
    },
}  # fmt: skip


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of preset ``name`` updated with ``overrides``."""
    try:
        fields = dict(PRESETS[name])
    except KeyError:
        raise KeyError(
            f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None
    base = fields.pop("base", None)  # a preset may name another it changes
    return {**(preset(base) if base else {}), **fields, **overrides}
