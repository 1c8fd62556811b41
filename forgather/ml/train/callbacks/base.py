"""The callback protocol: Hugging Face event names and arguments.

Every event is called as `callback.on_X(args, state, control, **kwargs)` where `args` are the training
arguments, `state` a `TrainerState`, `control` a `TrainerControl`, and kwargs hold `model`,
`processing_class`, `optimizer`, `lr_scheduler`, `train_dataloader`, `eval_dataloader` and, per event,
`logs` (on_log), `metrics` (on_evaluate), `checkpoint_dir` (on_save). A callback returning a
`TrainerControl` replaces the trainer's control. Any object with some of these methods works as a callback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from forgather.ml.train.state import TrainerControl, TrainerState

EVENTS = (
    "on_init_end",
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_begin",
    "on_substep_end",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_step_end",
    "on_evaluate",
    "on_predict",
    "on_save",
    "on_log",
    "on_prediction_step",
)


class TrainerCallback:
    """Base class with a no-op method for every event; override the ones you need."""

    def on_init_end(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_train_end(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_epoch_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_epoch_end(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_step_begin(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_substep_end(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_pre_optimizer_step(
        self, args, state: TrainerState, control: TrainerControl, **kwargs
    ): ...
    def on_optimizer_step(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_step_end(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_evaluate(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_predict(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_save(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_log(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...
    def on_prediction_step(self, args, state: TrainerState, control: TrainerControl, **kwargs): ...


class CallbackHandler:
    """Calls an event on every callback in order."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.callbacks: list[Any] = list(callbacks)

    def add(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def remove(self, callback_or_type: Any) -> None:
        self.callbacks = [
            cb
            for cb in self.callbacks
            if cb is not callback_or_type
            and not (isinstance(callback_or_type, type) and isinstance(cb, callback_or_type))
        ]

    def dispatch(
        self, event: str, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        """Call `event` on each callback; a returned `TrainerControl` replaces `control`."""
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is None:
                continue
            result = method(args, state, control, **kwargs)
            if isinstance(result, TrainerControl):
                control = result
        return control
