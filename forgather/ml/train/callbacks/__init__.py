"""Trainer callbacks: progress, logs, samples, memory, control.

Order matters for callbacks that add values to the `logs` dict of on_log (SpeedMetricsCallback,
PeakMemoryCallback: `produces_log_metrics = True`): register them before the ones that print or store
logs (ProgressCallback, JsonLinesLogger, TensorBoardLogger).
"""

from forgather.ml.train.callbacks.base import CallbackHandler, TrainerCallback
from forgather.ml.train.callbacks.control import TrainerControlCallback
from forgather.ml.train.callbacks.logging import JsonLinesLogger, RunInfoWriter, TensorBoardLogger
from forgather.ml.train.callbacks.memory import PeakMemoryCallback
from forgather.ml.train.callbacks.progress import InfoCallback, ProgressCallback
from forgather.ml.train.callbacks.speed import SpeedMetricsCallback
from forgather.ml.train.callbacks.textgen import TextSampleCallback

__all__ = [
    "CallbackHandler",
    "InfoCallback",
    "JsonLinesLogger",
    "PeakMemoryCallback",
    "ProgressCallback",
    "RunInfoWriter",
    "SpeedMetricsCallback",
    "TensorBoardLogger",
    "TextSampleCallback",
    "TrainerCallback",
    "TrainerControlCallback",
]
