"""Training speed: tokens/s, FLOPs per token and model FLOPs utilization (MFU).

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

import math
import re
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from forgather.ml.train.callbacks.base import TrainerCallback
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


def model_device(model: Any) -> torch.device:
    """Where the model's first parameter lives (CPU for a model without parameters)."""
    try:
        return next(unwrap_model(model).parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


# ---- throughput ------------------------------------------------------------------------------


class ThroughputMeter:
    """Tokens/s, samples/s, FLOP/s and MFU over an interval.

    `update()` counts work, `measure()` returns the rates since the last reset (and starts a new
    interval). On CUDA the device is synchronized before the clock is read, so queued kernels count
    in the interval that launched them. `peak_flops` is the peak of all devices together (per-device
    peak x number of devices); without it there is no `mfu`. Time spent outside training (eval,
    checkpoints) can be taken out with `exclude(seconds)`.
    """

    def __init__(
        self,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        device: Any = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.device = torch.device(device) if device is not None else None
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        _synchronize(self.device)
        self.start = self.clock()
        self.tokens = 0
        self.samples = 0
        self.steps = 0
        self.excluded = 0.0

    def update(self, tokens: int = 0, samples: int = 0, steps: int = 0) -> None:
        self.tokens += int(tokens)
        self.samples += int(samples)
        self.steps += int(steps)

    def exclude(self, seconds: float) -> None:
        self.excluded += max(0.0, float(seconds))

    def measure(self, reset: bool = True) -> dict[str, float]:
        """The interval's rates: `elapsed` always; the others when their count is positive."""
        _synchronize(self.device)
        elapsed = max(self.clock() - self.start - self.excluded, 1e-9)
        result: dict[str, float] = {"elapsed": elapsed}
        if self.tokens > 0:
            result["tokens_per_second"] = self.tokens / elapsed
            if self.flops_per_token:
                flops = self.flops_per_token * self.tokens / elapsed
                result["flops_per_second"] = flops
                if self.peak_flops:
                    result["mfu"] = flops / self.peak_flops
        if self.samples > 0:
            result["samples_per_second"] = self.samples / elapsed
        if self.steps > 0:
            result["steps_per_second"] = self.steps / elapsed
        if reset:
            self.reset()
        return result


class SpeedMetricsCallback(TrainerCallback):
    """Adds `tokens_per_second`, `samples_per_second`, `flops_per_token` and `mfu` to train logs.

    It writes into the `logs` dict passed to `on_log`, so register it BEFORE the callbacks that print
    or store logs (progress, JSON lines, TensorBoard). Tokens come from `state.num_input_tokens_seen`
    (all ranks together); when the trainer leaves that at 0 they are estimated as samples x `seq_len`.
    Samples are `state.effective_batch_size` per step. `mfu` (a fraction, 0..1) is omitted where the
    device has no known peak (CPU); `peak_flops` (per device) overrides the table. Time between a
    step's end and the next step's start that was spent evaluating or saving is not counted.
    """

    produces_log_metrics = True  # a hint for trainers that order callbacks

    def __init__(
        self,
        seq_len: int | None = None,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
    ):
        self.seq_len = seq_len
        self.fixed_flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.model: Any = None
        self.meter: ThroughputMeter | None = None
        self._fpt_cache: dict[int | None, float] = {}
        self._last_step = 0
        self._last_tokens = 0
        self._step_end_time: float | None = None
        self._paused = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.model = kwargs.get("model")
        device = model_device(self.model) if self.model is not None else None
        peak = self.peak_flops if self.peak_flops is not None else device_peak_flops(device)
        total_peak = peak * max(1, state.world_size) if peak else None
        self.meter = ThroughputMeter(None, total_peak, device)
        self._last_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen

    def _flops_per_token(self, seq_len: int | None) -> float | None:
        if self.fixed_flops_per_token is not None:
            return float(self.fixed_flops_per_token)
        if self.model is None:
            return None
        if seq_len not in self._fpt_cache:
            try:
                self._fpt_cache[seq_len] = flops_per_token(self.model, seq_len)
            except Exception:
                return None
        return self._fpt_cache[seq_len]

    def on_step_begin(self, args, state, control, **kwargs):
        if self._paused and self.meter is not None and self._step_end_time is not None:
            self.meter.exclude(self.meter.clock() - self._step_end_time)
        self._paused = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.meter is not None:
            self._step_end_time = self.meter.clock()

    def on_evaluate(self, args, state, control, **kwargs):
        self._paused = True

    def on_save(self, args, state, control, **kwargs):
        self._paused = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.meter is None:
            self.on_train_begin(args, state, control, **kwargs)
            return
        steps = state.global_step - self._last_step
        if logs is None or steps <= 0 or "train_runtime" in logs or _is_eval_record(logs):
            return  # an eval record, the end-of-training summary, or nothing trained since
        tokens = state.num_input_tokens_seen - self._last_tokens
        samples = steps * max(0, state.effective_batch_size)
        if tokens <= 0 and self.seq_len and samples:
            tokens = samples * self.seq_len
        seq_len = self.seq_len or (round(tokens / samples) if tokens > 0 and samples else None)
        fpt = self._flops_per_token(seq_len)
        self.meter.flops_per_token = fpt
        self.meter.update(tokens=max(tokens, 0), samples=samples, steps=steps)
        rates = self.meter.measure()
        self._last_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen
        if not state.is_world_process_zero:
            return
        for key in ("tokens_per_second", "samples_per_second", "mfu"):
            if key in rates:
                logs[key] = rates[key]
        if fpt is not None:
            logs["flops_per_token"] = fpt


def _is_eval_record(logs: dict[str, Any]) -> bool:
    return any(str(key).startswith("eval_") for key in logs)


def format_count(value: float) -> str:
    """12345 -> '12.3k', 1.5e9 -> '1.50G'."""
    if value is None or not math.isfinite(value):
        return str(value)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))
