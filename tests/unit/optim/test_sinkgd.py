"""SinkGD: the Sinkhorn normalisation's row/column norms, a step worked by hand, statelessness, the
AdamW fallback, exact resume, and a small training run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from forgather.ml.optim.sinkgd import SinkGD, sinkhorn_normalize
from tests.unit.optim._stepping import StepEach

pytestmark = pytest.mark.unit

F64 = torch.float64


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (7, 7)])
def test_rows_and_columns_reach_their_target_norms(shape):
    rows, cols = shape
    generator = torch.Generator().manual_seed(0)
    row_scales = torch.rand(rows, 1, generator=generator, dtype=F64)
    col_scales = torch.rand(1, cols, generator=generator, dtype=F64)
    grad = torch.randn(shape, generator=generator, dtype=F64) * row_scales * col_scales * 10
    errors = []
    for iters in (1, 2, 4, 8, 16):
        x = sinkhorn_normalize(grad, iters)
        # the last pass normalises columns: exact; rows converge with the number of passes
        torch.testing.assert_close(x.norm(dim=0), torch.full((cols,), math.sqrt(rows), dtype=F64))
        errors.append((x.norm(dim=1) - math.sqrt(cols)).abs().max().item())
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-4
    assert errors[0] > 1e-3  # the test is not trivial


def test_an_update_matches_a_hand_computation():
    generator = torch.Generator().manual_seed(1)
    w0 = torch.randn(3, 4, generator=generator, dtype=F64)
    grad = torch.randn(3, 4, generator=generator, dtype=F64)
    lr, wd, iters = 0.1, 0.2, 2

    x = grad.clone()
    for _ in range(iters):
        for i in range(3):  # each row to l2 norm sqrt(4)
            x[i, :] = x[i, :] * 2.0 / math.sqrt(sum(x[i, j] ** 2 for j in range(4)))
        for j in range(4):  # each column to l2 norm sqrt(3)
            x[:, j] = x[:, j] * math.sqrt(3) / math.sqrt(sum(x[i, j] ** 2 for i in range(3)))
    expected = w0 - lr * wd * w0 - lr * x

    param = nn.Parameter(w0.clone())
    optimizer = SinkGD([param], lr=lr, weight_decay=wd, sinkhorn_iters=iters)
    param.grad = grad.clone()
    optimizer.step()
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)


def test_matrices_keep_no_state_and_the_rest_gets_torch_adamw():
    generator = torch.Generator().manual_seed(2)
    shapes = [(5, 4), (4,), (4, 3)]
    params = [nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    reference = [nn.Parameter(p.detach().clone()) for p in params]
    settings = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    optimizer = SinkGD(
        [{"params": params[:2]}, {"params": params[2:], "sinkhorn": False}], **settings
    )
    adamw = torch.optim.AdamW(reference[1:], **settings, foreach=False)
    for _ in range(3):
        for a, b in zip(params, reference, strict=True):
            grad = torch.randn(a.shape, generator=generator)
            a.grad, b.grad = grad.clone(), grad.clone()
        optimizer.step()
        adamw.step()
    state = optimizer.state_dict()["state"]
    assert set(state[0]) == {"step"}  # the SinkGD matrix: a step count, no tensor of its size
    assert state[0]["step"].numel() == 1
    assert set(state[1]) == set(state[2]) == {"step", "exp_avg", "exp_avg_sq"}
    for a, b in zip(params[1:], reference[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_zero_gradients_give_no_nan():
    # torch's distributed-checkpoint helpers create lazy state with a zero-gradient, lr-0 step
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    optimizer = SinkGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    get_optimizer_state_dict(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert torch.equal(sinkhorn_normalize(torch.zeros(3, 4)), torch.zeros(3, 4))


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1))


def _train(model, optimizer, steps, start=0, scheduler=None):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=generator)
    y = torch.sin(x[:, :3].sum(dim=1, keepdim=True))
    losses = []
    for step in range(start, start + steps):
        part = slice((step % 2) * 32, (step % 2 + 1) * 32)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x[part]), y[part]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(nn.functional.mse_loss(model(x), y).item())
    return losses


def test_a_small_regression_trains():
    model = _model()
    optimizer = SinkGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
    losses = _train(model, optimizer, 150, scheduler=scheduler)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.3 * losses[0]


def test_resume_and_per_parameter_rebuild_are_exact():
    whole = _model()
    whole_opt = SinkGD(whole.parameters(), lr=0.01, weight_decay=0.1)
    _train(whole, whole_opt, 10)

    first = _model()
    first_opt = SinkGD(first.parameters(), lr=0.01, weight_decay=0.1)
    _train(first, first_opt, 6)
    saved = copy.deepcopy(first_opt.state_dict())
    second = _model(seed=3)
    second.load_state_dict(first.state_dict())
    settings = {k: v for k, v in first_opt.param_groups[0].items() if k != "params"}
    per_param = [type(first_opt)([{**settings, "params": [p]}]) for p in second.parameters()]
    group = {**saved["param_groups"][0], "params": [0]}
    for index, opt in enumerate(per_param):
        if index in saved["state"]:
            opt.load_state_dict({"state": {0: saved["state"][index]}, "param_groups": [group]})

    _train(second, StepEach(per_param), 4, start=6)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_group_lr_is_honoured():
    model = _model()
    optimizer = SinkGD(model.parameters(), lr=0.01, weight_decay=0.1)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, optimizer, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"sinkhorn_iters": 0}, "sinkhorn_iters"),
        ({"sinkhorn_iters": 2.0}, "sinkhorn_iters"),
        ({"sinkhorn": "yes"}, "sinkhorn"),
        ({"lr": -0.1}, "lr"),
        ({"betas": (1.0, 0.9)}, "betas"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        SinkGD([nn.Parameter(torch.zeros(3, 4))], **kwargs)
