"""The built-in converters: Llama (also Mistral without a sliding window) and Qwen3 (Llama with
per-head RMS norms of queries and keys), to and from forgather's pre-LN RMSNorm/SwiGLU/RoPE causal LM.

Parameter names are the same on both sides but for the two norms of a layer:
`input_layernorm` / `post_attention_layernorm` (Hugging Face) are `attn_norm` / `mlp_norm`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from forgather.ml.convert.registry import UnsupportedFeature, register

_NORM_NAMES = ((".input_layernorm.", ".attn_norm."), (".post_attention_layernorm.", ".mlp_norm."))
ROPE_TYPES = ("default", "llama3")


def rope_of(hf_config: Any) -> tuple[float, dict[str, Any] | None]:
    """(rope theta, forgather rope_scaling or None) of a Hugging Face config, either the
    transformers >= 5 `rope_parameters` or the older `rope_theta` / `rope_scaling`."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ROPE_TYPES:
        raise UnsupportedFeature(
            f"rope scaling {kind!r} (forgather converts {', '.join(ROPE_TYPES)})"
        )
    theta = float(params.get("rope_theta", 10000.0))
    if kind == "default":
        return theta, None
    scaling = {
        "rope_type": "llama3",
        "factor": params["factor"],
        "low_freq_factor": params["low_freq_factor"],
        "high_freq_factor": params["high_freq_factor"],
        "original_max_position_embeddings": params["original_max_position_embeddings"],
    }
    return theta, scaling


