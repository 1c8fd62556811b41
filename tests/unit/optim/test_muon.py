"""Muon against torch's own `torch.optim.Muon`, its resume, and the hybrid `make_optimizer` builds."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.optim import OPTIMIZERS, Multiopt, Muon, make_optimizer
from forgather.ml.optim.muon import orthogonalize
from forgather.ml.train import args as training_args
from tests.unit.train._tiny import tiny_forgather

pytestmark = pytest.mark.unit

SHAPES = [(64, 32), (32, 64), (48, 48)]


def _matrices(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def _step_both(ours, theirs, params_a, params_b, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for a, b in zip(params_a, params_b, strict=True):
            grad = torch.randn(a.shape, generator=generator)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()


@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_updates_equal_torch_muon(adjust_lr, nesterov):
    start = _matrices()
    a = [torch.nn.Parameter(w.clone()) for w in start]
    b = [torch.nn.Parameter(w.clone()) for w in start]
    ours = Muon(a, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr=adjust_lr)
    theirs = torch.optim.Muon(
        b, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust_lr
    )
    _step_both(ours, theirs, a, b, steps=6)
    for x, y, w in zip(a, b, start, strict=True):
        assert not torch.equal(x, w)  # it moved
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_orthogonalize_brings_singular_values_near_one():
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(64, 32, generator=generator) @ torch.diag(torch.logspace(-1, 1, 32))
    assert torch.linalg.cond(matrix) > 100  # singular values two decades apart
    singular = torch.linalg.svdvals(orthogonalize(matrix).float())
    assert singular.min() > 0.5 and singular.max() < 1.3  # the quintic's band, not exactly 1


def test_muon_treats_a_higher_dimensional_weight_as_a_matrix_of_its_rows():
    start = torch.randn(8, 4, 3)
    conv = torch.nn.Parameter(start.clone())
    flat = torch.nn.Parameter(start.clone().view(8, 12))
    ours, reference = Muon([conv], lr=0.01), Muon([flat], lr=0.01)
    grad = torch.randn(8, 4, 3)
    conv.grad, flat.grad = grad.clone(), grad.clone().view(8, 12)
    ours.step()
    reference.step()
    assert torch.equal(conv.view(8, 12), flat)


def test_muon_refuses_vectors_and_bad_options_by_name():
    with pytest.raises(ValueError, match=r"shape \(4,\) is not a matrix.*AdamW"):
        Muon([torch.nn.Parameter(torch.zeros(4))])
    with pytest.raises(ValueError, match="Muon momentum must be in"):
        Muon([torch.nn.Parameter(torch.zeros(4, 4))], momentum=1.0)
    with pytest.raises(ValueError, match="Muon adjust_lr must be one of"):
        Muon([torch.nn.Parameter(torch.zeros(4, 4))], adjust_lr="rms")


def test_muon_resumes_bit_exactly_from_its_state_dict():
    start = _matrices()

    def fresh():
        params = [torch.nn.Parameter(w.clone()) for w in start]
        return params, Muon(params, lr=0.02, weight_decay=0.1)

    straight, straight_opt = fresh()
    first, first_opt = fresh()
    generator = torch.Generator().manual_seed(3)
    grads = [[torch.randn(w.shape, generator=generator) for w in start] for _ in range(6)]

    def step(params, optimizer, grads_now):
        for p, g in zip(params, grads_now, strict=True):
            p.grad = g.clone()
        optimizer.step()

    for grads_now in grads:
        step(straight, straight_opt, grads_now)
    for grads_now in grads[:3]:
        step(first, first_opt, grads_now)
    saved = first_opt.state_dict()
    resumed, resumed_opt = fresh()
    with torch.no_grad():
        for p, q in zip(resumed, first, strict=True):
            p.copy_(q)
    resumed_opt.load_state_dict(saved)
    for grads_now in grads[3:]:
        step(resumed, resumed_opt, grads_now)
    for p, q in zip(resumed, straight, strict=True):
        assert torch.equal(p, q)


def test_make_optimizer_muon_gives_hidden_matrices_to_muon_and_the_rest_to_adamw():
    model = tiny_forgather()
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = make_optimizer(model.named_parameters(), name="muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(optimizer, Multiopt)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert all("proj" in n for n in muon_names) and len(muon_names) == 28
    assert "model.embed_tokens.weight" in adamw_names  # the (tied) embedding and head
    assert {n for n in adamw_names if "norm" in n} == {n for n in names.values() if "norm" in n}
    decay = {names[id(p)]: g["weight_decay"] for g in adamw.param_groups for p in g["params"]}
    assert decay["model.embed_tokens.weight"] == 0.1 and decay["model.norm.weight"] == 0.0


def test_an_unknown_optimizer_name_lists_the_known_ones():
    model = tiny_forgather()
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; known: adamw, sgd, muon"):
        make_optimizer(model.named_parameters(), name="adam")


def test_the_config_checks_optimizer_names_against_the_factory():
    """`trainer_args.optim` is checked without torch: its list must be the factory's."""
    assert training_args.OPTIMIZERS == OPTIMIZERS
