"""FLOPs of training a token, and the peak FLOP/s of a device: what MFU is measured against.

`flops_per_token` estimates the training FLOPs (forward + backward) of one token:

    flops_per_token = 6 * N + 12 * L * A * T

* N: parameters that take part in matrix multiplies: every weight with two or more dimensions,
  the LM head included (counted once, tied or not), input embedding tables excluded (a lookup is no
  multiply); biases and norm gains are left out (they are additions, not multiply-accumulates).
* L: transformer layers, A: attention width (heads x head dim, usually the hidden size),
  T: sequence length. Per layer and token the forward pass computes QK^T and the attention-weighted
  sum over T positions: 2 * 2 * A * T FLOPs; the backward pass costs twice that: 12 * A * T.
  The full T x T score matrix is counted (the PaLM convention, also used by nanoGPT and torchtitan),
  even where a causal kernel skips the upper half.

MFU = achieved model FLOPs per second / peak FLOPs per second of all devices, where the peak comes
from `PEAK_FLOPS` (dense bf16 tensor-core numbers of the vendor data sheets, no sparsity). CPUs and
unknown devices have no peak: `device_peak_flops` returns None and no MFU is reported.
See docs/trainers/metrics.md.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from forgather.ml.unwrap import unwrap_model

# Dense (no sparsity) bf16 tensor-core peak FLOP/s per device, from the vendors' data sheets.
# V100 and T4 have no bf16: their fp16 tensor-core peak is listed.
PEAK_FLOPS: dict[str, float] = {
    "B200": 2.25e15,
    "H200 NVL": 835e12,
    "H200": 989.4e12,
    "GH200": 989.4e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756.5e12,
    "H100 SXM": 989.4e12,
    "H800": 989.4e12,
    "A100": 312e12,
    "A800": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362.05e12,
    "L40": 181.05e12,
    "L4": 121e12,
    "RTX 6000 Ada": 364.2e12,
    "RTX A6000": 154.8e12,
    "RTX 4090": 165.2e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
    "MI300X": 1307.4e12,
    "MI250X": 383e12,
}

# (pattern on the upper-cased device name, PEAK_FLOPS key); the first match wins, so the more
# specific names come first (H100 NVL before H100, L40S before L40 before L4, A10G before A10).
_DEVICE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bB200\b", "B200"),
    (r"\bGH200\b", "GH200"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe"),
    (r"\bH100\b", "H100 SXM"),
    (r"\bH800\b", "H800"),
    (r"\bA100\b", "A100"),
    (r"\bA800\b", "A800"),
    (r"\bA10G\b", "A10G"),
    (r"\bA10\b", "A10"),
    (r"\bL40S\b", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
    (r"\bRTX 6000 ADA\b", "RTX 6000 Ada"),
    (r"\bRTX A6000\b", "RTX A6000"),
    (r"\bRTX 4090\b", "RTX 4090"),
    (r"\bRTX 3090\b", "RTX 3090"),
    (r"\bV100\b", "V100"),
    (r"\bT4\b", "T4"),
    (r"\bMI300X\b", "MI300X"),
    (r"\bMI250X?\b", "MI250X"),
)


def peak_flops_for_name(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a device named like `torch.cuda.get_device_name` names it."""
    upper = device_name.upper().replace("-", " ").replace("_", " ")
    for pattern, key in _DEVICE_PATTERNS:
        if re.search(pattern, upper):
            return PEAK_FLOPS[key]
    return None


def device_peak_flops(device: Any = None) -> float | None:
    """Peak FLOP/s of one device (`torch.device`, "cuda:1", an index); None on CPU or if unknown."""
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda", torch.cuda.current_device())
    if isinstance(device, int):
        device = torch.device("cuda", device)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


# ---- FLOPs per token -------------------------------------------------------------------------

_HIDDEN = ("hidden_size", "d_model", "n_embd", "dim", "model_dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_FFN = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "dim_feedforward", "ffn_hidden_size")
_ACT = ("hidden_act", "activation_function", "activation")
# HF model types whose MLP is gated (gate, up and down projections).
_GATED_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "cohere",
    "granite",
    "internlm2",
    "smollm3",
}


def _attr(config: Any, names: tuple[str, ...], default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # older configs
            return config
    return config


def _is_gated(config: Any) -> bool:
    explicit = getattr(config, "gated_mlp", None)
    if explicit is not None:
        return bool(explicit)
    if getattr(config, "model_type", None) in _GATED_TYPES:
        return True
    act = str(_attr(config, _ACT, "") or "").lower()
    return act in {"silu", "swish", "swiglu", "geglu"} or act.endswith("glu")


def _attention_width(config: Any) -> int | None:
    hidden = _attr(config, _HIDDEN)
    heads = _attr(config, _HEADS)
    head_dim = getattr(config, "head_dim", None)
    if heads and head_dim:
        return int(heads) * int(head_dim)
    return int(hidden) if hidden else None


def config_matmul_params(config: Any) -> int:
    """N of the formula for a decoder-only transformer config (Llama and GPT-style field names)."""
    config = _text_config(config)
    hidden = _attr(config, _HIDDEN)
    layers = _attr(config, _LAYERS)
    vocab = getattr(config, "vocab_size", None)
    if not hidden or not layers or not vocab:
        raise ValueError(
            f"{type(config).__name__} lacks hidden size, layer count or vocab size; "
            "pass the model instead of its config"
        )
    hidden, layers, vocab = int(hidden), int(layers), int(vocab)
    heads = int(_attr(config, _HEADS, 1))
    kv_heads = int(_attr(config, _KV_HEADS, heads))
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    ffn = int(_attr(config, _FFN, 4 * hidden) or 4 * hidden)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    mlp = (3 if _is_gated(config) else 2) * hidden * ffn
    return layers * (attention + mlp) + hidden * vocab  # + LM head


def model_matmul_params(model: nn.Module) -> int:
    """N of the formula for any model: weights of 2+ dims, input embedding tables excluded.

    A table shared with a linear layer (tied LM head) is counted once.
    """
    model = unwrap_model(model)
    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    matmul_ids = {
        id(getattr(m, "weight", None))
        for m in model.modules()
        if not isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    total = 0
    for param in model.parameters():  # shared parameters are yielded once
        if param.dim() < 2:
            continue
        if id(param) in embedding_ids and id(param) not in matmul_ids:
            continue
        total += param.numel()
    return total


def flops_per_token(
    model_or_config: Any,
    seq_len: int | None = None,
    *,
    num_layers: int | None = None,
    attention_width: int | None = None,
) -> float:
    """Training FLOPs (forward + backward) per token: 6 * N + 12 * L * A * T (see module docs).

    `model_or_config`: an `nn.Module` (N counted from its weights; L and A from its `config` when it
    has one), a HF-style config (N computed for a Llama/GPT-style decoder), or N itself as a number.
    `num_layers` and `attention_width` override or supply L and A; without them, or without
    `seq_len`, the attention term is left out.
    """
    config = None
    if isinstance(model_or_config, nn.Module):
        n = model_matmul_params(model_or_config)
        config = getattr(unwrap_model(model_or_config), "config", None)
    elif isinstance(model_or_config, int | float):
        n = int(model_or_config)
    else:
        config = model_or_config
        n = config_matmul_params(config)
    if config is not None:
        config = _text_config(config)
        if num_layers is None:
            num_layers = _attr(config, _LAYERS)
        if attention_width is None:
            attention_width = _attention_width(config)
    attention = 0
    if seq_len and num_layers and attention_width:
        attention = 12 * int(num_layers) * int(attention_width) * int(seq_len)
    return float(6 * n + attention)
