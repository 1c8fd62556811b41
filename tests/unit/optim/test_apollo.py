"""APOLLO / APOLLO-Mini against the paper's algorithm written out by hand, the subspace projectors,
exact resume (including the projectors' state), the AdamW fallback, and a small training run."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from forgather.ml.optim.apollo import Apollo, apollo_mini
from forgather.ml.optim.projectors import OnlinePCAProjector, Projector, RandProjector
from tests.unit.optim._stepping import StepEach

pytestmark = pytest.mark.unit

F64 = torch.float64


class FixedProjector(Projector):
    """A projector whose matrix is given (for the hand-worked references)."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(matrix.shape[0], update_interval=10_000)
        self.fixed = matrix

    def _refresh(self, grad):
        self.matrix = self.fixed.to(grad.dtype)


def fixed(matrix):
    return lambda **_: FixedProjector(matrix)


def reference_apollo(w, grads, P, *, lr, betas, eps, wd, scale, channel, gamma=1.01):
    """Algorithm 1 of the paper for one matrix, element by element where it matters.
    Returns the weights after each step and whether the limiter fired at each step."""
    b1, b2 = betas
    rows, cols = w.shape
    m = v = torch.zeros(())
    previous = None
    weights, limited = [], []
    for t, g in enumerate(grads, start=1):
        left = rows <= cols
        R = P @ g if left else g @ P.T  # r x n, or m x r
        m = b1 * m + (1 - b1) * R
        v = b2 * v + (1 - b2) * R * R
        R_tilde = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps)
        if not channel:
            update = g * (R_tilde.norm() / (R.norm() + 1e-8))
        elif left:  # channels are columns: s_j = ||R~[:, j]|| / ||R[:, j]||
            s = torch.stack([R_tilde[:, j].norm() / (R[:, j].norm() + 1e-8) for j in range(cols)])
            update = g @ torch.diag(s)
        else:  # channels are rows
            s = torch.stack([R_tilde[i, :].norm() / (R[i, :].norm() + 1e-8) for i in range(rows)])
            update = torch.diag(s) @ g
        fire = previous is not None and update.norm() > gamma * previous
        if fire:
            update = update * (gamma * previous / update.norm())
        limited.append(bool(fire))
        previous = update.norm()
        w = w - lr * wd * w - lr * scale * update
        weights.append(w)
    return weights, limited


def run_optimizer(optimizer_cls, w0, grads, **kwargs):
    param = nn.Parameter(w0.clone())
    optimizer = optimizer_cls([param], **kwargs)
    weights = []
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
        weights.append(param.detach().clone())
    return weights, optimizer


def _grads(shape, scales, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=F64) * s for s in scales]


@pytest.mark.parametrize("shape", [(4, 3), (3, 5)])
def test_apollo_matches_the_algorithm_by_hand(shape):
    generator = torch.Generator().manual_seed(1)
    w0 = torch.randn(shape, generator=generator, dtype=F64)
    P = torch.randn(2, min(shape), generator=generator, dtype=F64) / math.sqrt(2)
    grads = _grads(shape, [1.0, 1.0, 6.0])  # the big third gradient trips the limiter
    settings = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    expected, limited = reference_apollo(
        w0, grads, P, lr=0.05, betas=(0.8, 0.95), eps=1e-6, wd=0.1, scale=1.5, channel=True
    )
    assert limited[2], "the test should exercise the norm-growth limiter"
    got, _ = run_optimizer(Apollo, w0, grads, **settings, rank=2, projector=fixed(P), scale=1.5)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (5, 2)])
