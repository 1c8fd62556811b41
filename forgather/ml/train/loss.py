"""The default training loss: next-token cross-entropy of a causal language model.

One implementation, the model package's (`forgather.ml.models.transformer.loss`, self-contained for
remote code): the trainer uses it for any model, and forgather models also use it fused with their
head (`trainer_args.fused_loss`).
"""

from __future__ import annotations

import torch

from forgather.ml.models.transformer.loss import IGNORE_INDEX, causal_lm_loss


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
