"""Next-token cross-entropy of a causal LM: from logits, or fused with the output projection.

`causal_lm_loss(logits, labels)` is the plain loss. `linear_cross_entropy(hidden, weight, labels)`
computes the same loss from the final hidden states and the head's weight without ever holding the
(tokens x vocab) logits: it walks the tokens in chunks, and for each chunk computes the logits, the
loss and — when gradients are wanted — the chunk's gradients with respect to the hidden states and
the weight, at once (the backward pass only scales them). Peak memory is one chunk's logits instead
of all of them, in float32 twice (logits and their gradient) in the plain loss.

Backends (`impl`): "torch" (the chunked loop above, any device) and "liger" (Liger-Kernel's Triton
kernel, CUDA, when `liger-kernel` is installed); "auto" takes liger where it can, else torch.

Self-contained like its siblings (torch only; Liger imported on demand).
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
FUSED_LOSS_IMPLS = ("auto", "torch", "liger")


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of predicting `labels[:, t + 1]` from `logits[:, t]`, in float32.

    `labels` are the inputs (not pre-shifted), `ignore_index` where no loss is wanted. The mean over
    the counted tokens, or the sum divided by `num_items_in_batch` when given (exact gradient
    accumulation over micro-batches of different token counts).
    """
    # Shift the labels, not the logits: slicing the logits would copy a (batch, seq, vocab) tensor.
    targets = shift_labels(labels, ignore_index).to(logits.device)
    flat = logits.float().reshape(-1, logits.size(-1))
    if num_items_in_batch is None:
        return F.cross_entropy(
            flat, targets, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
    loss = F.cross_entropy(
        flat, targets, ignore_index=ignore_index, reduction="sum", label_smoothing=label_smoothing
    )
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The flat targets of every position: the next token's label, `ignore_index` at row ends."""
    return F.pad(labels[:, 1:], (0, 1), value=ignore_index).reshape(-1)


def _liger_function():
    # By name, not an import statement: transformers refuses to load remote code whose modules
    # import packages that are not installed, and Liger is optional.
    module = importlib.import_module("liger_kernel.ops.fused_linear_cross_entropy")
    return module.LigerFusedLinearCrossEntropyFunction


def liger_available() -> bool:
    """Whether Liger-Kernel's fused linear cross-entropy can be imported."""
    try:
        _liger_function()
    except Exception:
        return False
    return True


def resolve_impl(impl: str, device: torch.device) -> str:
    """The backend `impl` means on `device` ("auto": liger on CUDA when installed, else torch)."""
    if impl not in FUSED_LOSS_IMPLS:
        raise ValueError(f"fused loss impl must be one of {FUSED_LOSS_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "liger" if device.type == "cuda" and liger_available() else "torch"
    if impl == "liger":
        if device.type != "cuda":
            raise ValueError(f"the liger fused loss runs on CUDA only, not on {device.type}")
        if not liger_available():
            raise ValueError("the liger fused loss needs `pip install liger-kernel`")
    return impl


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    impl: str = "auto",
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """`causal_lm_loss(hidden @ weight.T + bias, labels)` without the logits tensor.

    `hidden` (batch, seq, dim) are the final (normalised) hidden states, `weight` (vocab, dim) the
    output projection, `labels` (batch, seq) the inputs as for `causal_lm_loss`. `chunk_tokens`
    (torch backend): tokens per chunk; None keeps a chunk's float32 logits near 128 MiB.
    """
    targets = shift_labels(labels, ignore_index).to(hidden.device)
    flat = hidden.reshape(-1, hidden.size(-1))
    backend = resolve_impl(impl, hidden.device)
    if backend == "liger":
        total = _liger(flat, weight, targets, bias, ignore_index, label_smoothing)
    else:
        chunk = chunk_tokens or chunk_tokens_for(weight.shape[0])
        total = _chunked(flat, weight, bias, targets, ignore_index, label_smoothing, chunk)
    if num_items_in_batch is None:
        count = (targets != ignore_index).sum()
        return total / count  # no counted token: 0/0 = nan, as F.cross_entropy gives
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


@torch.compiler.disable  # Liger's own Triton kernels; dynamo cannot trace its host code
def _liger(flat, weight, targets, bias, ignore_index, label_smoothing):
    total = _liger_function().apply(
        flat, weight, targets, bias, None, ignore_index, 0.0, label_smoothing, "sum"
    )
    return total[0] if isinstance(total, tuple) else total


@torch.compiler.disable  # a Python loop of large matmuls: nothing for the compiler to fuse
def _chunked(flat, weight, bias, targets, ignore_index, label_smoothing, chunk):
    return _ChunkedLinearCrossEntropy.apply(
        flat, weight, bias, targets, ignore_index, label_smoothing, chunk
    )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `flat @ weight.T (+ bias)`, chunk by chunk; gradients computed in
    the forward pass (see the module docstring)."""

    @staticmethod
    def forward(ctx, flat, weight, bias, targets, ignore_index, label_smoothing, chunk_tokens):
        # (autograd turns grad mode off inside forward: ask which inputs need gradients)
        need_flat, need_weight, need_bias = ctx.needs_input_grad[:3]
        wants_grad = need_flat or need_weight or need_bias
        compute_dtype = (
            torch.get_autocast_dtype(flat.device.type)
            if torch.is_autocast_enabled(flat.device.type)
            else weight.dtype
        )
        w = weight.to(compute_dtype)
        b = bias.to(compute_dtype) if bias is not None else None
        vocab = weight.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=flat.device)
        grad_flat = torch.empty_like(flat) if need_flat else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if need_weight
            else None
        )
        grad_bias = (
            torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_bias else None
        )
        size = max(1, chunk_tokens)
        with torch.autocast(flat.device.type, enabled=False):
            for start in range(0, flat.shape[0], size):
                h = flat[start : start + size].to(compute_dtype)
                t = targets[start : start + size]
                logits = h @ w.T
                if b is not None:
                    logits = logits + b
                logits = logits.float()
                counted = t != ignore_index
                safe = torch.where(counted, t, 0)
                lse = torch.logsumexp(logits, dim=-1)
                nll = lse - logits.gather(1, safe[:, None])[:, 0]
                if label_smoothing:
                    smooth = lse - logits.mean(dim=-1)
                    nll = (1 - label_smoothing) * nll + label_smoothing * smooth
                total += torch.where(counted, nll, 0.0).sum()
                if not wants_grad:
                    continue
                # d(loss)/d(logits) = softmax - (1 - eps) * one_hot - eps / vocab, on counted rows
                grad = torch.softmax(logits, dim=-1)
                grad.scatter_add_(
                    1,
                    safe[:, None],
                    torch.full_like(safe[:, None], -(1 - label_smoothing), dtype=grad.dtype),
                )
                if label_smoothing:
                    grad -= label_smoothing / vocab
                grad *= counted[:, None]
                if grad_bias is not None:
                    grad_bias += grad.sum(dim=0)
                grad = grad.to(compute_dtype)
                if grad_flat is not None:
                    grad_flat[start : start + size] = (grad @ w).to(flat.dtype)
                if grad_weight is not None:
                    grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_flat, grad_weight, grad_bias))
        )
        ctx.present = (grad_flat is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        grad_flat, grad_weight, grad_bias = (
            s if present else None for s, present in zip(saved, ctx.present, strict=True)
        )
        scale = grad_output.float()
        if grad_flat is not None:
            grad_flat = grad_flat * scale.to(grad_flat.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.dtypes[0])
        if grad_bias is not None:
            grad_bias = (grad_bias * scale).to(ctx.dtypes[1])
        return grad_flat, grad_weight, grad_bias, None, None, None, None


def chunk_tokens_for(vocab: int, budget_bytes: int = 256 * 1024 * 1024) -> int:
    """A chunk size whose float32 logits and gradient fit `budget_bytes` (at least 256 tokens)."""
    return max(256, 2 ** int(math.log2(max(1, budget_bytes // (8 * vocab)))))
