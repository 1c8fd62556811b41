"""`TrainingScript`: the `main` target of a training config. It trains, evaluates, saves and samples."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _git_sha() -> str | None:
    """The commit of the working directory's git checkout, if there is one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class TrainingScript:
    """Run a trainer the way a config describes.

    `trainer` is any object with `train()`, `evaluate()` and `save_model(dir)` (forgather's `Trainer`).
    `baseline` (optional) is called with no arguments and returns a loss to compare the final
    validation loss with, e.g. the corpus's unigram entropy in nats per token; `sample_prompts` are
    completed by the trained model at the end. `config_text` and `provenance` (given by the config as
    `!var pp_config` and `!var config_provenance`) are written to the run's logging directory.
    """

    def __init__(
        self,
        trainer: Any,
        *,
        do_train: bool = True,
        do_eval: bool = True,
        do_save: bool = True,
        save_dir: str | None = None,
        baseline: Callable[[], float] | None = None,
        baseline_name: str = "baseline",
        sample_prompts: Sequence[str] = (),
        max_new_tokens: int = 60,
        config_text: str | None = None,
        provenance: dict[str, Any] | None = None,
    ):
        self.trainer = trainer
        self.do_train = do_train
        self.do_eval = do_eval
        self.do_save = do_save
        self.save_dir = save_dir
        self.baseline = baseline
        self.baseline_name = baseline_name
        self.sample_prompts = list(sample_prompts)
        self.max_new_tokens = max_new_tokens
        self.config_text = config_text
        self.provenance = provenance

    def run(self) -> dict[str, Any]:
        """Train, evaluate, save and sample as configured; returns the final metrics."""
        handler = getattr(self.trainer, "callback_handler", None)
        if self.do_train and hasattr(handler, "add"):
            # Written at on_train_begin, after the trainer checked the output dir and any checkpoint
            # to resume from: a run that fails those checks leaves no runs/<time>/ directory behind.
            from forgather.ml.train.callbacks.logging import RunInfoWriter

            logging_dir = getattr(getattr(self.trainer, "args", None), "logging_dir", None)
            if _is_rank_zero() and logging_dir:
                handler.add(RunInfoWriter(self.config_text, self.provenance))
        else:
            self._write_run_info()
        metadata = getattr(self.trainer, "checkpoint_metadata", None)
        if isinstance(metadata, dict):
            metadata.update(self._checkpoint_metadata())
        results: dict[str, Any] = {}
        try:
            if self.do_train:
                self.trainer.train()
            if self.do_eval:
                results.update(self._final_eval() or self.trainer.evaluate() or {})
            if self.do_save:
                self.trainer.save_model(self.save_dir)
            # Every rank takes part: a model split over the ranks is gathered whole to rank 0.
            whole = None
            if self.sample_prompts and hasattr(self.trainer, "generation_model"):
                whole = self.trainer.generation_model()
            elif _is_rank_zero():
                whole = getattr(self.trainer, "model", None)
            if _is_rank_zero():
                self._report(results)
                if self.sample_prompts:
                    results["samples"] = self._samples(whole)
        except BaseException:
            # Leave without the closing barrier: the other ranks may wait in a collective this
            # rank will not join; exiting lets torchrun stop them instead of hanging.
            close = getattr(self.trainer, "close", None)
            if close is not None:
                try:
                    close(failed=True)
                except TypeError:  # a trainer whose close() takes no arguments
                    close()
            raise
        close = getattr(self.trainer, "close", None)
        if close is not None:
            close()
        return results

    def _final_eval(self) -> dict[str, Any] | None:
        """The evaluation the trainer already ran at its last step, if any (no need to repeat it)."""
        state = getattr(self.trainer, "state", None)
        history = getattr(state, "log_history", None) or []
        for record in reversed(history):
            if "eval_loss" in record:
                if record.get("step") == getattr(state, "global_step", None):
                    return {k: v for k, v in record.items() if k.startswith("eval_")}
                return None
        return None

    def _checkpoint_metadata(self) -> dict[str, Any]:
        """What checkpoints record about where they came from: config digest, git sha, image digest."""
        metadata: dict[str, Any] = {}
        if self.config_text is not None:
            metadata["config_digest"] = hashlib.sha256(self.config_text.encode()).hexdigest()
        # Inside an image there is no git checkout: the image passes its revision as FORGATHER_GIT_SHA.
        image_sha = os.environ.get("FORGATHER_GIT_SHA")
        metadata["git_sha"] = _git_sha() or (
            image_sha if image_sha not in (None, "", "unknown") else None
        )
        metadata["image_digest"] = os.environ.get("FORGATHER_IMAGE_DIGEST") or None
        return metadata

    def _write_run_info(self) -> None:
        if not _is_rank_zero():
            return
        logging_dir = getattr(getattr(self.trainer, "args", None), "logging_dir", None)
        if not logging_dir:
            return
        directory = Path(logging_dir)
        directory.mkdir(parents=True, exist_ok=True)
        if self.config_text is not None:
            (directory / "config.yaml").write_text(self.config_text, encoding="utf-8")
        if self.provenance is not None:
            (directory / "provenance.json").write_text(
                json.dumps(self.provenance, indent=2, default=str), encoding="utf-8"
            )

    def _report(self, results: dict[str, Any]) -> None:
        loss = results.get("eval_loss")
        if loss is None:
            return
        line = f"validation loss {loss:.4f} nats/token (perplexity {math.exp(min(loss, 50)):.2f})"
        if self.baseline is not None:
            value = float(self.baseline())
            results[self.baseline_name.replace(" ", "_")] = value
            verdict = "below" if loss < value else "NOT below"
            line += f"; {self.baseline_name} {value:.4f} nats/token: {verdict} it by {value - loss:+.4f}"
        print(line, flush=True)

    def _samples(self, model: Any) -> list[str]:
        import torch

        tokenizer = getattr(self.trainer, "processing_class", None)
        if model is None or tokenizer is None or not hasattr(model, "generate"):
            return []
        model.eval()
        device = next(model.parameters()).device
        texts = []
        for prompt in self.sample_prompts:
            encoded = tokenizer(prompt, return_tensors="pt").to(device)
            with torch.no_grad():
                output = model.generate(
                    **encoded,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=True,
                    top_k=40,
                    temperature=0.8,
                    pad_token_id=tokenizer.pad_token_id,
                )
            text = tokenizer.decode(output[0], skip_special_tokens=True)
            texts.append(text)
            print(f"--- sample ---\n{text}", flush=True)
        return texts