def test_apollo_mini_matches_the_algorithm_by_hand(shape):
    generator = torch.Generator().manual_seed(2)
    w0 = torch.randn(shape, generator=generator, dtype=F64)
    P = torch.randn(1, min(shape), generator=generator, dtype=F64)
    grads = _grads(shape, [1.0, 0.5, 2.0], seed=3)
    # the third gradient is nearly invisible to the sketch: a large ratio trips the limiter
    left = shape[0] <= shape[1]
    hidden = P.T @ (P @ grads[2]) if left else (grads[2] @ P.T) @ P
    grads[2] = grads[2] - 0.95 * hidden / P.norm() ** 2
    settings = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, wd=0.0, scale=math.sqrt(128))
    expected, limited = reference_apollo(w0, grads, P, **settings, channel=False)
    assert limited[2]
    got, optimizer = run_optimizer(apollo_mini, w0, grads, lr=0.01, projector=fixed(P))
    group = optimizer.param_groups[0]
    assert (group["rank"], group["scale_type"], group["scale"]) == (1, "tensor", math.sqrt(128))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_the_limiter_caps_norm_growth_at_gamma_and_can_be_turned_off():
    shape = (6, 8)
    grads = _grads(shape, [1.0, 1.0, 50.0, 50.0], seed=4)
    w0 = torch.zeros(shape, dtype=F64)
    for limit in (1.01, None):
        weights, optimizer = run_optimizer(
            Apollo, w0, grads, lr=1.0, rank=2, norm_growth_limit=limit
        )
        deltas = [b - a for a, b in zip([w0, *weights], weights, strict=False)]
        growth = deltas[2].norm() / deltas[1].norm()
        if limit is None:
            assert growth > 2
        else:
            assert growth == pytest.approx(1.01, rel=1e-9)
            state = optimizer.state[optimizer.param_groups[0]["params"][0]]
            assert state["update_norm"] == pytest.approx(deltas[3].norm().item(), rel=1e-9)


def test_unprojected_parameters_get_torch_adamw():
    generator = torch.Generator().manual_seed(5)
    params = [torch.randn(4, 6, generator=generator), torch.randn(7, generator=generator)]
    ours_params = [nn.Parameter(p.clone()) for p in params]
    theirs_params = [nn.Parameter(p.clone()) for p in params]
    settings = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    ours = Apollo([{"params": ours_params, "projector": None}], **settings)
    theirs = torch.optim.AdamW(theirs_params, **settings, foreach=False)
    for _ in range(4):
        for a, b in zip(ours_params, theirs_params, strict=True):
            grad = torch.randn(a.shape, generator=generator)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    for a, b in zip(ours_params, theirs_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_default_rule_projects_matrices_only():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    optimizer = Apollo(model.parameters(), rank=2)
    model(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    weight, bias = model[0].weight, model[0].bias
    assert optimizer.state[weight]["exp_avg"].shape == (8, 2)  # 8 x 6: projected along the 6
    assert optimizer.state[model[2].weight]["exp_avg"].shape == (2, 8)  # 4 x 8: along the 4
    assert optimizer.state[bias]["exp_avg"].shape == bias.shape  # AdamW


# --- resume and rebuild ---------------------------------------------------------------------


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1)
    )
    return model.to(dtype)


def _groups(model, projector, rank=3):
    matrices = [model[0].weight, model[2].weight]
    rest = [p for p in model.parameters() if all(p is not m for m in matrices)]
    return [
        {"params": matrices, "projector": projector, "rank": rank, "update_interval": 3},
        {"params": rest, "projector": None, "weight_decay": 0.0},
    ]


def _train(model, optimizer, steps, start=0):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(16, 10, generator=generator).to(model[0].weight.dtype)
        y = x[:, :3].sum(dim=1, keepdim=True)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    return loss.item()


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("projector", ["random", "online_pca"])
def test_resume_is_bit_exact(projector, dtype):
    settings = dict(lr=0.01, weight_decay=0.05)
    whole = _model(dtype=dtype)
    whole_opt = Apollo(_groups(whole, projector), **settings)
    _train(whole, whole_opt, 12)

    first = _model(dtype=dtype)
    first_opt = Apollo(_groups(first, projector), **settings)
    _train(first, first_opt, 7)  # a refresh at steps 0, 3, 6, 9: resumed mid-interval
    saved_model = copy.deepcopy(first.state_dict())
    saved_opt = _roundtrip(first_opt.state_dict())
    if projector == "online_pca":
        assert any("proj_matrix" in s for s in saved_opt["state"].values())

    second = _model(seed=99, dtype=dtype)
    second.load_state_dict(saved_model)
    second_opt = Apollo(_groups(second, projector), **settings)
    second_opt.load_state_dict(saved_opt)
    _train(second, second_opt, 5, start=7)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_through_torch_distributed_checkpoint_helpers():
    whole = _model()
    whole_opt = Apollo(_groups(whole, "online_pca"), lr=0.01)
    _train(whole, whole_opt, 9)

    first = _model()
    first_opt = Apollo(_groups(first, "online_pca"), lr=0.01)
    _train(first, first_opt, 5)
    saved = copy.deepcopy(get_optimizer_state_dict(first, first_opt))

    second = _model(seed=7)
    second.load_state_dict(first.state_dict())
    second_opt = Apollo(_groups(second, "online_pca"), lr=0.01)
    before = [p.detach().clone() for p in second.parameters()]
    template = get_optimizer_state_dict(second, second_opt)  # lazy init: a zero-grad, lr-0 step
    assert all(torch.equal(a, b) for a, b in zip(before, second.parameters(), strict=True))
    assert set(template["state"]) == set(saved["state"])
    set_optimizer_state_dict(second, second_opt, saved)
    _train(second, second_opt, 4, start=5)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("projector", ["random", "online_pca"])
