"""PeakMemoryCallback and TextSampleCallback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from forgather.ml.train.callbacks.logging import JsonLinesLogger, TensorBoardLogger
from forgather.ml.train.callbacks.memory import PeakMemoryCallback
from forgather.ml.train.callbacks.textgen import TextSampleCallback, sample_loop
from forgather.ml.train.state import TrainerControl

from .conftest import make_args, make_state, tiny_llama_config

pytestmark = pytest.mark.unit


def test_peak_memory_on_cpu_logs_the_rss_peak_of_the_interval(tmp_path):
    callback = PeakMemoryCallback()
    state, control = make_state(), TrainerControl()
    callback.on_train_begin(make_args(tmp_path), state, control, model=torch.nn.Linear(2, 2))
    assert callback.device is None  # CPU: no CUDA counters
    big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB while the step runs
    callback.on_step_end(None, state, control)
    del big
    logs = {"loss": 1.0}
    callback.on_log(None, state, control, logs=logs)
    assert logs["memory_rss_peak_gb"] > 64 / 1024
    assert logs["memory_rss_max_gb"] >= logs["memory_rss_peak_gb"] * 0.99
    eval_logs = {"eval_loss": 1.0}
    callback.on_log(None, state, control, logs=eval_logs)
    assert eval_logs == {"eval_loss": 1.0}


class LogitsOnly(torch.nn.Module):
    """A model without generate(): always predicts token `favourite` next."""

    def __init__(self, vocab: int, favourite: int):
        super().__init__()
        self.vocab, self.favourite = vocab, favourite
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favourite] = 1.0
        return (logits,)


def test_sample_loop_decodes_greedily_from_logits():
    model = LogitsOnly(10, 7)
    out = sample_loop(model, torch.tensor([[1, 2]]), 5, eos_token_id=None)
    assert out.tolist() == [[7] * 5]
    assert sample_loop(model, torch.tensor([[1]]), 5, eos_token_id=7).tolist() == [[7]]


def test_text_samples_without_generate_go_to_log_history_and_jsonl(tmp_path, tokenizer):
    favourite = tokenizer.convert_tokens_to_ids("cat")
    if favourite is None or favourite == tokenizer.unk_token_id:
        favourite = tokenizer("cat")["input_ids"][0]
    model = LogitsOnly(len(tokenizer), favourite)
    out = io.StringIO()
    args, state, control = make_args(tmp_path), make_state(), TrainerControl()
    samples_cb = TextSampleCallback(["the"], max_new_tokens=3, output=out)
    logger = JsonLinesLogger()
    kwargs = {"model": model, "processing_class": tokenizer}
    logger.on_train_begin(args, state, control, **kwargs)
    state.global_step = 50
    metrics = {"eval_loss": 1.0}
    samples_cb.on_evaluate(args, state, control, metrics=metrics, **kwargs)
    logger.on_evaluate(args, state, control, metrics=metrics, **kwargs)
    logger.on_train_end(args, state, control, **kwargs)

    record = state.log_history[-1]
    assert record["step"] == 50
    assert record["samples"][0]["prompt"] == "the"
    completion = tokenizer.decode([favourite] * 3)
    assert record["samples"][0]["text"] == completion
    assert "samples at step 50:" in out.getvalue()
    lines = (Path(args.logging_dir) / "trainer_logs.jsonl").read_text().splitlines()
    written = [json.loads(line) for line in lines]
    assert any(r.get("samples") == record["samples"] for r in written)


def test_text_samples_with_generate_reach_tensorboard_and_leave_rng_alone(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer)))
    model.train()
    args, state, control = make_args(tmp_path), make_state(), TrainerControl()
    samples_cb = TextSampleCallback(
        ["the cat", "a dog"],
        max_new_tokens=4,
        generation_kwargs={"do_sample": True, "top_k": 5},
        print_samples=False,
    )
    tb = TensorBoardLogger()
    kwargs = {"model": model, "processing_class": tokenizer}
    tb.on_train_begin(args, state, control, **kwargs)
    state.global_step = 10
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    samples_cb.on_evaluate(args, state, control, metrics={"eval_loss": 1.0}, **kwargs)
    assert torch.equal(torch.rand(3), expected_next)  # generation did not use the global RNG
    assert model.training  # training mode restored
    tb.on_train_end(args, state, control, **kwargs)

    samples = state.log_history[-1]["samples"]
    assert [s["prompt"] for s in samples] == ["the cat", "a dog"]
    assert all(isinstance(s["text"], str) for s in samples)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(args.logging_dir, size_guidance={"tensors": 0})
    acc.Reload()
    tag = next(t for t in acc.Tags()["tensors"] if t.startswith("samples"))
    text = acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert "the cat" in text and "a dog" in text


def test_text_samples_only_at_the_end_when_not_every_eval(tmp_path, tokenizer):
    model = LogitsOnly(len(tokenizer), 3)
    callback = TextSampleCallback(["x"], max_new_tokens=2, every_eval=False, print_samples=False)
    args, state, control = make_args(tmp_path), make_state(), TrainerControl()
    kwargs = {"model": model, "processing_class": tokenizer}
    callback.on_evaluate(args, state, control, metrics={}, **kwargs)
    assert state.log_history == []
    callback.on_train_end(args, state, control, **kwargs)
    assert len(state.log_history) == 1
    other_rank = make_state(is_world_process_zero=False, rank=1)
    callback.on_train_end(args, other_rank, control, **kwargs)
    assert other_rank.log_history == []
