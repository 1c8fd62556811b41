"""LR schedule shapes, their state_dict round trip, and the weight-decay groups of the optimizer factory."""

from __future__ import annotations

import math

import pytest
import torch

from forgather.ml.optim import (
    InfiniteSchedule,
    get_lr_scheduler,
    make_optimizer,
    make_schedule,
    weight_decay_groups,
)

pytestmark = pytest.mark.unit


def curve(name, warmup=10, total=100, steps=None, **kwargs):
    schedule = make_schedule(name, warmup, total, **kwargs)
    return [schedule(step) for step in range(steps or total)]


def test_warmup_is_linear_and_reaches_the_peak():
    for name in ("linear", "cosine", "constant", "wsd", "infinite"):
        lrs = curve(name, **({"cooldown_steps": 20} if name == "infinite" else {}))
        assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)]), name
        assert lrs[10] == pytest.approx(1.0), name


def test_linear_decays_linearly_to_min_ratio():
    lrs = curve("linear", min_lr_ratio=0.1)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)
    diffs = [a - b for a, b in zip(lrs[10:], lrs[11:], strict=False)]
    assert max(diffs) == pytest.approx(min(diffs))  # constant slope
    assert make_schedule("linear", 10, 100, min_lr_ratio=0.1)(100) == pytest.approx(0.1)


def test_cosine_is_half_a_cosine_to_min_ratio():
    lrs = curve("cosine", min_lr_ratio=0.0)
    assert lrs[55] == pytest.approx(0.5)
    assert lrs[32] > 0.5 + (55 - 32) / 90 * 0.5  # above the straight line in the first half
    assert make_schedule("cosine", 10, 100)(100) == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_warmup_stable_decay_holds_the_peak_then_decays_over_the_last_fraction():
    lrs = curve("wsd", decay_ratio=0.2, min_lr_ratio=0.0)
    assert lrs[10:80] == [1.0] * 70
    assert lrs[90] == pytest.approx(0.5)
    assert make_schedule("wsd", 10, 100, decay_ratio=0.2)(100) == pytest.approx(0.0)
    sqrt = make_schedule("wsd", 10, 100, decay_ratio=0.2, decay_shape="sqrt")
    assert sqrt(90) == pytest.approx(1 - math.sqrt(0.5))
    with pytest.raises(ValueError, match="decay shape"):
        make_schedule("wsd", 10, 100, decay_shape="zigzag")


def test_infinite_warmup_cooldown_constant_then_exponential_anneal():
    schedule = InfiniteSchedule(
        warmup_steps=10,
        cooldown_steps=20,
        constant_lr_ratio=0.25,
        annealing_start=100,
        annealing_steps=50,
        min_lr_ratio=0.01,
    )
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(20) == pytest.approx(0.25 + 0.75 * 0.5)  # half-way through the cosine cooldown
    assert [schedule(s) for s in (30, 60, 99)] == [0.25, 0.25, 0.25]
    assert schedule(100) == pytest.approx(0.25)
    assert schedule(125) == pytest.approx(0.25 * math.sqrt(0.01 / 0.25))  # geometric midpoint
    assert schedule(150) == pytest.approx(0.01)
    assert schedule(10_000) == pytest.approx(0.01)
    never_annealed = InfiniteSchedule(warmup_steps=0, cooldown_steps=10, constant_lr_ratio=0.5)
    assert never_annealed(10**9) == 0.5


def test_scheduler_state_dict_round_trip_resumes_the_same_lrs():
    def build():
        param = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.SGD([param], lr=1.0)
        return optimizer, get_lr_scheduler("wsd", optimizer, 5, 50, decay_ratio=0.3)

    optimizer, scheduler = build()
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    saved = scheduler.state_dict()
    expected = []
    for _ in range(20):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    optimizer2, scheduler2 = build()
    optimizer2.param_groups[0]["lr"] = saved["_last_lr"][0]
    scheduler2.load_state_dict(saved)
    got = []
    for _ in range(20):
        got.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        scheduler2.step()
    assert got == expected


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        make_schedule("step", 0, 10)


def test_weight_decay_groups_exclude_biases_norms_and_optionally_embeddings():
    model = torch.nn.ModuleDict(
        {
            "embed_tokens": torch.nn.Embedding(10, 4),
            "proj": torch.nn.Linear(4, 4),
            "norm": torch.nn.LayerNorm(4),
        }
    )
    groups = weight_decay_groups(model.named_parameters(), 0.1, decay_embeddings=False)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model["proj"].weight)}
    groups = weight_decay_groups(model.named_parameters(), 0.1)
    assert {id(p) for p in groups[0]["params"]} == {
        id(model["proj"].weight),
        id(model["embed_tokens"].weight),
    }
    optimizer = make_optimizer(model.named_parameters(), name="adamw", lr=0.01, weight_decay=0.1)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 0.01
    assert isinstance(make_optimizer(model.named_parameters(), name="sgd"), torch.optim.SGD)