def test_an_optimizer_rebuilt_per_parameter_takes_the_same_steps(projector):
    whole = _model()
    whole_opt = Apollo(_groups(whole, projector), lr=0.01)
    split = _model()
    template = Apollo(_groups(split, projector), lr=0.01)
    per_param = [
        type(template)([{**{k: v for k, v in group.items() if k != "params"}, "params": [p]}])
        for group in template.param_groups
        for p in group["params"]
    ]

    _train(whole, whole_opt, 7)
    _train(split, StepEach(per_param), 7)
    for a, b in zip(whole.parameters(), split.parameters(), strict=True):
        assert torch.equal(a, b)


def test_group_lr_is_honoured():
    model = _model()
    optimizer = Apollo(_groups(model, "random"), lr=0.01, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, optimizer, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    scheduler.step()
    assert all(group["lr"] == 0.0 for group in optimizer.param_groups)


# --- training ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda groups: Apollo(groups, lr=0.01),
        lambda groups: Apollo(
            [{**g, "projector": "online_pca" if g["projector"] else None} for g in groups], lr=0.01
        ),
        lambda groups: apollo_mini([{**g, "rank": 1} for g in groups], lr=0.003),
    ],
    ids=["apollo", "apollo_online_pca", "apollo_mini"],
)
def test_a_small_regression_trains(make):
    model = _model()
    optimizer = make(_groups(model, "random"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=generator)
    y = torch.sin(x[:, :3].sum(dim=1, keepdim=True))
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        for chunk in range(2):  # gradient accumulation over two micro-batches
            part = slice(chunk * 32, (chunk + 1) * 32)
            loss = nn.functional.mse_loss(model(x[part]), y[part]) / 2
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(nn.functional.mse_loss(model(x), y).item())
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.3 * losses[0]


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"rank": 7}, "rank"),
        ({"rank": 0}, "rank"),
        ({"scale_type": "row"}, "scale_type"),
        ({"scale": 0.0}, "scale"),
        ({"projector": "svd"}, "projector"),
        ({"update_interval": 0}, "update_interval"),
        ({"norm_growth_limit": 0.9}, "norm_growth_limit"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"lr": -1.0}, "lr"),
        ({"eps": -1.0}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        Apollo([nn.Parameter(torch.zeros(6, 9))], **kwargs)


def test_rank_above_the_dimension_is_fine_for_unprojected_groups():
    Apollo([{"params": [nn.Parameter(torch.zeros(2, 9))], "projector": None}], rank=7)
    Apollo([nn.Parameter(torch.zeros(9))], rank=7)  # 1-D: AdamW


# --- projectors ----------------------------------------------------------------------------


def test_rand_projector_is_scaled_so_the_expected_gram_is_the_identity():
    rank, dim = 4, 6
    draws = [RandProjector.draw(0, k, (dim, 50), rank) for k in range(2000)]
    mean = sum(p.T @ p for p in draws) / len(draws)
    torch.testing.assert_close(mean, torch.eye(dim), atol=0.08, rtol=0)
    # a high-rank sketch keeps column norms (Johnson-Lindenstrauss)
    grad = torch.randn(64, 200, generator=torch.Generator().manual_seed(0))
    sketch = RandProjector(48).project(grad)
    ratio = sketch.norm(dim=0) / grad.norm(dim=0)
    assert sketch.shape == (48, 200)
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.05)


