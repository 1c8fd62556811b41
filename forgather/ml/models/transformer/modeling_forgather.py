"""The forgather causal language model as Hugging Face ``PreTrainedModel`` classes.

Self-contained remote-code module: imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .artefact import write_model_code
from .attention import build_attention_mask
from .configuration_forgather import (
    INIT_SCHEMES,
    INPUT_ENCODERS,
    POSITIONAL_ENCODINGS,
    ForgatherConfig,
)
from .custom_components import is_custom, lookup
from .layers import has_final_norm, make_layer
from .loss import causal_lm_loss, linear_cross_entropy
from .norms import LayerNorm, RMSNorm, make_norm
from .positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
)

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# transformers renamed the cache argument/output field from ``past_key_values`` to ``cache``.
_CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


@dataclass
class ForgatherCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus ``last_hidden_state`` (set with ``return_hidden_states``)."""

    last_hidden_state: torch.Tensor | None = None


POSITION_KINDS = ("absolute", "rotary")


def make_input_encoder(config: ForgatherConfig) -> nn.Module:
    """Token ids -> hidden states: "embedding" (``nn.Embedding``) or a class of your own, built as
    ``YourClass(config)`` and called as ``forward(input_ids)`` -> (batch, seq, hidden_size)."""
    if is_custom(config.input_encoder):
        return lookup("input_encoder", config.input_encoder, INPUT_ENCODERS)(config)
    return nn.Embedding(config.vocab_size, config.hidden_size)


def make_positional_encoding(config: ForgatherConfig) -> tuple[nn.Module | None, nn.Module | None]:
    """``(rotary, absolute)`` modules for ``config.positional_encoding`` (ALiBi lives in attention).

    A class of your own says which it is by its ``kind`` attribute: "absolute" modules are called
    as ``forward(position_ids, dtype)`` and their (batch, seq, hidden_size) output is added to the
    token embeddings; "rotary" modules are called as ``forward(position_ids)`` and return
    ``(cos, sin)``, each (batch, seq, head_dim), which attention applies to queries and keys."""
    kind = config.positional_encoding
    if is_custom(kind):
        cls = lookup("positional_encoding", kind, POSITIONAL_ENCODINGS)
        role = getattr(cls, "kind", None)
        if role not in POSITION_KINDS:
            raise ValueError(
                f"positional_encoding={kind!r}: the class needs a `kind` attribute, 'absolute' "
                f"(its output is added to the embeddings) or 'rotary' (it returns cos, sin); "
                f"got {role!r}"
            )
        module = cls(config)
        return (module, None) if role == "rotary" else (None, module)
    if kind == "rope":
        return RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling), None
    if kind == "sinusoidal":
        return None, SinusoidalPositionalEmbedding(config.hidden_size)
    if kind == "learned":
        return None, LearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
    return None, None


