"""Configuration of the forgather causal language model.

Part of a self-contained Hugging Face remote-code package: this file imports only ``transformers``
(and the standard library) so that a saved model directory loads without forgather installed.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from .custom_components import is_custom, register

ATTENTIONS = ("causal",)
NORMS = ("rmsnorm", "layernorm")
LAYER_TYPES = ("pre_ln", "post_ln", "deepnet")
FEEDFORWARDS = ("swiglu", "mlp")
POSITIONAL_ENCODINGS = ("rope", "alibi", "sinusoidal", "learned", "none")
ROPE_SCALING_TYPES = ("linear", "llama3", "ntk_by_parts", "yarn")
ATTENTION_BACKENDS = ("eager", "sdpa", "flex")
INIT_SCHEMES = ("normal", "scaled", "small_init", "deepnet")
INPUT_ENCODERS = ("embedding",)

# Defaults of the optional keys of each ``rope_scaling`` type ("factor" is always required).
ROPE_SCALING_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {},
    "llama3": {"low_freq_factor": 1.0, "high_freq_factor": 4.0},
    "ntk_by_parts": {"alpha": 1.0, "beta": 32.0},
    "yarn": {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": None},
}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value.lower()


def _component(name: str, value: Any, builtins: tuple[str, ...]) -> str:
    """A built-in name (checked), a registered component's key, or a class (registered: its key)."""
    if isinstance(value, str):
        return value if is_custom(value) else _choice(name, value, builtins)
    return register(name, value)


def normalize_rope_scaling(
    rope_scaling: dict[str, Any] | None, max_position_embeddings: int
) -> dict[str, Any] | None:
    """Validate a ``rope_scaling`` dict and fill in its defaults.

    Accepts ``type`` or ``rope_type`` for the kind. ``original_max_position_embeddings`` defaults to
    ``max_position_embeddings`` (the context the model was, or is being, trained at).
    """
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None; got {type(rope_scaling).__name__}")
    scaling = dict(rope_scaling)
    kind = scaling.pop("type", None) or scaling.pop("rope_type", None)
    scaling.pop("rope_type", None)
    kind = _choice("rope_scaling['type']", kind, ROPE_SCALING_TYPES)
    if "factor" not in scaling:
        raise ValueError(f"rope_scaling of type {kind!r} needs a 'factor'")
    factor = float(scaling["factor"])
    if not factor >= 1.0:
        raise ValueError(f"rope_scaling factor must be >= 1; got {factor}")
    allowed = {"factor", "original_max_position_embeddings", *ROPE_SCALING_DEFAULTS[kind]}
    unknown = set(scaling) - allowed
    if unknown:
        raise ValueError(f"unknown rope_scaling keys for type {kind!r}: {sorted(unknown)}")
    out: dict[str, Any] = {"type": kind, "factor": factor}
    if kind != "linear":
        out["original_max_position_embeddings"] = int(
            scaling.get("original_max_position_embeddings", max_position_embeddings)
        )
    for key, default in ROPE_SCALING_DEFAULTS[kind].items():
        value = scaling.get(key, default)
        out[key] = None if value is None else float(value)
    if kind == "llama3" and not out["high_freq_factor"] > out["low_freq_factor"]:
        raise ValueError("llama3 rope_scaling needs high_freq_factor > low_freq_factor")
    if kind == "ntk_by_parts" and not out["beta"] > out["alpha"]:
        raise ValueError("ntk_by_parts rope_scaling needs beta > alpha")
    if kind == "yarn" and not out["beta_fast"] > out["beta_slow"]:
        raise ValueError("yarn rope_scaling needs beta_fast > beta_slow")
    return out