@dataclass(frozen=True)
class LlamaFamily:
    """A Llama-shaped family; `qk_norm` marks Qwen3's query/key norms."""

    name: str
    hf_model_types: tuple[str, ...]
    qk_norm: bool = False

    # --- configs ---
    def to_forgather_config(self, hf_config: Any) -> dict[str, Any]:
        get = lambda key, default=None: getattr(hf_config, key, default)  # noqa: E731
        if (act := get("hidden_act", "silu")) != "silu":
            raise UnsupportedFeature(f"hidden_act={act!r} (a SwiGLU family uses 'silu')")
        # Mistral has no use_sliding_window (its window applies when set); Qwen3's says whether
        window = get("sliding_window") if get("use_sliding_window", True) else None
        kinds = set(get("layer_types") or ())
        if kinds == {"full_attention"}:
            window = None
        elif kinds - {"sliding_attention"} or (kinds and not window):
            raise UnsupportedFeature(
                f"layer_types {sorted(kinds)} (forgather gives every layer the same attention: "
                "all full, or all with one sliding_window)"
            )
        if get("pretraining_tp", 1) not in (None, 1):
            raise UnsupportedFeature(f"pretraining_tp={get('pretraining_tp')}")
        theta, scaling = rope_of(hf_config)
        heads = get("num_attention_heads")
        return {
            "vocab_size": get("vocab_size"),
            "hidden_size": get("hidden_size"),
            "intermediate_size": get("intermediate_size"),
            "num_hidden_layers": get("num_hidden_layers"),
            "num_attention_heads": heads,
            "num_key_value_heads": get("num_key_value_heads") or heads,
            "head_dim": get("head_dim") or get("hidden_size") // heads,
            "max_position_embeddings": get("max_position_embeddings"),
            "norm": "rmsnorm",
            "norm_eps": get("rms_norm_eps", 1e-6),
            "feedforward": "swiglu",
            "hidden_act": "silu",
            "positional_encoding": "rope",
            "rope_theta": theta,
            "rope_scaling": scaling,
            "layer_type": "pre_ln",
            "qk_norm": self.qk_norm,
            "attention_bias": bool(get("attention_bias", False)),
            "mlp_bias": bool(get("mlp_bias", False)),
            "tie_word_embeddings": bool(get("tie_word_embeddings", False)),
            "initializer_range": get("initializer_range", 0.02),
            "attention_dropout": float(get("attention_dropout", 0.0) or 0.0),
            "sliding_window": int(window) if window else None,
            "bos_token_id": get("bos_token_id"),
            "eos_token_id": get("eos_token_id"),
            "pad_token_id": get("pad_token_id"),
        }

    def accepts_forgather(self, config: Any) -> bool:
        return (
            getattr(config, "attention", "causal") == "causal"
            and config.norm == "rmsnorm"
            and config.feedforward == "swiglu"
            and config.positional_encoding == "rope"
            and config.layer_type == "pre_ln"
            and bool(config.qk_norm) == self.qk_norm
        )

    def hf_model_type_for(self, config: Any) -> str:
        """Llama's own type, or Mistral's for a model with a sliding window (Llama has none)."""
        if getattr(config, "sliding_window", None) and "mistral" in self.hf_model_types:
            return "mistral"
        return self.hf_model_types[0]

    def from_forgather_config(self, config: Any, model_type: str) -> Any:
        from transformers import AutoConfig

        if not self.accepts_forgather(config):
            raise UnsupportedFeature(
                f"{self.name} cannot express this model (attention "
                f"{getattr(config, 'attention', 'causal')}, norm {config.norm}, feed-forward "
                f"{config.feedforward}, positions {config.positional_encoding}, layers "
                f"{config.layer_type}, qk_norm {config.qk_norm})"
            )
        for field, why in (
            ("embedding_scale", "a scaled input embedding"),
            ("deepnet_alpha", "DeepNet residual scaling"),
        ):
            if getattr(config, field, None) is not None:
                raise UnsupportedFeature(f"{field}={getattr(config, field)} ({why})")
        fields: dict[str, Any] = {
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "max_position_embeddings": config.max_position_embeddings,
            "rms_norm_eps": config.norm_eps,
            "hidden_act": "silu",
            "attention_bias": config.attention_bias,
            "tie_word_embeddings": config.tie_word_embeddings,
            "initializer_range": config.initializer_range,
            "attention_dropout": config.attention_dropout,
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
        }
        if config.mlp_bias:
            fields["mlp_bias"] = True
        rope = {"rope_type": "default", "rope_theta": config.rope_theta}
        if config.rope_scaling:
            scaling = dict(config.rope_scaling)
            kind = scaling.pop("type", None) or scaling.pop("rope_type", None)
            rope.update(scaling, rope_type=kind)
        config_class = type(AutoConfig.for_model(model_type))
        if "rope_parameters" in inspect.signature(config_class.__init__).parameters:
            fields["rope_parameters"] = rope
        else:  # transformers < 5
            fields["rope_theta"] = config.rope_theta
            if config.rope_scaling:
                fields["rope_scaling"] = dict(config.rope_scaling)
        window = getattr(config, "sliding_window", None)
        if model_type == "mistral":
            fields["sliding_window"] = window
        elif model_type == "qwen3":  # layers from max_window_layers on use the window: all
            fields.update(
                sliding_window=window, use_sliding_window=bool(window), max_window_layers=0
            )
        elif window:
            raise UnsupportedFeature(
                f"sliding_window={window} ({model_type} has no sliding-window attention; "
                "write it as mistral: --model-type mistral)"
            )
        hf_config = config_class(**fields)
        if config.mlp_bias and not getattr(hf_config, "mlp_bias", False):
            raise UnsupportedFeature(f"mlp_bias (the {model_type} family has no MLP biases)")
        return hf_config

    # --- parameters: the same tensors, two norms renamed ---
    def to_forgather_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {_rename(name, _NORM_NAMES): tensor for name, tensor in state.items()}

    def to_hf_state(self, state: dict[str, Any]) -> dict[str, Any]:
        reverse = tuple((ours, hf) for hf, ours in _NORM_NAMES)
        return {_rename(name, reverse): tensor for name, tensor in state.items()}


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        name = name.replace(old, new)
    return name


LLAMA = register(LlamaFamily("llama", ("llama", "mistral")))
QWEN3 = register(LlamaFamily("qwen3", ("qwen3",), qk_norm=True))
