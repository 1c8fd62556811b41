"""The default training loss: next-token cross-entropy of a causal language model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy of predicting `labels[:, t + 1]` from `logits[:, t]`.

    `logits` is (batch, seq, vocab), `labels` (batch, seq) with `ignore_index` where no loss is wanted
    (padding). The shift happens here: labels are the inputs, not pre-shifted. Computed in float32.
    """
    # Shift the labels, not the logits: slicing the logits would copy a (batch, seq, vocab) tensor.
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=ignore_index).to(logits.device)
    logits = logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), shift_labels.reshape(-1), ignore_index=ignore_index
    )


def logits_of(outputs) -> torch.Tensor:
    """The logits of a model's output: a tensor, a `ModelOutput` / dict with `logits`, or a tuple."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = (
        outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    )
    if logits is not None:
        return logits
    if isinstance(outputs, tuple | list):
        return outputs[0]
    raise TypeError(f"cannot find logits in model output of type {type(outputs).__name__}")


__all__ = ["IGNORE_INDEX", "causal_lm_loss", "logits_of"]
