"""FLOPs per token, the peak table, MFU and the speed callback."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from forgather.ml.train.callbacks.speed import SpeedMetricsCallback
from forgather.ml.train.flops import (
    PEAK_FLOPS,
    device_peak_flops,
    flops_per_token,
    model_matmul_params,
    peak_flops_for_name,
)
from forgather.ml.train.state import TrainerControl
from forgather.ml.train.throughput import ThroughputMeter

from .conftest import make_args, make_state, tiny_llama_config

pytestmark = pytest.mark.unit


def test_flops_per_token_matches_a_hand_count_for_a_tiny_llama_config():
    config = tiny_llama_config()  # d=32, ffn=64, L=2, 4 heads of 8, 2 kv heads, vocab 300
    per_layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64  # q k v o + gate up down
    n = 2 * per_layer + 32 * 300  # + LM head; the input embedding is a lookup
    assert n == 28032
    assert flops_per_token(config, 128) == 6 * n + 12 * 2 * 32 * 128
    assert flops_per_token(config) == 6 * n  # no sequence length: no attention term


def test_flops_per_token_for_llama2_7b_counts_6_6_billion_matmul_parameters():
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    )
    n = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 32000
    assert n == 6_607_077_376
    assert flops_per_token(config, 4096) == 6 * n + 12 * 32 * 4096 * 4096


@pytest.mark.parametrize("tied", [False, True])
def test_flops_per_token_of_a_llama_model_equals_that_of_its_config(tied):
    config = tiny_llama_config(tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    assert model_matmul_params(model) == 28032  # tied or not, the LM head counts once
    assert flops_per_token(model, 64) == flops_per_token(config, 64)


def test_flops_per_token_of_a_gpt2_model_equals_that_of_its_config():
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    n = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 64 * 100  # ungated MLP of 4d
    assert flops_per_token(config, 32) == 6 * n + 12 * 2 * 64 * 32
    assert flops_per_token(GPT2LMHeadModel(config), 32) == flops_per_token(config, 32)


def test_flops_per_token_of_a_generic_model_counts_its_matmul_weights():
    model = torch.nn.Sequential(
        torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32)
    )
    assert flops_per_token(model) == 6 * 16 * 32  # embedding, biases and norm left out
    assert flops_per_token(model, 10, num_layers=1, attention_width=16) == 6 * 512 + 12 * 16 * 10
    assert flops_per_token(1000) == 6000


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 3090", "RTX 3090"),
    ],
)
def test_peak_table_matches_device_names(name, key):
    assert peak_flops_for_name(name) == PEAK_FLOPS[key]


def test_mfu_is_none_on_cpu():
    assert device_peak_flops("cpu") is None
    assert device_peak_flops(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        assert device_peak_flops() is None
    assert peak_flops_for_name("Intel(R) Xeon(R) CPU") is None


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_throughput_meter_rates_and_mfu_over_an_interval():
    clock = FakeClock()
    meter = ThroughputMeter(flops_per_token=1e6, peak_flops=1e12, clock=clock)
    meter.update(tokens=4000, samples=8, steps=2)
    clock.now += 2.0
    rates = meter.measure()
    assert rates["tokens_per_second"] == 2000
    assert rates["samples_per_second"] == 4
    assert rates["steps_per_second"] == 1
    assert rates["flops_per_second"] == 2e9
    assert rates["mfu"] == pytest.approx(2e-3)
    clock.now += 1.0
    assert "tokens_per_second" not in meter.measure()  # a new interval
    assert "mfu" not in ThroughputMeter(1e6, None, clock=clock).measure()


def simulate(callback, state, control, steps, tokens_per_step, clock=None, seconds=0.5):
    for _ in range(steps):
        callback.on_step_begin(None, state, control)
        if clock is not None:
            clock.now += seconds
        state.global_step += 1
        state.num_input_tokens_seen += tokens_per_step
        callback.on_step_end(None, state, control)


def test_speed_callback_adds_tokens_per_second_and_flops_but_no_mfu_on_cpu(tmp_path):
    model = LlamaForCausalLM(tiny_llama_config())
    callback = SpeedMetricsCallback()
    state, control = make_state(effective_batch_size=8), TrainerControl()
    callback.on_train_begin(make_args(tmp_path), state, control, model=model)
    clock = FakeClock()
    callback.meter.clock = clock
    callback.meter.reset()
    simulate(callback, state, control, 10, 8 * 64, clock)
    logs = {"loss": 1.0}
    callback.on_log(None, state, control, logs=logs)
    assert logs["tokens_per_second"] == pytest.approx(8 * 64 / 0.5)
    assert logs["samples_per_second"] == pytest.approx(8 / 0.5)
    assert logs["flops_per_token"] == flops_per_token(model, 64)  # seq len = tokens / samples
    assert "mfu" not in logs
    eval_logs = {"eval_loss": 1.0}
    callback.on_log(None, state, control, logs=eval_logs)
    assert eval_logs == {"eval_loss": 1.0}


def test_speed_callback_computes_mfu_with_a_peak_and_skips_eval_time(tmp_path):
    model = LlamaForCausalLM(tiny_llama_config())
    callback = SpeedMetricsCallback(seq_len=64, peak_flops=1e9)
    state, control = make_state(effective_batch_size=8, world_size=2), TrainerControl()
    callback.on_train_begin(make_args(tmp_path), state, control, model=model)
    clock = FakeClock()
    callback.meter.clock = clock
    callback.meter.reset()
    simulate(callback, state, control, 4, 0, clock)  # no token count: samples x seq_len
    callback.on_evaluate(None, state, control, metrics={})
    clock.now += 100.0  # evaluation time is not training time
    simulate(callback, state, control, 4, 0, clock)
    logs = {"loss": 1.0}
    callback.on_log(None, state, control, logs=logs)
    tokens_per_second = 8 * 8 * 64 / 4.0
    assert logs["tokens_per_second"] == pytest.approx(tokens_per_second)
    fpt = flops_per_token(model, 64)
    assert logs["mfu"] == pytest.approx(fpt * tokens_per_second / (1e9 * 2))
