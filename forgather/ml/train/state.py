"""Trainer state and control flags, with the field names Hugging Face callbacks know."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainerState:
    """What a trainer knows about its progress; passed to every callback event."""

    global_step: int = 0
    epoch: float = 0.0
    max_steps: int = 0
    num_train_epochs: float = 1.0
    logging_steps: int = 50
    eval_steps: int = 0
    save_steps: int = 0
    train_batch_size: int = 0  # per device
    effective_batch_size: int = 0  # per optimizer step, all ranks and accumulation
    num_input_tokens_seen: int = 0
    total_flos: float = 0.0
    best_metric: float | None = None
    best_model_checkpoint: str | None = None
    is_world_process_zero: bool = True
    is_local_process_zero: bool = True
    world_size: int = 1
    rank: int = 0
    parallelism: str = ""  # how the model is spread over the ranks, as this rank runs it
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainerControl:
    """Flags callbacks (and trainer control) set to steer the loop; the trainer resets them after use."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False
    should_abort_without_save: bool = False

    def reset_step_flags(self) -> None:
        """Clear the one-shot flags after the trainer acted on them."""
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False
