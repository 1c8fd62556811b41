"""Trainer callbacks: progress, logs, samples, memory, control."""

from forgather.ml.train.callbacks.base import CallbackHandler, TrainerCallback

__all__ = ["CallbackHandler", "TrainerCallback"]
