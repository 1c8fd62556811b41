"""The GPT-2 converter: pre-LN LayerNorm (with biases), learned absolute positions, a GELU MLP,
biases everywhere and a tied head, to and from forgather's causal LM.

GPT-2 keeps its projections as `Conv1D` (weights stored (in, out): transposed against
`nn.Linear`) and its query, key and value in one `c_attn` projection, which is split into
`q_proj`/`k_proj`/`v_proj` (and joined back).
"""

from __future__ import annotations

from typing import Any

import torch

from forgather.ml.convert.registry import UnsupportedFeature, register

# (GPT-2 name, forgather name, transpose: a Conv1D weight)
_LAYER = (
    ("ln_1.weight", "attn_norm.weight", False),
    ("ln_1.bias", "attn_norm.bias", False),
    ("attn.c_proj.weight", "self_attn.o_proj.weight", True),
    ("attn.c_proj.bias", "self_attn.o_proj.bias", False),
    ("ln_2.weight", "mlp_norm.weight", False),
    ("ln_2.bias", "mlp_norm.bias", False),
    ("mlp.c_fc.weight", "mlp.up_proj.weight", True),
    ("mlp.c_fc.bias", "mlp.up_proj.bias", False),
    ("mlp.c_proj.weight", "mlp.down_proj.weight", True),
    ("mlp.c_proj.bias", "mlp.down_proj.bias", False),
)
_TOP = (
    ("transformer.wte.weight", "model.embed_tokens.weight"),
    ("transformer.wpe.weight", "model.absolute_positions.weight"),
    ("transformer.ln_f.weight", "model.norm.weight"),
    ("transformer.ln_f.bias", "model.norm.bias"),
    ("lm_head.weight", "lm_head.weight"),
)
ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu")


class GPT2:
    name = "gpt2"
    hf_model_types = ("gpt2",)

    def to_forgather_config(self, hf_config: Any) -> dict[str, Any]:
        get = lambda key, default=None: getattr(hf_config, key, default)  # noqa: E731
        if (act := get("activation_function", "gelu_new")) not in ACTIVATIONS:
            raise UnsupportedFeature(f"activation_function={act!r}")
        for key, why in (
            ("scale_attn_by_inverse_layer_idx", "attention scaled by 1/layer index"),
            ("add_cross_attention", "cross-attention"),
        ):
            if get(key, False):
                raise UnsupportedFeature(f"{key}=true ({why})")
        if not get("scale_attn_weights", True):
            raise UnsupportedFeature("scale_attn_weights=false (unscaled attention scores)")
        hidden, heads = get("n_embd"), get("n_head")
        return {
            "vocab_size": get("vocab_size"),
            "hidden_size": hidden,
            "intermediate_size": get("n_inner") or 4 * hidden,
            "num_hidden_layers": get("n_layer"),
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "head_dim": hidden // heads,
            "max_position_embeddings": get("n_positions"),
            "norm": "layernorm",
            "norm_eps": get("layer_norm_epsilon", 1e-5),
            "feedforward": "mlp",
            "hidden_act": act,
            "positional_encoding": "learned",
            "layer_type": "pre_ln",
            "qk_norm": False,
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": bool(get("tie_word_embeddings", True)),
            "initializer_range": get("initializer_range", 0.02),
            "bos_token_id": get("bos_token_id"),
            "eos_token_id": get("eos_token_id"),
            "pad_token_id": get("pad_token_id"),
        }

    def accepts_forgather(self, config: Any) -> bool:
        return (
            getattr(config, "attention", "causal") == "causal"
            and config.norm == "layernorm"
            and config.feedforward == "mlp"
            and config.positional_encoding == "learned"
            and config.layer_type == "pre_ln"
            and config.attention_bias
            and config.mlp_bias
            and config.num_key_value_heads == config.num_attention_heads
            and config.head_dim * config.num_attention_heads == config.hidden_size
            and not config.qk_norm
        )

    def hf_model_type_for(self, config: Any) -> str:
        return "gpt2"

    def from_forgather_config(self, config: Any, model_type: str) -> Any:
        from transformers import GPT2Config

        if getattr(config, "sliding_window", None):
            raise UnsupportedFeature(
                f"sliding_window={config.sliding_window} (GPT-2 attends to every earlier token)"
            )

        if not self.accepts_forgather(config):
            raise UnsupportedFeature(
                "GPT-2 needs the built-in attention, pre-LN LayerNorm, a GELU MLP, learned "
                "positions, biases in attention and MLP, as many KV heads as heads and "
                "head_dim x heads = hidden_size"
            )
        if config.hidden_act not in ACTIVATIONS:
            raise UnsupportedFeature(f"hidden_act={config.hidden_act!r}")
        return GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.max_position_embeddings,
            n_embd=config.hidden_size,
            n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads,
            n_inner=config.intermediate_size,
            activation_function=config.hidden_act,
            layer_norm_epsilon=config.norm_eps,
            initializer_range=config.initializer_range,
            tie_word_embeddings=config.tie_word_embeddings,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        )  # fmt: skip

    def to_forgather_state(self, state: dict[str, Any]) -> dict[str, Any]:
        out = {ours: state[hf] for hf, ours in _TOP if hf in state}
        for i in range(_layers(state, "transformer.h.")):
            hf, ours = f"transformer.h.{i}.", f"model.layers.{i}."
            for name, target, transpose in _LAYER:
                tensor = state[hf + name]
                out[ours + target] = tensor.t().contiguous() if transpose else tensor
            qkv_w, qkv_b = state[hf + "attn.c_attn.weight"], state[hf + "attn.c_attn.bias"]
            for part, w, b in zip(
                ("q", "k", "v"), qkv_w.chunk(3, dim=1), qkv_b.chunk(3), strict=True
            ):
                out[f"{ours}self_attn.{part}_proj.weight"] = w.t().contiguous()
                out[f"{ours}self_attn.{part}_proj.bias"] = b.clone()
        return out

    def to_hf_state(self, state: dict[str, Any]) -> dict[str, Any]:
        out = {hf: state[ours] for hf, ours in _TOP if ours in state}
        for i in range(_layers(state, "model.layers.")):
            hf, ours = f"transformer.h.{i}.", f"model.layers.{i}."
            for name, source, transpose in _LAYER:
                tensor = state[ours + source]
                out[hf + name] = tensor.t().contiguous() if transpose else tensor
            parts = ("q", "k", "v")
            out[hf + "attn.c_attn.weight"] = torch.cat(
                [state[f"{ours}self_attn.{p}_proj.weight"].t() for p in parts], dim=1
            )
            out[hf + "attn.c_attn.bias"] = torch.cat(
                [state[f"{ours}self_attn.{p}_proj.bias"] for p in parts]
            )
        return out


def _layers(state: dict[str, Any], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


GPT2_CONVERTER = register(GPT2())