def test_rand_projector_refreshes_on_schedule_and_resumes_exactly():
    grad = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    projector = RandProjector(2, update_interval=3, seed=11)
    sketches = [projector.project(grad) for _ in range(7)]
    assert torch.equal(sketches[0], sketches[2]) and not torch.equal(sketches[2], sketches[3])
    assert torch.equal(sketches[3], sketches[5]) and not torch.equal(sketches[5], sketches[6])
    resumed = RandProjector(2, update_interval=3, seed=0)
    partial = RandProjector(2, update_interval=3, seed=11)
    for _ in range(4):
        partial.project(grad)
    resumed.load_state_dict(partial.state_dict())
    assert resumed.seed == 11 and resumed.steps == 4
    assert torch.equal(resumed.project(grad), sketches[4])
    assert not torch.equal(RandProjector(2, 3, seed=12).project(grad), sketches[0])
    # tall gradients are projected from the right; project_back restores the shape
    tall = RandProjector(2).project(grad.T)
    assert tall.shape == (8, 2)


def test_project_back_is_the_transpose_map():
    generator = torch.Generator().manual_seed(1)
    for shape in [(4, 9), (9, 4)]:
        grad = torch.randn(shape, generator=generator, dtype=F64)
        projector = OnlinePCAProjector(4)  # rank = the smaller dimension: a full orthonormal basis
        torch.testing.assert_close(projector.project_back(projector.project(grad)), grad)
    with pytest.raises(ValueError, match="rank"):
        RandProjector(5).project(grad)


def _planted(rows, cols, basis, generator, noise=1e-3):
    coefficients = torch.randn(basis.shape[1], cols, generator=generator, dtype=F64)
    scales = torch.tensor([10.0, 6.0, 3.0], dtype=F64)[:, None]
    return basis @ (scales * coefficients) + noise * torch.randn(
        rows, cols, generator=generator, dtype=F64
    )


def _distance(projector_matrix, basis):
    return (projector_matrix.T @ projector_matrix - basis @ basis.T).norm().item()


def test_online_pca_recovers_a_planted_subspace():
    generator = torch.Generator().manual_seed(2)
    rows, cols, rank = 12, 40, 3
    basis, _ = torch.linalg.qr(torch.randn(rows, rank, generator=generator, dtype=F64))
    # first gradient pure noise, so the initial SVD basis is unrelated: the power steps must find it
    projector = OnlinePCAProjector(rank, update_interval=1, power_iters=1)
    projector.project(torch.randn(rows, cols, generator=generator, dtype=F64))
    assert _distance(projector.matrix, basis) > 1.0
    for _ in range(25):
        projector.project(_planted(rows, cols, basis, generator))
    assert _distance(projector.matrix, basis) < 1e-3
    # rows stay orthonormal; the tall orientation tracks the column space of G.T
    torch.testing.assert_close(projector.matrix @ projector.matrix.T, torch.eye(rank, dtype=F64))
    tall = OnlinePCAProjector(rank, update_interval=5)
    sketch = tall.project(_planted(rows, cols, basis, generator).T)
    assert sketch.shape == (cols, rank) and _distance(tall.matrix, basis) < 1e-3
    # resume: the saved basis and step count reproduce the next sketches
    resumed = OnlinePCAProjector(rank, update_interval=1)
    resumed.load_state_dict(copy.deepcopy(projector.state_dict()))
    grad = _planted(rows, cols, basis, generator)
    assert torch.equal(resumed.project(grad), projector.project(grad))


def test_projector_settings_are_validated():
    with pytest.raises(ValueError, match="rank"):
        RandProjector(0)
    with pytest.raises(ValueError, match="update_interval"):
        OnlinePCAProjector(2, update_interval=0)
    with pytest.raises(ValueError, match="power_iters"):
        OnlinePCAProjector(2, power_iters=0)
    with pytest.raises(ValueError, match="seed"):
        RandProjector(2, seed="x")  # type: ignore[arg-type]
