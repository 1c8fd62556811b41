"""Telling evaluation records from training ones, and acting on each evaluation once."""

from __future__ import annotations

from typing import Any

EVAL_PREFIXES = ("eval_", "test_", "predict_")


def is_eval_record(logs: dict[str, Any]) -> bool:
    """True for a record of evaluation metrics only (every metric key starts with eval_/test_)."""
    keys = [k for k in logs if k not in ("epoch", "step", "global_step", "timestamp")]
    return bool(keys) and all(k.startswith(EVAL_PREFIXES) for k in keys)


class EvalDedupe:
    """Evaluation results may arrive through on_log and on_evaluate; act on them once."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, tuple[str, ...]]] = set()

    def first_time(self, step: int, metrics: dict[str, Any]) -> bool:
        key = (step, tuple(sorted(k for k in metrics if k.startswith(EVAL_PREFIXES))))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True
