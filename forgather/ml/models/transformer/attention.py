"""Causal multi-head self-attention with grouped-query heads and three kernels.

Backends (``config.attention_backend``):

* ``eager``: explicit ``softmax(q k^T * scale + bias) v`` (the only one returning attention weights);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``;
* ``flex``: ``torch.nn.attention.flex_attention`` with a block mask (compiled on CUDA, the
  unfused reference implementation elsewhere; torch has no flex backward on CPU).

All three apply the same mask, built once per forward by :func:`build_attention_mask`:
causal, plus *document isolation* when ``position_ids`` restart inside a row (packed sequences:
a token attends only to earlier tokens of its own document), plus key padding from a 2-D
``attention_mask``, plus a *sliding window* (``config.sliding_window = W``: a query sees the last
W keys, itself included, as Mistral does). A query always sees its own position, so padded rows never produce NaNs.
A 4-D boolean ``attention_mask`` (batch, 1, queries, keys) is used as given, the Hugging Face
convention for a prepared mask (the inference server's slot cache passes one per step).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .norms import make_norm
from .positional import alibi_bias, alibi_slopes, apply_rotary

ATTENTION_BACKENDS = ("eager", "sdpa", "flex")


def document_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document index of every token of packed rows, or None if no row restarts its positions.

    A new document starts wherever a position is not the previous position plus one
    (typically a reset to 0 by the packing collator).
    """
    if position_ids.shape[-1] < 2:
        return None
    starts = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(starts.any()):
        return None
    zeros = torch.zeros_like(starts[:, :1])
    return torch.cat((zeros, starts), dim=1).to(torch.int32).cumsum(dim=1)