class ForgatherConfig(PretrainedConfig):
    """Hyper-parameters of :class:`ForgatherForCausalLM`.

    Every choice is a plain string so the config round-trips through ``config.json``: a built-in
    name, or for ``attention``, ``feedforward``, ``norm``, ``layer_type``, ``positional_encoding``
    and ``input_encoder`` also a class of your own, for ``init_scheme`` a function of your own
    (given as the class or function; stored as its key, see ``custom_components``).
    See ``docs/models/index.md`` for the meaning of each field.
    """

    model_type = "forgather-causal-lm"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 512,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 2048,
        attention: Any = "causal",
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        layer_type: str = "pre_ln",
        feedforward: str = "swiglu",
        hidden_act: str | None = None,
        qk_norm: bool = False,
        positional_encoding: Any = "rope",
        rope_theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        attention_backend: str = "sdpa",
        sliding_window: int | None = None,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        init_scheme: Any = None,
        input_encoder: Any = "embedding",
        embedding_scale: float | None = None,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        deepnet_alpha: float | None = None,
        deepnet_beta: float | None = None,
        activation_checkpointing: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        **kwargs: Any,
    ):
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.num_key_value_heads = int(
            num_attention_heads if num_key_value_heads is None else num_key_value_heads
        )
        if head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({hidden_size}) is not a multiple of num_attention_heads "
                    f"({num_attention_heads}); set head_dim explicitly"
                )
            head_dim = self.hidden_size // self.num_attention_heads
        self.head_dim = int(head_dim)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        self.attention = _component("attention", attention, ATTENTIONS)
        self.feedforward = _component("feedforward", feedforward, FEEDFORWARDS)
        if intermediate_size is None:
            if self.feedforward == "swiglu":  # ~8/3 d keeps the parameter count of a 4d MLP
                intermediate_size = 64 * math.ceil(8 * self.hidden_size / 3 / 64)
            else:
                intermediate_size = 4 * self.hidden_size
        self.intermediate_size = int(intermediate_size)
        if hidden_act is None:
            hidden_act = "silu" if self.feedforward == "swiglu" else "gelu"
        self.hidden_act = hidden_act
        self.max_position_embeddings = int(max_position_embeddings)
        self.norm = _component("norm", norm, NORMS)
        self.norm_eps = float(norm_eps)
        self.layer_type = _component("layer_type", layer_type, LAYER_TYPES)
        self.qk_norm = bool(qk_norm)
        self.positional_encoding = _component(
            "positional_encoding", positional_encoding, POSITIONAL_ENCODINGS
        )
        if self.positional_encoding == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim; got {self.head_dim}")
        self.rope_theta = float(rope_theta)
        self.rope_scaling = normalize_rope_scaling(rope_scaling, self.max_position_embeddings)
        self.attention_backend = _choice("attention_backend", attention_backend, ATTENTION_BACKENDS)
        if sliding_window is not None and (
            isinstance(sliding_window, bool) or int(sliding_window) != sliding_window
            or sliding_window < 1
        ):  # fmt: skip
            raise ValueError(
                f"sliding_window must be a positive number of tokens or None; got {sliding_window!r}"
            )
        self.sliding_window = None if sliding_window is None else int(sliding_window)
        self.attention_bias = bool(attention_bias)
        self.mlp_bias = bool(mlp_bias)
        self.tie_word_embeddings = bool(tie_word_embeddings)
        self.initializer_range = float(initializer_range)
        if init_scheme is None:
            init_scheme = "deepnet" if self.layer_type == "deepnet" else "normal"
        self.init_scheme = _component("init_scheme", init_scheme, INIT_SCHEMES)
        self.input_encoder = _component("input_encoder", input_encoder, INPUT_ENCODERS)
        self.embedding_scale = None if embedding_scale is None else float(embedding_scale)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.deepnet_alpha = None if deepnet_alpha is None else float(deepnet_alpha)
        self.deepnet_beta = None if deepnet_beta is None else float(deepnet_beta)
        self.activation_checkpointing = bool(activation_checkpointing)
        self.use_cache = bool(use_cache)
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        super().__init__(**kwargs)

    # transformers 5 defines ``rope_scaling`` on PretrainedConfig as an alias of its own
    # ``rope_parameters`` (with validation of the HF rope types). This model keeps its own format,
    # stored as a plain attribute so it is serialised to config.json under its own name.
    @property
    def rope_scaling(self) -> dict[str, Any] | None:
        return self.__dict__.get("rope_scaling")

    @rope_scaling.setter
    def rope_scaling(self, value: dict[str, Any] | None) -> None:
        self.__dict__["rope_scaling"] = value

    @property
    def deepnet_alpha_value(self) -> float:
        """Residual scale of DeepNet layers: ``(2N)^(1/4)`` for a decoder-only stack of N layers."""
        if self.deepnet_alpha is not None:
            return self.deepnet_alpha
        return (2.0 * self.num_hidden_layers) ** 0.25

    @property
    def deepnet_beta_value(self) -> float:
        """DeepNet init gain of value/output/feed-forward projections: ``(8N)^(-1/4)``."""
        if self.deepnet_beta is not None:
            return self.deepnet_beta
        return (8.0 * self.num_hidden_layers) ** -0.25


ForgatherConfig.register_for_auto_class("AutoConfig")
