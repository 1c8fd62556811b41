"""The trainer on a tiny Llama: learning, accumulation, evaluation, callbacks, control, factories."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re

import pytest
import torch

from forgather.ml.optim import make_optimizer
from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.checkpoint import CheckpointError, list_checkpoints, read_manifest
from forgather.ml.train.state import TrainerControl
from forgather.ml.train.trainer import Trainer
from tests.unit.train._tiny import ProgressionDataset, Recorder, tiny_forgather, tiny_llama

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trainer(tmp_path, callbacks=(), model_init=tiny_llama, train_size=64, **overrides):
    settings = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-2,
        "warmup_steps": 2,
        "max_steps": 10,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "device": "cpu",
    }
    settings.update(overrides)
    return Trainer(
        args=TrainingArguments(**settings),
        model_init=model_init,
        train_dataset=ProgressionDataset(train_size, seed=1),
        eval_dataset=ProgressionDataset(16, seed=2),
        callbacks=list(callbacks),
    )


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_validation_loss_falls(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=40, eval_strategy="steps", eval_steps=20)
    before = trainer.evaluate()["eval_loss"]
    state = trainer.train()
    evals = [r["eval_loss"] for r in state.log_history if "eval_loss" in r]
    assert evals[-1] < before - 1.5, (before, evals)
    assert evals[-1] < evals[-2]


def test_gradient_accumulation_4x2_equals_1x8(tmp_path):
    big = make_trainer(tmp_path / "a", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    small = make_trainer(
        tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=4
    )
    big_logs, small_logs = Recorder(), Recorder()
    big.callback_handler.add(big_logs)
    small.callback_handler.add(small_logs)
    big.train()
    small.train()
    a, b = big_logs.step_losses(), small_logs.step_losses()
    assert list(a) == list(b) == list(range(1, 11))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-5), step
    wa, wb = weights(big), weights(small)
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=2e-5), name


def test_eval_loss_is_the_plain_mean_over_batches_whatever_the_accumulation(tmp_path):
    one = make_trainer(tmp_path / "a", gradient_accumulation_steps=1, per_device_eval_batch_size=4)
    four = make_trainer(tmp_path / "b", gradient_accumulation_steps=4, per_device_eval_batch_size=4)
    assert one.evaluate()["eval_loss"] == four.evaluate()["eval_loss"]
    from forgather.ml.train.loss import causal_lm_loss

    data = ProgressionDataset(16, seed=2)
    with torch.no_grad():
        losses = []
        for start in range(0, 16, 4):
            ids = torch.stack([data[i]["input_ids"] for i in range(start, start + 4)])
            losses.append(causal_lm_loss(four.model(input_ids=ids).logits, ids).item())
    metrics = four.evaluate()
    assert metrics["eval_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert metrics["eval_perplexity"] == pytest.approx(
        torch.tensor(metrics["eval_loss"]).exp().item()
    )
    limited = make_trainer(tmp_path / "c", per_device_eval_batch_size=4, max_eval_steps=2)
    assert limited.evaluate()["eval_batches"] == 2


def test_callbacks_get_every_event_with_kwargs_and_logs_have_the_fields(tmp_path):
    seen_kwargs = {}

    class Spy:
        def on_train_begin(self, args, state, control, **kwargs):
            seen_kwargs.update(kwargs)

    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        callbacks=[recorder, Spy()],
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        max_grad_norm=None,
    )
    state = trainer.train()
    events = recorder.events
    assert events[:3] == ["on_init_end", "on_train_begin", "on_epoch_begin"]
    assert events[-1] == "on_train_end"
    first_step = events[3 : events.index("on_step_end") + 1]
    assert first_step == [
        "on_step_begin",
        "on_substep_end",
        "on_pre_optimizer_step",
        "on_optimizer_step",
        "on_step_end",
    ]
    for event in ("on_log", "on_evaluate", "on_save"):
        assert event in events
    assert {
        "model",
        "processing_class",
        "optimizer",
        "lr_scheduler",
        "train_dataloader",
        "eval_dataloader",
    } <= set(seen_kwargs)
    steps = [r for r in recorder.logs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for record in steps:
        assert {"loss", "grad_norm", "learning_rate", "epoch", "tokens"} <= set(record)
        assert record["grad_norm"] > 0
    assert steps[-1]["tokens"] == 4 * 8 * 32 == state.num_input_tokens_seen
    assert steps[0]["learning_rate"] == pytest.approx(0.5e-2)  # first warmup step
    summary = recorder.logs[-1]
    assert {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
    } <= set(summary)
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-2", "checkpoint-4"]
    assert (
        read_manifest(tmp_path / "out" / "checkpoints" / "checkpoint-2")["metrics"]["eval_loss"] > 0
    )


class SetFlag:
    def __init__(self, step, flag):
        self.step, self.flag = step, flag

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            setattr(control, self.flag, True)


def test_control_flags_save_evaluate_and_stop(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        callbacks=[
            SetFlag(2, "should_save"),
            SetFlag(2, "should_evaluate"),
            SetFlag(3, "should_training_stop"),
            recorder,
        ],
        save_strategy="steps",
        save_steps=100,
        logging_steps=100,
    )
    state = trainer.train()
    assert state.global_step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-2", "checkpoint-3"]
    assert [r["step"] for r in recorder.logs if "eval_loss" in r] == [2]


def test_abort_without_save_skips_the_final_save(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        callbacks=[SetFlag(3, "should_abort_without_save"), recorder],
        save_strategy="steps",
        save_steps=100,
    )
    assert trainer.train().global_step == 3
    assert list_checkpoints(tmp_path / "out") == []
    assert recorder.events[-1] == "on_train_end"


def test_a_callback_returning_a_control_replaces_it(tmp_path):
    class Stop:
        def on_step_end(self, args, state, control, **kwargs):
            return TrainerControl(should_training_stop=True)

    assert make_trainer(tmp_path, callbacks=[Stop()]).train().global_step == 1


def test_epochs_with_a_partial_accumulation_group_and_epoch_saves(tmp_path):
    # 40 samples / batch 8 = 5 micro-batches per epoch; accumulation 2 -> 3 steps (the last has 1).
    trainer = make_trainer(
        tmp_path,
        train_size=40,
        max_steps=-1,
        num_train_epochs=2,
        gradient_accumulation_steps=2,
        save_strategy="epoch",
    )
    state = trainer.train()
    assert (state.global_step, state.epoch, state.max_steps) == (6, 2.0, 6)
    assert state.num_input_tokens_seen == 2 * 40 * 32
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-3", "checkpoint-6"]


def test_save_best_keeps_the_best_and_load_best_model_at_end(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=6,
        # The eval loss falls steadily, so "greater is better" makes the first evaluation the best.
        greater_is_better=True,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=1,
        save_best=True,
        load_best_model_at_end=True,
    )
    state = trainer.train()
    evals = {r["step"]: r["eval_loss"] for r in state.log_history if "eval_loss" in r}
    best_step = max(evals, key=evals.get)
    assert best_step == 2
    kept = [p.name for p in list_checkpoints(tmp_path / "out")]
    assert kept == ["checkpoint-2", "checkpoint-6"]
    assert state.best_model_checkpoint.endswith("checkpoint-2")
    assert state.best_metric == evals[best_step]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(evals[best_step], rel=1e-6)


def test_existing_checkpoints_need_resume_or_overwrite(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2).train()
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2).train()
    make_trainer(tmp_path, max_steps=1, save_strategy="steps", overwrite_output_dir=True).train()
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-1"]


def test_resuming_another_models_checkpoint_fails_and_changes_nothing(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2).train()
    root = tmp_path / "out"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    other = make_trainer(
        tmp_path,
        model_init=lambda: tiny_llama(hidden_size=32),
        max_steps=4,
        save_strategy="steps",
        save_steps=1,
        resume_from_checkpoint=True,
    )
    with pytest.raises(
        CheckpointError, match="model_digest mismatch: the checkpoint belongs to another model"
    ):
        other.train()
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    assert after == before


def test_resume_from_an_explicit_path_continues_exactly(tmp_path):
    # A constant schedule, so a 3-step run and a 6-step run share their first 3 steps exactly.
    settings = {
        "save_strategy": "steps",
        "save_steps": 3,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "train_size": 20,
        "lr_scheduler_type": "constant",
    }
    straight = Recorder()
    make_trainer(tmp_path / "a", callbacks=[straight], max_steps=6, **settings).train()
    make_trainer(tmp_path / "b", max_steps=3, **settings).train()
    resumed = Recorder()
    checkpoint = tmp_path / "b" / "out" / "checkpoints" / "checkpoint-3"
    make_trainer(
        tmp_path / "b",
        callbacks=[resumed],
        max_steps=6,
        resume_from_checkpoint=str(checkpoint),
        **settings,
    ).train()
    expected = {step: loss for step, loss in straight.step_losses().items() if step > 3}
    # 5 micro-batches an epoch, in steps of 2, 2 and 1: checkpoint-3 sits at the end of epoch 1.
    assert resumed.step_losses() == expected
    assert resumed.logs[-2]["tokens"] == straight.logs[-2]["tokens"] == 2 * 20 * 32


def test_resume_needs_an_existing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        make_trainer(tmp_path, resume_from_checkpoint="latest").train()


def test_optimizer_and_scheduler_factories_are_called_as_documented(tmp_path):
    calls = {}

    def scheduler_factory(*, optimizer, num_training_steps):
        calls["scheduler"] = num_training_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.optimizer_factory = functools.partial(torch.optim.SGD, lr=0.1)
    trainer.lr_scheduler_factory = scheduler_factory
    trainer.train()
    assert isinstance(trainer.optimizer, torch.optim.SGD) and calls["scheduler"] == 2
    named = make_trainer(tmp_path / "b", max_steps=1)
    named.optimizer_factory = functools.partial(make_optimizer, lr=0.1, weight_decay=0.5)
    named.train()
    assert [g["weight_decay"] for g in named.optimizer.param_groups] == [0.5, 0.0]


def test_padding_is_not_counted_as_tokens(tmp_path):
    def collate(samples):
        ids = torch.stack([s["input_ids"] for s in samples])
        mask = torch.ones_like(ids)
        mask[:, -4:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.data_collator = collate
    assert trainer.train().num_input_tokens_seen == 2 * 8 * 28


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision):
    trainer = make_trainer(tmp_path, max_steps=3, **{precision: True})
    state = trainer.train()
    losses = [r["loss"] for r in state.log_history if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (trainer.grad_scaler is not None) == (precision == "fp16")


def test_save_model_writes_a_loadable_directory(tmp_path):
    from transformers import LlamaForCausalLM

    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert json.loads((tmp_path / "model" / "config.json").read_text())["hidden_size"] == 64


@pytest.mark.slow
def test_torch_compile_and_gradient_checkpointing_train_the_same(tmp_path):
    plain = make_trainer(tmp_path / "a", max_steps=3).train()
    compiled = make_trainer(
        tmp_path / "b",
        max_steps=3,
        torch_compile=True,
        torch_compile_backend="eager",
        gradient_checkpointing=True,
    ).train()
    losses = [[r["loss"] for r in state.log_history if "loss" in r] for state in (plain, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_a_forgather_model_trains_and_saves_through_save_model_dir(tmp_path):
    factory = pytest.importorskip("forgather.ml.models.factory")

    def model_init():
        return factory.build_model(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )

    trainer = make_trainer(
        tmp_path, model_init=model_init, max_steps=3, save_strategy="steps", save_steps=3
    )
    state = trainer.train()
    assert len([r for r in state.log_history if "loss" in r]) == 3
    trainer.save_model(str(tmp_path / "model"))
    assert "auto_map" in json.loads((tmp_path / "model" / "config.json").read_text())


def test_the_fused_loss_trains_a_forgather_model_like_the_loss_from_logits(tmp_path):
    """`fused_loss: torch` (the model computes its loss with its head, chunk by chunk, no logits)
    gives the per-step losses, gradient norms, evaluation loss and weights of `fused_loss: off`."""
    from tests.unit.train._tiny import tiny_forgather

    runs = {}
    for choice in ("off", "torch", "model"):
        recorder = Recorder()
        args = TrainingArguments(
            output_dir=str(tmp_path / choice),
            fused_loss=choice,
            max_steps=6,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=6,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            device="cpu",
            save_strategy="no",
        )
        trainer = Trainer(
            args=args,
            model_init=tiny_forgather,
            train_dataset=ProgressionDataset(32, seed=1),
            eval_dataset=ProgressionDataset(8, seed=2),
            callbacks=[recorder],
        )
        assert trainer._loss_impl == {"off": None}.get(choice, choice)
        trainer.train()
        runs[choice] = (recorder.logs, trainer.model.state_dict())
    plain_logs, plain_weights = runs["off"]
    assert len([r for r in plain_logs if "loss" in r]) == 6
    for choice in ("torch", "model"):  # fused with the head; the model's own loss from labels
        fused_logs, fused_weights = runs[choice]
        for a, b in zip(plain_logs, fused_logs, strict=True):
            for key in ("loss", "grad_norm", "eval_loss"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-5), (choice, a["step"], key)
        for name, tensor in plain_weights.items():
            # Adam magnifies float rounding where a gradient is near zero: 5e-5 as the dist tests
            torch.testing.assert_close(fused_weights[name], tensor, rtol=1e-4, atol=5e-5)


def test_a_fused_loss_the_model_or_device_cannot_run_is_one_clear_error(tmp_path):
    def make(model, choice):
        args = TrainingArguments(output_dir=str(tmp_path), fused_loss=choice, device="cpu")
        return Trainer(args=args, model=model, train_dataset=ProgressionDataset(8))

    from tests.unit.train._tiny import tiny_forgather

    with pytest.raises(ValueError, match="fused_loss=torch: LlamaForCausalLM computes no fused"):
        make(tiny_llama(), "torch")
    with pytest.raises(
        ValueError, match="fused_loss=liger: the liger fused loss runs on CUDA only"
    ):
        make(tiny_forgather(), "liger")
    assert make(tiny_llama(), "auto")._loss_impl is None  # falls back to the logits
    own, plain = make(tiny_llama(), "model"), make(tiny_llama(), "off")
    assert own._loss_impl == "model"  # any causal LM has its own loss: transformers' here
    batch = {"input_ids": torch.stack([ProgressionDataset(8)[i]["input_ids"] for i in range(4)])}
    torch.testing.assert_close(
        own.compute_loss(own.model, batch), plain.compute_loss(plain.model, batch)
    )
    with pytest.raises(ValueError, match="fused_loss=model: the model computes its own loss, but"):
        Trainer(
            args=TrainingArguments(output_dir=str(tmp_path), fused_loss="model", device="cpu"),
            model=tiny_llama(), train_dataset=ProgressionDataset(8),
            compute_loss_func=lambda outputs, labels: outputs.logits.mean(),
        )  # fmt: skip
    assert make(tiny_forgather(), "auto")._loss_impl is None  # on CPU: the plain loss
    with pytest.raises(ValueError, match="fused_loss must be one of"):
        TrainingArguments(output_dir=str(tmp_path), fused_loss="yes")


def test_resuming_with_other_hyper_parameters_stops_unless_allowed(tmp_path, capsys):
    def trainer(**overrides):
        fields = dict(
            output_dir=str(tmp_path / "out"),
            max_steps=6,
            save_steps=3,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            device="cpu",
        )
        args = TrainingArguments(**{**fields, **overrides})
        return Trainer(args=args, model=tiny_llama(), train_dataset=ProgressionDataset(64))

    first = trainer(max_steps=3)
    first.train()
    checkpoint = tmp_path / "out" / "checkpoints" / "checkpoint-3"
    recorded = read_manifest(checkpoint)["hyperparameters"]
    assert recorded["learning_rate"] == 1e-3 and recorded["lr_scheduler_type"] == "linear"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoint.rglob("*")}
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint-3 was trained with other hyper-parameters: learning_rate 0.001 -> 0.01, "
        r"max_grad_norm 1.0 -> 0.5; restore them, or resume with the new ones: "
        r"trainer_args.allow_changed_hyperparameters=true",
    ):
        trainer(learning_rate=1e-2, max_grad_norm=0.5, resume_from_checkpoint=True).train()
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.rglob("*")} == before
    assert [c.name for c in list_checkpoints(tmp_path / "out")] == ["checkpoint-3"]
    # the same values (a longer run) resume silently; new values with the flag, said aloud
    state = trainer(
        learning_rate=1e-2, allow_changed_hyperparameters=True, resume_from_checkpoint=True
    ).train()
    assert state.global_step == 6
    assert "resuming checkpoint-3 with changed hyper-parameters: learning_rate 0.001 -> 0.01" in (
        capsys.readouterr().err
    )


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small filesystem needs root")
def test_a_full_disk_stops_before_the_checkpoint_and_the_previous_one_resumes(tmp_path):
    """On a 16 MiB filesystem filled up after checkpoint 3, checkpoint 6 is refused before a byte
    is written (one line naming the directory and the sizes); checkpoint 3 stays complete, and
    once there is space again the run resumes from it and finishes."""
    import shutil
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:

        class FillDisk:
            def __getattr__(self, name):
                if name.startswith("on_"):
                    return lambda *args, **kwargs: None
                raise AttributeError(name)

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 4:  # leave less than a checkpoint (~1.4 MB) free
                    size = shutil.disk_usage(disk).free - 256 * 1024
                    while True:  # tmpfs counts in pages: step down until it fits
                        try:
                            (disk / "filler").write_bytes(bytes(size))
                            return
                        except OSError:
                            size -= 64 * 1024

        def trainer(callbacks=(), **overrides):
            fields = dict(
                output_dir=str(disk / "out"),
                max_steps=6,
                save_steps=3,
                per_device_train_batch_size=4,
                device="cpu",
            )
            args = TrainingArguments(**{**fields, **overrides})
            return Trainer(
                args=args,
                model=tiny_llama(),
                train_dataset=ProgressionDataset(64),
                callbacks=list(callbacks),
            )

        with pytest.raises(CheckpointError, match=r"not enough free space in .*out/checkpoints for "
                           r"checkpoint 6: it needs about .* free; free space"):  # fmt: skip
            trainer([FillDisk()]).train()
        assert [c.name for c in list_checkpoints(disk / "out")] == ["checkpoint-3"]
        assert not list((disk / "out" / "checkpoints").glob(".tmp-*"))
        (disk / "filler").unlink()
        state = trainer(resume_from_checkpoint=True).train()
        assert state.global_step == 6
        assert [c.name for c in list_checkpoints(disk / "out")] == ["checkpoint-3", "checkpoint-6"]
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def _in_backward_trainer(tmp_path, name, **overrides):
    fields = dict(
        output_dir=str(tmp_path / name),
        max_steps=6,
        logging_steps=1,
        save_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.1,
        max_grad_norm=None,
        device="cpu",
    )
    recorder = Recorder()
    trainer = Trainer(
        args=TrainingArguments(**{**fields, **overrides}),
        model_init=tiny_llama,  # built after the trainer seeds: the same weights every time
        train_dataset=ProgressionDataset(64),
        callbacks=[recorder],
    )
    return trainer, recorder


def test_the_optimizer_step_in_backward_trains_like_the_normal_step_and_resumes(tmp_path):
    """`optimizer_in_backward`: every parameter is updated in the backward pass and its gradient
    freed there; the losses, logged gradient norms and final weights equal the normal optimizer
    step's, and a run resumed from its checkpoint continues exactly."""
    normal, normal_log = _in_backward_trainer(tmp_path, "normal")
    normal.train()
    fused, fused_log = _in_backward_trainer(tmp_path, "fused", optimizer_in_backward=True)
    fused.train()
    assert all(p.grad is None for p in fused.model.parameters())  # freed in the backward pass
    for a, b in zip(normal_log.logs, fused_log.logs, strict=True):
        for key in ("loss", "grad_norm", "learning_rate"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), (a["step"], key)
    for name, tensor in normal.model.state_dict().items():
        torch.testing.assert_close(fused.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    resumed, resumed_log = _in_backward_trainer(
        tmp_path, "fused", optimizer_in_backward=True, resume_from_checkpoint=str(
            tmp_path / "fused" / "checkpoints" / "checkpoint-3"
        ), overwrite_output_dir=True,
    )  # fmt: skip
    resumed.train()
    assert resumed_log.step_losses() == {s: v for s, v in fused_log.step_losses().items() if s > 3}
    for name, tensor in fused.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gradient_accumulation_steps": 2}, "needs gradient_accumulation_steps: 1, not 2"),
        ({"max_grad_norm": 1.0}, "cannot clip by the global gradient norm"),
    ],
)
def test_the_optimizer_step_in_backward_refuses_what_it_cannot_do(tmp_path, overrides, message):
    trainer, _ = _in_backward_trainer(tmp_path, "x", optimizer_in_backward=True, **overrides)
    with pytest.raises(ValueError, match=f"optimizer_in_backward {message}"):
        trainer.train()
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_checkpointing_every_kth_layer_is_for_forgather_models(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        gradient_checkpointing=True,
        gradient_checkpointing_every=2,
        max_steps=1,
        device="cpu",
        save_strategy="no",
    )
    with pytest.raises(ValueError, match="gradient_checkpointing_every=2: LlamaForCausalLM"):
        Trainer(args=args, model=tiny_llama(), train_dataset=ProgressionDataset(8)).train()
    from tests.unit.train._tiny import tiny_forgather

    trainer = Trainer(args=args, model=tiny_forgather(), train_dataset=ProgressionDataset(8))
    trainer.train()
    assert trainer.model.model.gradient_checkpointing_every == 2