class AttentionMask:
    """The mask of one forward call, shared by every layer (dense and flex forms built lazily).

    ``past_length`` keys come from the KV cache; queries are the last ``query_length`` positions
    of the ``key_length`` keys. Document isolation applies to cache-free (prefill/training) calls.
    """

    def __init__(
        self,
        batch_size: int,
        query_length: int,
        past_length: int,
        device: torch.device,
        key_valid: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        prepared: torch.Tensor | None = None,
        window: int | None = None,
    ):
        self.batch_size = batch_size
        self.query_length = query_length
        self.past_length = past_length
        self.key_length = past_length + query_length
        # a window no shorter than the keys hides nothing
        self.window = window if window is not None and window < self.key_length else None
        self.device = device
        self.key_valid = key_valid
        self.doc_ids = doc_ids
        self._dense: torch.Tensor | None = prepared
        self._block_mask: Any = None
        self._block_mask_built = False
        self._views: dict[int, AttentionMask] = {}

    @property
    def causal_only(self) -> bool:
        """True when the mask is the plain causal one (no padding, no document boundaries, no
        sliding window that hides keys)."""
        return (
            self.key_valid is None
            and self.doc_ids is None
            and self._dense is None
            and self.window is None
        )

    def for_keys(self, key_length: int) -> AttentionMask:
        """This mask over the last ``key_length`` keys only: a sliding-window cache (transformers'
        ``DynamicCache`` for a config with ``sliding_window``) returns the keys still in reach,
        not all ``self.key_length``; the ones it dropped were outside every query's window."""
        if key_length == self.key_length:
            return self
        if self.window is None or not self.query_length <= key_length < self.key_length:
            raise RuntimeError(f"{key_length} keys but the mask expects {self.key_length}")
        view = self._views.get(key_length)
        if view is None:
            dense = self.dense()[..., -key_length:]
            view = AttentionMask(
                self.batch_size,
                self.query_length,
                key_length - self.query_length,
                self.device,
                prepared=dense.expand(self.batch_size, *dense.shape[1:]),
            )
            self._views[key_length] = view
        return view

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute indices of the queries and of the keys."""
        keys = torch.arange(self.key_length, device=self.device)
        return keys[self.past_length :], keys

    def dense(self) -> torch.Tensor:
        """Boolean mask (batch or 1, 1, q_len, k_len); True means "may attend"."""
        if self._dense is None:
            q_pos, k_pos = self.positions()
            allowed = k_pos[None, :] <= q_pos[:, None]
            if self.window is not None:
                allowed = allowed & (q_pos[:, None] - k_pos[None, :] < self.window)
            allowed = allowed[None]  # (1, T, S)
            if self.doc_ids is not None:  # only without cache: keys == queries
                allowed = allowed & (self.doc_ids[:, :, None] == self.doc_ids[:, None, :])
            if self.key_valid is not None:
                self_key = k_pos[None, :] == q_pos[:, None]
                allowed = allowed & (self.key_valid[:, None, :] | self_key[None])
            self._dense = allowed[:, None]
        return self._dense

    def mask_mod(self) -> Callable:
        past, doc_ids, key_valid = self.past_length, self.doc_ids, self.key_valid
        window = self.window
        if self._dense is not None and key_valid is None and doc_ids is None:
            dense = self._dense

            def prepared_mod(b, h, q_idx, kv_idx):
                return dense[b, 0, q_idx, kv_idx]

            return prepared_mod

        def mask_mod(b, h, q_idx, kv_idx):
            q_abs = q_idx + past
            allowed = kv_idx <= q_abs
            if window is not None:
                allowed = allowed & (q_abs - kv_idx < window)
            if doc_ids is not None:
                allowed = allowed & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])
            if key_valid is not None:
                allowed = allowed & (key_valid[b, kv_idx] | (kv_idx == q_abs))
            return allowed

        return mask_mod

    def block_mask(self) -> Any:
        """flex-attention ``BlockMask`` (None when every query may see every key)."""
        if not self._block_mask_built:
            if self.causal_only and self.query_length == 1:
                self._block_mask = None
            else:
                from torch.nn.attention.flex_attention import create_block_mask

                batch = None if self.causal_only else self.batch_size
                self._block_mask = create_block_mask(
                    self.mask_mod(),
                    batch,
                    None,
                    self.query_length,
                    self.key_length,
                    device=self.device,
                )
            self._block_mask_built = True
        return self._block_mask


def build_attention_mask(
    input_shape: tuple[int, int],
    past_length: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    window: int | None = None,
) -> AttentionMask:
    """Collect what the layers need to mask attention for one forward call.

    ``attention_mask``: optional 2-D (batch, past + seq) with 1 for real tokens, 0 for padding, or a
    prepared 4-D boolean (batch, 1, seq, past + seq) with True where a query may attend a key.
    ``position_ids``: (batch, seq); restarts mark document boundaries (used only without cache).
    ``window``: the sliding window in keys (None: all earlier keys); a prepared 4-D mask already
    says what each query sees, so it is not applied there.
    """
    batch_size, query_length = input_shape
    key_length = past_length + query_length
    key_valid = None
    if attention_mask is not None and attention_mask.dim() == 4:
        expected = (batch_size, 1, query_length, key_length)
        if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"a 4-D attention_mask must be boolean of shape {expected}; "
                f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        return AttentionMask(
            batch_size, query_length, past_length, device, prepared=attention_mask.to(device)
        )
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                "attention_mask must be 2-D (batch, sequence) with 1 for tokens and 0 for padding, "
                f"or a prepared 4-D boolean mask; got shape {tuple(attention_mask.shape)}"
            )
        if attention_mask.shape[-1] < key_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the keys "
                f"span {key_length} (cache {past_length} + input {query_length})"
            )
        key_valid = attention_mask[:, -key_length:].to(device=device, dtype=torch.bool)
        if bool(key_valid.all()):
            key_valid = None
    doc_ids = None
    if position_ids is not None and past_length == 0:
        doc_ids = document_ids(position_ids.to(device))
    return AttentionMask(
        batch_size, query_length, past_length, device, key_valid, doc_ids, window=window
    )


_compiled_flex: Callable | None = None


def _flex_attention(query, key, value, **kwargs):
    """flex_attention, compiled (fused kernel) on CUDA for head dims the kernel supports (>= 16),
    the unfused reference implementation otherwise."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if query.device.type == "cuda" and query.shape[-1] >= 16:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        return _compiled_flex(query, key, value, **kwargs)
    with warnings.catch_warnings():  # the unfused reference path warns on every new process
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(query, key, value, **kwargs)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``num_key_value_heads < num_attention_heads`` gives GQA
    (query head ``h`` reads key/value head ``h // (heads / kv_heads)``)."""

    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.backend = config.attention_backend
        if self.backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention_backend {self.backend!r}")
        self.attention_dropout = config.attention_dropout
        self.scale = 1.0 / math.sqrt(self.head_dim)
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        for proj, role in ((self.q_proj, "qk"), (self.k_proj, "qk"), (self.v_proj, "value")):
            proj.init_role = role  # read by the model's _init_weights
        self.o_proj.init_role = "out"
        if config.qk_norm:
            self.q_norm = make_norm(config.norm, self.head_dim, config.norm_eps)
            self.k_norm = make_norm(config.norm, self.head_dim, config.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.use_alibi = config.positional_encoding == "alibi"
        self._slopes_by_device: dict[torch.device, torch.Tensor] = {}

    def alibi_slopes(self, device: torch.device) -> torch.Tensor:
        slopes = self._slopes_by_device.get(device)
        if slopes is None:
            slopes = alibi_slopes(self.num_heads).to(device)
            self._slopes_by_device[device] = slopes
        return slopes

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        mask: AttentionMask,
        cache: Any = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if k.shape[-2] != mask.key_length:
            try:
                mask = mask.for_keys(k.shape[-2])
            except RuntimeError as error:
                raise RuntimeError(f"layer {self.layer_idx}: {error}") from None
        dropout = self.attention_dropout if self.training else 0.0
        weights = None
        backend = "eager" if output_attentions else self.backend
        if backend == "eager":
            out, weights = self._eager(q, k, v, mask, dropout)
        elif backend == "sdpa":
            out = self._sdpa(q, k, v, mask, dropout)
        else:
            out = self._flex(q, k, v, mask, dropout)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(out), weights

    def _bias(self, mask: AttentionMask, device: torch.device) -> torch.Tensor:
        q_pos, k_pos = mask.positions()
        return alibi_bias(self.alibi_slopes(device), q_pos, k_pos)[None]  # (1, H, T, S)

    def _eager(self, q, k, v, mask: AttentionMask, dropout: float):
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * self.scale
        if self.use_alibi:
            scores = scores + self._bias(mask, q.device)
        scores = scores.masked_fill(~mask.dense(), float("-inf"))
        weights = torch.softmax(scores, dim=-1).to(q.dtype)
        if dropout:
            weights = F.dropout(weights, p=dropout, training=True)
        return torch.matmul(weights, v), weights

    def _sdpa(self, q, k, v, mask: AttentionMask, dropout: float):
        is_causal = False
        attn_mask = None
        if self.use_alibi:
            attn_mask = self._bias(mask, q.device).to(q.dtype)
            attn_mask = attn_mask.masked_fill(~mask.dense(), float("-inf"))
        elif not mask.causal_only:
            attn_mask = mask.dense()
        elif mask.query_length == mask.key_length:
            is_causal = True
        elif mask.query_length > 1:  # several new tokens on top of a cache
            attn_mask = mask.dense()
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=dropout,
            is_causal=is_causal,
            scale=self.scale,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )

    def _flex(self, q, k, v, mask: AttentionMask, dropout: float):
        if dropout:
            raise NotImplementedError("attention_dropout is not supported by the flex backend")
        score_mod = None
        if self.use_alibi:
            slopes, past = self.alibi_slopes(q.device), mask.past_length

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + slopes[h] * (kv_idx - q_idx - past)

        return _flex_attention(
            q,
            k,
            v,
            score_mod=score_mod,
            block_mask=mask.block_mask(),
            scale=self.scale,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
