"""Multiopt: optimizers chosen by regex over parameter names, stepping and resuming as one."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from forgather.ml.optim import Adafactor, Multiopt, Muon, get_lr_scheduler, make_optimizer, multiopt
from forgather.ml.optim.in_backward import OptimizerInBackward
from tests.unit.optim._stepping import StepEach
from tests.unit.train._tiny import tiny_forgather

pytestmark = pytest.mark.unit

GROUPS = [
    {"pattern": r"embed|norm", "optimizer": functools.partial(torch.optim.AdamW, lr=1e-3)},
    {"pattern": r"mlp\.", "optimizer": functools.partial(torch.optim.SGD, lr=1e-2, momentum=0.9)},
    {"pattern": ".", "optimizer": functools.partial(Muon, lr=2e-3)},
]


def _model_and_optimizer(groups=GROUPS):
    torch.manual_seed(0)
    model = tiny_forgather()
    return model, multiopt(model.named_parameters(), groups)


def _batches(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 16), generator=generator) for _ in range(count)]


def _train(model, optimizer, batches, scheduler=None):
    losses = []
    for tokens in batches:
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def test_each_parameter_goes_to_the_first_group_whose_pattern_it_matches():
    model, optimizer = _model_and_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    adamw, sgd, muon = optimizer.optimizers
    owned = {
        type(inner).__name__: {names[id(p)] for g in inner.param_groups for p in g["params"]}
        for inner in optimizer.optimizers
    }
    assert owned["AdamW"] == {n for n in names.values() if "embed" in n or "norm" in n}
    assert owned["SGD"] == {n for n in names.values() if ".mlp." in n}
    assert owned["Muon"] == {n for n in names.values() if "self_attn" in n}
    assert optimizer.param_groups == [g for inner in (adamw, sgd, muon) for g in inner.param_groups]


def test_multiopt_steps_as_its_optimizers_would_separately():
    model, optimizer = _model_and_optimizer()
    twin = tiny_forgather()
    twin.load_state_dict(model.state_dict())
    by_name = dict(twin.named_parameters())
    separate = [
        type(inner)(
            [{**g, "params": [by_name[n] for n in _names(model, g)]} for g in inner.param_groups]
        )
        for inner in optimizer.optimizers
    ]
    batches = _batches(4)
    assert _train(model, optimizer, batches) == _train(twin, StepEach(separate), batches)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b), name


def _names(model, group):
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in group["params"]]


def test_a_schedule_scales_every_groups_own_learning_rate():
    model, optimizer = _model_and_optimizer()
    scheduler = get_lr_scheduler("linear", optimizer, 0, 10)
    _train(model, optimizer, _batches(5), scheduler)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [1e-3 * 0.5, 1e-2 * 0.5, 2e-3 * 0.5]
    )
    assert [g["lr"] for inner in optimizer.optimizers for g in inner.param_groups] == [
        g["lr"] for g in optimizer.param_groups
    ]


def test_multiopt_resumes_bit_exactly_from_one_state_dict():
    batches = _batches(6)
    straight_model, straight = _model_and_optimizer()
    straight_losses = _train(straight_model, straight, batches)

    model, optimizer = _model_and_optimizer()
    _train(model, optimizer, batches[:3])
    saved = optimizer.state_dict()
    assert len(saved["param_groups"]) == 3 and len(saved["state"]) == len(list(model.parameters()))

    resumed_model, resumed = _model_and_optimizer()
    resumed_model.load_state_dict(model.state_dict())
    resumed.load_state_dict(saved)
    for inner in resumed.optimizers:  # the inner optimizers see the loaded groups and state
        assert inner.state is resumed.state
        assert all(any(g is h for h in resumed.param_groups) for g in inner.param_groups)
    assert _train(resumed_model, resumed, batches[3:]) == straight_losses[3:]
    for (name, a), b in zip(
        resumed_model.named_parameters(), straight_model.parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_multiopt_refuses_a_parameter_no_pattern_matches_and_a_bad_regex():
    model = tiny_forgather()
    only_attention = [{"pattern": "self_attn", "optimizer": torch.optim.AdamW}]
    with pytest.raises(ValueError, match=r"no group's pattern matches 22 parameter\(s\): "
                       r"model\.embed_tokens\.weight"):  # fmt: skip
        multiopt(model.named_parameters(), only_attention)
    with pytest.raises(ValueError, match=r"pattern '\(' is not a regex"):
        multiopt(model.named_parameters(), [{"pattern": "(", "optimizer": torch.optim.AdamW}])
    with pytest.raises(ValueError, match=r"groups\[0\] lacks \['optimizer'\]"):
        multiopt(model.named_parameters(), [{"pattern": "."}])


def test_a_parameter_in_two_optimizers_is_refused():
    shared = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="in two of its optimizers"):
        Multiopt([torch.optim.SGD([shared], lr=1), torch.optim.AdamW([shared])])


def test_the_step_in_backward_splits_each_inner_optimizer_and_trains_alike():
    model, optimizer = _model_and_optimizer()
    twin, twin_optimizer = _model_and_optimizer()
    in_backward = OptimizerInBackward(twin_optimizer)
    for tokens in _batches(3):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        twin(input_ids=tokens, labels=tokens).loss.backward()  # steps in the backward pass
    assert len(in_backward.param_groups) == len(list(model.parameters()))
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_multiopt_inside_a_multiopt_is_flattened():
    model = tiny_forgather()
    groups = [
        {"pattern": "self_attn", "optimizer": functools.partial(make_optimizer, name="muon")},
        {"pattern": ".", "optimizer": torch.optim.AdamW},
    ]
    optimizer = multiopt(model.named_parameters(), groups)
    assert [type(o).__name__ for o in optimizer.optimizers] == ["Muon", "AdamW"]
    assert all(o.state is optimizer.state for o in optimizer.optimizers)


def test_fp32_state_of_bf16_weights_resumes_bit_exactly_through_multiopt_and_in_backward():
    """torch's loader casts state to the parameter's dtype; Muon's momentum and Adafactor's moments
    of bf16 weights are fp32 and must come back fp32, or the resumed run drifts."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(8, 6, generator=generator).bfloat16(), torch.randn(6).bfloat16()]
    grads = [
        [torch.randn(w.shape, generator=generator).bfloat16() for w in start] for _ in range(6)
    ]

    def build(wrap=None):
        torch.manual_seed(1)  # Adafactor draws each bf16 weight's rounding seed from it
        params = [torch.nn.Parameter(w.clone()) for w in start]
        optimizer = Multiopt(
            [
                Muon([params[0]], lr=0.01),
                Adafactor([params[1]], lr=0.01, relative_step=False, beta1=0.9),
            ]
        )
        return params, (wrap(optimizer) if wrap else optimizer)

    for wrap in (None, OptimizerInBackward):

        def steps(params, optimizer, batch):
            for grads_now in batch:
                for p, g in zip(params, grads_now, strict=True):
                    p.grad = g.clone()
                optimizer.step()

        straight, straight_opt = build(wrap)
        steps(straight, straight_opt, grads)
        first, first_opt = build(wrap)
        steps(first, first_opt, grads[:3])
        saved = copy.deepcopy(first_opt.state_dict())
        resumed, resumed_opt = build(wrap)
        with torch.no_grad():
            for p, q in zip(resumed, first, strict=True):
                p.copy_(q)
        resumed_opt.load_state_dict(saved)
        assert {
            v.dtype
            for s in resumed_opt.state.values()
            for v in s.values()
            if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1
        } == {torch.float32}
        steps(resumed, resumed_opt, grads[3:])
        for p, q in zip(resumed, straight, strict=True):
            assert torch.equal(p, q), wrap