class RecordsTorchSettings:
    """What the process-wide speed switches read while the steps run."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(torch_settings())


def torch_settings() -> dict:
    import torch._functorch.config as functorch_config

    from forgather.ml.train.fast_path import allocator_settings

    return {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "math": torch.backends.cuda.math_sdp_enabled(),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "budget": functorch_config.activation_memory_budget,
        "expandable": "expandable_segments:True" in allocator_settings(),
    }


def test_sdpa_backend_tf32_and_expandable_segments_hold_during_training_and_are_restored_after(
    tmp_path,
):
    """`sdpa_backend: math` runs attention on the reference kernel (the same losses as torch's
    choice), `tf32: true` turns TF32 on and `expandable_segments: true` sets the allocator, for the
    steps only: torch's settings come back after."""
    before = torch_settings()
    plain = make_trainer(tmp_path / "a", max_steps=3).train()
    seen = RecordsTorchSettings()
    chosen = make_trainer(
        tmp_path / "b",
        callbacks=[seen],
        max_steps=3,
        sdpa_backend="math",
        tf32=True,
        expandable_segments=True,
    ).train()
    assert seen.seen and all(
        s["math"] and not s["flash"] and s["tf32"] is True and s["expandable"] for s in seen.seen
    ), seen.seen
    assert torch_settings() == before
    losses = [[r["loss"] for r in state.log_history if "loss" in r] for state in (plain, chosen)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sdpa_backend": "cudnn"},
            "sdpa_backend=cudnn needs a CUDA device (this run trains on cpu)",
        ),
        ({"sdpa_backend": "efficient"}, "sdpa_backend=efficient needs a CUDA device"),
        ({"activation_memory_budget": 0.5}, "activation_memory_budget needs torch_compile: true"),
    ],
)
def test_speed_switches_this_run_cannot_use_are_one_clear_error(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_trainer(tmp_path, max_steps=1, **overrides).train()
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing written


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sdpa_backend": "fast"}, "sdpa_backend must be one of"),
        ({"activation_memory_budget": 0.0}, "activation_memory_budget must be in (0, 1] or None"),
        ({"activation_memory_budget": 1.5}, "activation_memory_budget must be in (0, 1] or None"),
    ],
)
def test_speed_switch_values_are_checked(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainingArguments(output_dir=str(tmp_path), **overrides)


@pytest.mark.slow
def test_activation_memory_budget_reaches_the_compiled_partitioner(tmp_path):
    """With `torch_compile` (here aot_eager_decomp_partition: the min-cut partitioner inductor
    uses, without code generation) the budget is torch's while the graph is compiled and run;
    recomputing activations changes no loss."""
    plain = make_trainer(tmp_path / "a", max_steps=3).train()
    seen = RecordsTorchSettings()
    budgeted = make_trainer(
        tmp_path / "b",
        callbacks=[seen],
        max_steps=3,
        torch_compile=True,
        torch_compile_backend="aot_eager_decomp_partition",
        activation_memory_budget=0.3,
    ).train()
    assert [s["budget"] for s in seen.seen] == [0.3] * 3
    assert torch_settings()["budget"] == 1.0
    losses = [[r["loss"] for r in state.log_history if "loss" in r] for state in (plain, budgeted)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("model_init", "depth"), [(tiny_forgather, 4), (tiny_llama, 2)])
def test_regional_compile_compiles_the_blocks_in_place_once_and_trains_the_same(
    tmp_path, model_init, depth
):
    """`torch_compile_scope: blocks` compiles each repeated block in place (the model is not
    wrapped; checkpoints keep their names), the blocks share one compiled graph (a Hugging Face
    model too: the trainer turns its KV cache off, which would specialise each block to its
    layer), and the losses are those of the eager run."""
    from torch._dynamo.utils import counters

    from forgather.ml.unwrap import transformer_blocks

    plain = make_trainer(tmp_path / "a", model_init=model_init, max_steps=3).train()
    torch._dynamo.reset()
    counters.clear()
    trainer = make_trainer(
        tmp_path / "b",
        model_init=model_init,
        max_steps=3,
        torch_compile=True,
        torch_compile_backend="eager",
        torch_compile_scope="blocks",
    )
    regional = trainer.train()
    blocks = transformer_blocks(trainer.model)
    assert len(blocks) == depth and all(b._compiled_call_impl is not None for b in blocks)
    assert trainer.wrapped_model is trainer.model  # not an OptimizedModule around it
    assert counters["stats"]["unique_graphs"] == 1  # one graph for all blocks
    losses = [[r["loss"] for r in state.log_history if "loss" in r] for state in (plain, regional)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_regional_compile_of_a_model_without_blocks_is_one_clear_error(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, torch_compile=True, torch_compile_scope="blocks"
    )
    trainer = Trainer(args=args, model=model, train_dataset=ProgressionDataset(8))
    with pytest.raises(ValueError, match="torch_compile_scope=blocks: Sequential has no repeated"):
        trainer.train()
    assert not (tmp_path / "checkpoints").exists()


def test_a_torch_scheduler_partial_from_a_config_is_a_scheduler_factory(tmp_path):
    """`lr_scheduler_factory: !partial:torch.optim.lr_scheduler:StepLR` works: a factory that takes
    no `num_training_steps` is called with the optimizer alone."""
    from forgather.config.graph import load_config_string
    from forgather.config.materialize import materialize

    text = "scheduler: !partial:torch.optim.lr_scheduler:StepLR\n  step_size: 2\n  gamma: 0.5\n"
    factory = materialize(load_config_string(text).target("scheduler"))
    trainer = make_trainer(tmp_path, max_steps=5, warmup_steps=0, learning_rate=0.08)
    trainer.lr_scheduler_factory = factory
    state = trainer.train()
    assert type(trainer.lr_scheduler).__name__ == "StepLR"
    rates = [r["learning_rate"] for r in state.log_history if "learning_rate" in r]
    assert rates == pytest.approx([0.08, 0.08, 0.04, 0.04, 0.02][: len(rates)]) and len(rates) == 5


SEQUENTIAL = """\
scheduler: !partial:forgather.ml.optim:sequential_lr_factory
    schedulers:
        - !partial:torch.optim.lr_scheduler:LinearLR { start_factor: 0.25, total_iters: 2 }
        - !partial:forgather.ml.optim:get_lr_scheduler { name: linear }
    milestones: [ 2 ]
"""


def test_sequential_lr_factory_chains_schedulers_and_resumes_exactly(tmp_path):
    """A torch warm-up (no num_training_steps) then forgather's linear decay over the remaining
    steps (given its own segment's length), from a config; the chain checkpoints and resumes."""
    from forgather.config.graph import load_config_string
    from forgather.config.materialize import materialize

    def run(output, max_steps, **overrides):
        trainer = make_trainer(
            tmp_path / output, max_steps=max_steps, warmup_steps=0, learning_rate=0.08,
            save_strategy="steps", save_steps=3, **overrides,
        )  # fmt: skip
        trainer.lr_scheduler_factory = materialize(
            load_config_string(SEQUENTIAL).target("scheduler")
        )
        state = trainer.train()
        assert type(trainer.lr_scheduler).__name__ == "SequentialLR"
        return [r["learning_rate"] for r in state.log_history if "learning_rate" in r]

    straight = run("a", 6)
    # steps 1-2: LinearLR from 0.25x to 1x over 2 steps; then 1 - k/4 of 0.08 over the last 4
    assert straight == pytest.approx([0.02, 0.05, 0.08, 0.06, 0.04, 0.02])
    assert run(
        "a",
        6,
        resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoints" / "checkpoint-3"),
        overwrite_output_dir=False,
    )[-3:] == pytest.approx(straight[-3:])


def test_sequential_lr_factory_names_a_milestone_mismatch():
    import torch

    from forgather.ml.optim import sequential_lr_factory

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    steps = torch.optim.lr_scheduler.StepLR
    with pytest.raises(ValueError, match="2 schedulers need 1 milestones, got 2"):
        sequential_lr_factory(optimizer, [lambda optimizer: steps(optimizer, 1)] * 2, [1, 2])
    with pytest.raises(ValueError, match="milestones must be positive and increasing"):
        sequential_lr_factory(optimizer, [lambda optimizer: steps(optimizer, 1)] * 3, [3, 2])