class ForgatherPreTrainedModel(PreTrainedModel):
    config_class = ForgatherConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PreLNDecoderLayer", "PostLNDecoderLayer", "DeepNetDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_cache_class = True

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained``, then the code the directory needs to load where
        forgather is not installed (this package's source and any component of your own; see
        ``artefact``), so the directory is complete whoever saves it."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_model_code(self, save_directory)
        return result

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise one module according to ``config.init_scheme``.

        Linear layers carry an ``init_role`` set where they are built: ``qk`` (query/key),
        ``value`` (value and feed-forward input projections), ``out`` (o_proj, down_proj) and
        ``head`` (the LM head).

        * ``normal``: every weight ~ N(0, initializer_range);
        * ``scaled``: as normal, ``out`` projections / sqrt(2 * layers) (GPT-2);
        * ``small_init``: N(0, sqrt(2 / (5 d))), ``out`` projections N(0, 2 / (layers sqrt d));
        * ``deepnet``: Xavier-normal, gain ``beta`` on ``value``/``out``, 1 on ``qk``; embeddings
          and head N(0, initializer_range).
        Norm gains are 1, biases 0.

        A function of your own (``init_scheme: !partial:file.py:my_init []``) is called as
        ``my_init(module, config)`` for every module instead; what it leaves alone keeps the
        initialisation PyTorch gave it when it was built.
        """
        config = self.config
        scheme = config.init_scheme
        if is_custom(scheme):
            lookup("init_scheme", scheme, INIT_SCHEMES)(module, config)
            return
        d, layers = config.hidden_size, config.num_hidden_layers
        base_std = (
            math.sqrt(2.0 / (5.0 * d)) if scheme == "small_init" else config.initializer_range
        )

        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=base_std)
        elif isinstance(module, (RMSNorm, LayerNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            role = getattr(module, "init_role", "value")
            if scheme == "deepnet" and role != "head":
                gain = 1.0 if role == "qk" else config.deepnet_beta_value
                nn.init.xavier_normal_(module.weight, gain=gain)
            else:
                std = base_std
                if role == "out" and scheme == "scaled":
                    std = config.initializer_range / math.sqrt(2.0 * layers)
                elif role == "out" and scheme == "small_init":
                    std = 2.0 / (layers * math.sqrt(d))
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ForgatherModel(ForgatherPreTrainedModel):
    """Token embeddings, the decoder stack and (pre-LN) the final norm; returns hidden states."""

    def __init__(self, config: ForgatherConfig):
        super().__init__(config)
        self.embed_tokens = make_input_encoder(config)
        self.layers = nn.ModuleList(make_layer(config, i) for i in range(config.num_hidden_layers))
        if has_final_norm(config):
            self.norm = make_norm(config.norm, config.hidden_size, config.norm_eps)
        else:  # post-LN and DeepNet layers already end with a norm
            self.norm = nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.rotary, self.absolute_positions = make_positional_encoding(config)
        self.gradient_checkpointing = bool(config.activation_checkpointing)
        self._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
        # with activation checkpointing on: recompute every k-th layer only (1: every layer)
        self.gradient_checkpointing_every = 1
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if cache is None:
            cache = past_key_values
        if output_attentions is None:
            output_attentions = bool(getattr(config, "output_attentions", False))
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(config, "output_hidden_states", False))
        if return_dict is None:
            return_dict = getattr(config, "return_dict", True)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if use_cache is None:
            use_cache = bool(config.use_cache) and not self.training
        if checkpointing:
            if cache is not None:
                raise ValueError("a KV cache cannot be used with activation checkpointing")
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache()
        past_length = cache.get_seq_length() if cache is not None else 0

        # Documents restart only in positions the caller gave (packed rows); positions made here
        # never restart, so the mask skips the search for restarts (a graph break under compile).
        given_positions = position_ids
        if position_ids is None:
            if (
                attention_mask is not None
                and attention_mask.dim() == 2
                and not attention_mask.all()
            ):
                # Left padding: real tokens count from 0 (what generate() does as well).
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                position_ids = positions[:, -length:].to(device)
            else:
                position_ids = torch.arange(past_length, past_length + length, device=device)
                position_ids = position_ids.unsqueeze(0).expand(batch, length)
        mask = build_attention_mask(
            (batch, length),
            past_length,
            device,
            attention_mask,
            given_positions,
            window=config.sliding_window,
        )

        hidden = inputs_embeds
        if config.embedding_scale is not None:
            hidden = hidden * config.embedding_scale
        if self.absolute_positions is not None:
            hidden = hidden + self.absolute_positions(position_ids, hidden.dtype)
        hidden = self.dropout(hidden)
        rotary = self.rotary(position_ids) if self.rotary is not None else None

        all_hidden: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_attentions: tuple[torch.Tensor, ...] | None = () if output_attentions else None
        for index, layer in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden += (hidden,)
            if checkpointing and index % self.gradient_checkpointing_every == 0:
                hidden, weights = self._gradient_checkpointing_func(
                    layer.__call__, hidden, rotary, mask, None, output_attentions
                )
            else:
                hidden, weights = layer(hidden, rotary, mask, cache, output_attentions)
            if all_attentions is not None:
                all_attentions += (weights,)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden += (hidden,)

        out = BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=all_hidden,
            attentions=all_attentions,
            **{_CACHE_FIELD: cache},
        )
        return out if return_dict else out.to_tuple()


class ForgatherForCausalLM(ForgatherPreTrainedModel, GenerationMixin):
    """:class:`ForgatherModel` plus a language-model head (optionally tied to the embeddings)."""

    if _TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: ForgatherConfig):
        super().__init__(config)
        self.model = ForgatherModel(config)
        if config.tie_word_embeddings:
            weight = getattr(self.model.embed_tokens, "weight", None)
            if not isinstance(weight, nn.Parameter) or tuple(weight.shape) != (
                config.vocab_size,
                config.hidden_size,
            ):
                raise ValueError(
                    f"tie_word_embeddings: the input encoder {config.input_encoder!r} needs a "
                    f"`weight` parameter of shape (vocab_size, hidden_size) = "
                    f"({config.vocab_size}, {config.hidden_size}) to share with the head; set "
                    "tie_word_embeddings: false"
                )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.init_role = "head"
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> ForgatherModel:
        return self.model

    def set_decoder(self, decoder: ForgatherModel) -> None:
        self.model = decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_hidden_states: bool = False,
        past_key_values: Cache | None = None,
        loss_impl: str | None = None,
        **kwargs: Any,
    ) -> ForgatherCausalLMOutput | tuple:
        """Logits (and the shifted cross-entropy ``loss`` when ``labels`` are given).

        ``logits_to_keep``: an int ``n > 0`` computes logits for the last ``n`` positions only (a 1-D
        tensor selects positions); ignored when ``labels`` are given.
        ``return_hidden_states``: skip the head (``logits`` and ``loss`` are None) and return the
        final normalised hidden states as ``last_hidden_state``, e.g. for a fused head + loss.
        ``num_items_in_batch`` (keyword): divide the summed loss by it instead of averaging.
        ``loss_impl`` ("auto", "torch" or "liger"; with ``labels``): compute the loss fused with the
        head from the hidden states (``.loss``), never the logits (``logits`` is None).
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        loss = logits = None
        if loss_impl is not None and labels is not None and not return_hidden_states:
            loss = linear_cross_entropy(
                hidden,
                self.lm_head.weight,
                labels,
                bias=self.lm_head.bias,
                num_items_in_batch=num_items_in_batch,
                impl=loss_impl,
            )
        elif not return_hidden_states:
            if labels is None and isinstance(logits_to_keep, int) and logits_to_keep > 0:
                logits = self.lm_head(hidden[:, -logits_to_keep:, :])
            elif labels is None and isinstance(logits_to_keep, torch.Tensor):
                logits = self.lm_head(hidden[:, logits_to_keep, :])
            else:
                logits = self.lm_head(hidden)
            if labels is not None:
                loss = causal_lm_loss(logits, labels, num_items_in_batch)
        out = ForgatherCausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            last_hidden_state=hidden if return_hidden_states else None,
            **{_CACHE_FIELD: outputs.get(_CACHE_FIELD)},
        )
        return out if return_dict else out.to_tuple()


ForgatherModel.register_for_auto_class("AutoModel")
ForgatherForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "ForgatherCausalLMOutput",
    "ForgatherForCausalLM",
    "ForgatherModel",
    "ForgatherPreTrainedModel",
    "causal_lm_loss",
]
