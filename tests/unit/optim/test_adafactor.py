"""Adafactor: equal to transformers' and (with `like_torch`) torch's Adafactor, bit-exact
resume, per-group settings, the lr/scheduler contract, bf16 stochastic rounding, validation,
and the Triton kernel (through Triton's CPU interpreter here, on CUDA in the gpu test)."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from forgather.ml.optim import triton_adafactor
from forgather.ml.optim.adafactor import Adafactor
from forgather.ml.optim.state import restore_saved_dtypes

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
SHAPES = [(6, 5), (5,), (2, 3, 4), (4, 1)]


def make_params(dtype: torch.dtype = torch.float32, device: str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(s, generator=gen).to(device=device, dtype=dtype))
        for s in SHAPES
    ]


def set_grads(params: list[torch.Tensor], step: int) -> None:
    """Deterministic gradients that depend on the parameters (like a real loss) and the step."""
    for i, p in enumerate(params):
        gen = torch.Generator().manual_seed(1000 * step + i)
        noise = torch.randn(p.shape, generator=gen).to(device=p.device, dtype=torch.float32)
        p.grad = (torch.sin(3 * p.detach().float()) + noise * (1 + i)).to(p.dtype)


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for t in steps:
        set_grads(params, t)
        opt.step()
        opt.zero_grad()


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], rtol=1e-5, atol=1e-6) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.detach().float(), y.detach().float(), rtol=rtol, atol=atol)


HF_SETTINGS = [
    {},  # relative step, parameter scale
    {"scale_parameter": False},
    {"warmup_init": True},
    {"beta1": 0.9, "weight_decay": 0.1},
    {"lr": 1e-2, "relative_step": False, "scale_parameter": False},
    {"lr": 3e-3, "relative_step": False, "scale_parameter": True, "beta1": 0.9},
    {"lr": 1e-2, "relative_step": False, "weight_decay": 0.05, "clip_threshold": 0.5},
    {"eps": (1e-3, 1e-2), "decay_rate": -0.5},
]


@pytest.mark.parametrize("settings", HF_SETTINGS, ids=str)
def test_matches_transformers(settings):
    from transformers.optimization import Adafactor as HFAdafactor

    ours, theirs = make_params(), make_params()
    run(Adafactor(ours, **settings), ours, range(12))
    run(HFAdafactor(theirs, **settings), theirs, range(12))
    assert_close(ours, theirs)
    assert not torch.equal(ours[0], make_params()[0])  # it moved


TORCH_SETTINGS = [
    {},
    {"lr": 0.05, "weight_decay": 0.1},
    {"lr": 0.2, "d": 2.0, "beta2_decay": -0.5},
    {"eps": (1e-3, 1e-2)},
]


@pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"), reason="torch has no Adafactor")
@pytest.mark.parametrize("settings", TORCH_SETTINGS, ids=str)
def test_like_torch_matches_torch(settings):
    ours, theirs = make_params(), make_params()
    run(Adafactor.like_torch(ours, **settings), ours, range(12))
    run(torch.optim.Adafactor(theirs, **settings), theirs, range(12))
    assert_close(ours, theirs)


def test_like_torch_is_the_documented_setting():
    p = make_params()
    group = Adafactor.like_torch(p, lr=0.05, weight_decay=0.1).param_groups[0]
    expected = Adafactor(
        make_params(),
        lr=1.0,
        relative_step=True,
        max_relative_step=0.05,
        eps=(None, 1e-3),
        eps_mode="clamp",
        weight_decay=0.05 * 0.1,
        weight_decay_mode="lr",
    ).param_groups[0]
    assert {k: v for k, v in group.items() if k != "params"} == {
        k: v for k, v in expected.items() if k != "params"
    }


def state_bytes(opt: torch.optim.Optimizer) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "dtype, settings",
    [
        (torch.float32, {}),
        (torch.float32, {"beta1": 0.9, "weight_decay": 0.01, "lr": 1e-2, "relative_step": False}),
        (torch.bfloat16, {"beta1": 0.9, "weight_decay": 0.01}),
        (torch.bfloat16, {"eps_mode": "clamp", "eps": (None, 1e-3)}),
    ],
    ids=str,
)
def test_resume_is_bit_exact(dtype, settings):
    torch.manual_seed(0)  # the stochastic-rounding seeds come from torch's generator
    straight = make_params(dtype)
    opt = Adafactor(straight, **settings)
    run(opt, straight, range(4))
    saved = state_bytes(opt)
    at_save = [p.detach().clone() for p in straight]
    run(opt, straight, range(4, 9))

    torch.manual_seed(123)  # a different global RNG: the state carries what resuming needs
    resumed = [torch.nn.Parameter(p) for p in at_save]
    fresh = Adafactor(resumed, **settings)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    for p in resumed:  # fp32 state even for bf16 parameters (torch's loader would cast it)
        for value in fresh.state[p].values():
            if torch.is_tensor(value):
                assert value.dtype == torch.float32
    run(fresh, resumed, range(4, 9))
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_groups_record_every_setting_and_rebuild_per_parameter():
    params = make_params()
    opt = Adafactor(
        [
            {"params": params[:2], "beta1": 0.9},
            {"params": params[2:], "lr": 1e-3, "weight_decay": 0.1},
        ],
        clip_threshold=2.0,
    )
    keys = set(opt.defaults) | {"params"}
    for group in opt.param_groups:
        assert keys <= set(group)
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["relative_step"], g0["beta1"]) == (1.0, True, 0.9)
    assert (g1["lr"], g1["relative_step"], g1["weight_decay"]) == (1e-3, False, 0.1)
    assert g0["clip_threshold"] == g1["clip_threshold"] == 2.0

    per_param = make_params()
    singles = [
        type(opt)([{**{k: v for k, v in g.items() if k != "params"}, "params": [q]}])
        for g, qs in ((g0, per_param[:2]), (g1, per_param[2:]))
        for q in qs
    ]
    run(opt, params, range(5))
    for t in range(5):
        set_grads(per_param, t)
        for single in singles:
            single.step()
            single.zero_grad()
    for a, b in zip(params, per_param, strict=True):
        assert torch.equal(a, b)


def first_step_delta(**settings) -> torch.Tensor:
    params = make_params()
    before = params[0].detach().clone()
    run(Adafactor(params, **settings), params, range(1))
    return params[0].detach() - before


def test_relative_step_lr_multiplies_and_schedulers_scale_it():
    full = first_step_delta()
    half = first_step_delta(lr=0.5, relative_step=True)
    torch.testing.assert_close(half, full * 0.5, rtol=1e-5, atol=3e-7)  # p's rounding

    params = make_params()
    before = params[0].detach().clone()
    opt = Adafactor(params)  # lr None -> relative step, lr 1.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.25)
    assert opt.param_groups[0]["lr"] == 0.25
    run(opt, params, range(1))
    sched.step()
    torch.testing.assert_close(params[0].detach() - before, full * 0.25, rtol=1e-5, atol=3e-7)

    frozen = first_step_delta(lr=0.0, relative_step=True)
    assert torch.count_nonzero(frozen) == 0


def test_absolute_lr_is_the_step_size():
    delta = first_step_delta(lr=1e-3, scale_parameter=False)  # relative_step None -> False
    # RMS(update) = lr when the unclipped update's RMS is >= clip_threshold (1.0) at step 1
    torch.testing.assert_close(delta.pow(2).mean().sqrt(), torch.tensor(1e-3), rtol=1e-4, atol=0)


def test_bf16_stochastic_rounding_moves_weights_that_nearest_rounding_leaves():
    def train(stochastic_rounding: bool) -> torch.Tensor:
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.ones(32, 32, dtype=torch.bfloat16))
        opt = Adafactor(
            [p], lr=1e-4, scale_parameter=False, stochastic_rounding=stochastic_rounding
        )
        for _ in range(100):
            p.grad = torch.ones_like(p)  # constant gradient: each step is exactly -lr
            opt.step()
        return p.detach().float()

    nearest = train(False)
    assert torch.equal(nearest, torch.ones(32, 32))  # 1e-4 < half an ulp (2**-8) of 1.0: stuck
    stochastic = train(True)
    assert abs(stochastic.mean().item() - (1 - 100 * 1e-4)) < 1e-3  # E = 1 - 100 lr
    assert stochastic.unique().numel() > 1


def test_fp16_and_fp64_parameters():
    for dtype in (torch.float16, torch.float64):
        params = make_params(dtype)
        opt = Adafactor(params, beta1=0.9)
        run(opt, params, range(3))
        reference = make_params(torch.float32)
        run(Adafactor(reference, beta1=0.9), reference, range(3))
        assert_close(params, reference, rtol=2e-2, atol=2e-2)
        state_dtype = torch.float32 if dtype == torch.float16 else dtype
        assert opt.state[params[0]]["exp_avg"].dtype == state_dtype


def test_skips_parameters_without_grad_and_returns_closure_loss():
    params = make_params()
    opt = Adafactor(params)
    set_grads(params, 0)
    params[1].grad = None
    before = params[1].detach().clone()
    assert opt.step(lambda: torch.tensor(3.0)) == 3.0
    assert torch.equal(params[1], before)
    assert params[1] not in opt.state
    assert opt.state[params[0]]["step"] == 1


@pytest.mark.parametrize(
    "settings, option",
    [
        ({"lr": -1.0}, "lr"),
        ({"relative_step": False}, "lr"),
        ({"lr": 1e-3, "warmup_init": True}, "warmup_init"),
        ({"eps": (-1.0, 1e-3)}, "eps"),
        ({"eps": (1e-30, -1.0)}, "eps"),
        ({"eps": 1e-30}, "eps"),
        ({"clip_threshold": 0.0}, "clip_threshold"),
        ({"decay_rate": 0.5}, "decay_rate"),
        ({"beta1": 1.0}, "beta1"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"max_relative_step": 0.0}, "max_relative_step"),
        ({"eps_mode": "sqrt"}, "eps_mode"),
        ({"weight_decay_mode": "adam"}, "weight_decay_mode"),
        ({"kernel": "cuda"}, "kernel"),
        ({"scale_parameter": "yes"}, "scale_parameter"),
    ],
    ids=str,
)
def test_bad_settings_are_value_errors_naming_the_option(settings, option):
    with pytest.raises(ValueError, match=option):
        Adafactor(make_params(), **settings)
    opt = Adafactor(make_params()[:1])
    with pytest.raises(ValueError, match=option):
        opt.add_param_group({"params": make_params()[1:], **settings})
    assert len(opt.param_groups) == 1


def test_triton_kernel_on_cpu_is_a_value_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="kernel='triton'"):
        Adafactor(make_params(), kernel="triton")


def test_auto_kernel_uses_torch_on_cpu(monkeypatch):
    def no_triton(*args, **kwargs):
        raise AssertionError("the Triton kernel must not run on CPU tensors")

    monkeypatch.setattr(triton_adafactor, "factored_update_", no_triton)
    params = make_params()
    run(Adafactor(params, kernel="auto"), params, range(2))


def test_triton_module_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "from forgather.ml.optim import triton_adafactor as t\n"
        "assert not t.triton_available()\n"
        "from forgather.ml.optim.adafactor import Adafactor\n"
        "import torch\n"
        "try:\n"
        "    Adafactor([torch.nn.Parameter(torch.ones(2, 2))], kernel='triton')\n"
        "except ValueError as e:\n"
        "    assert 'cannot be imported' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), check=True)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


# Runs in a subprocess: Triton's interpreter must be switched on before triton is imported.
KERNEL_CHECK = textwrap.dedent(
    """
    import sys
    import torch
    from forgather.ml.optim.adafactor import Adafactor
    from tests.unit.optim.test_adafactor import assert_close, make_params, run

    device = sys.argv[1]
    settings = [
        {},
        {"beta1": 0.9, "weight_decay": 0.1},
        {"eps_mode": "clamp", "eps": (None, 1e-3), "weight_decay": 0.01, "weight_decay_mode": "lr"},
        {"lr": 1e-2, "relative_step": False, "scale_parameter": False, "clip_threshold": 0.5},
    ]
    for s in settings:
        ours, ref = make_params(device=device), make_params(device=device)
        run(Adafactor(ours, kernel="triton", **s), ours, range(4))
        run(Adafactor(ref, kernel="torch", **s), ref, range(4))
        assert_close(ours, ref, rtol=1e-5, atol=1e-6)

    # bf16, nearest rounding: an ulp apart per step at most (fp32 rounding order differs)
    ours, ref = make_params(torch.bfloat16, device), make_params(torch.bfloat16, device)
    s = {"beta1": 0.9, "stochastic_rounding": False}
    run(Adafactor(ours, kernel="triton", **s), ours, range(2))
    run(Adafactor(ref, kernel="torch", **s), ref, range(2))
    assert_close(ours, ref, rtol=2 * 2**-7, atol=1e-5)

    # bf16 stochastic rounding in the kernel: reproducible, and unbiased for a tiny constant step
    def tiny_steps(seed):
        torch.manual_seed(seed)
        p = torch.nn.Parameter(torch.ones(64, 64, dtype=torch.bfloat16, device=device))
        opt = Adafactor([p], lr=1e-4, scale_parameter=False, kernel="triton")
        for _ in range(50):
            p.grad = torch.ones_like(p)
            opt.step()
        return p.detach().float()

    a, b = tiny_steps(0), tiny_steps(0)
    assert torch.equal(a, b)
    assert abs(a.mean().item() - (1 - 50 * 1e-4)) < 1e-3, a.mean().item()
    print("kernel ok")
    """
)


def run_kernel_check(device: str, **env: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK, device],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kernel ok" in result.stdout


@pytest.mark.skipif(not triton_adafactor.triton_available(), reason="triton is not installed")
def test_triton_kernel_matches_torch_in_the_interpreter():
    run_kernel_check("cpu", TRITON_INTERPRET="1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not triton_adafactor.triton_available(), reason="triton is not installed")
def test_triton_kernel_matches_torch_on_cuda():
    run_kernel_check("cuda", TRITON_INTERPRET="0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", ["auto", "triton"])
def test_cuda_resume_with_each_kernel(kernel):
    if kernel == "triton" and not triton_adafactor.triton_available():
        pytest.skip("triton is not installed")
    torch.manual_seed(0)
    straight = make_params(torch.bfloat16, "cuda")
    opt = Adafactor(straight, beta1=0.9, kernel=kernel)
    run(opt, straight, range(3))
    state = copy.deepcopy(opt.state_dict())
    at_save = [p.detach().clone() for p in straight]
    run(opt, straight, range(3, 6))
    resumed = [torch.nn.Parameter(p) for p in at_save]
    fresh = Adafactor(resumed, beta1=0.9, kernel=kernel)
    fresh.load_state_dict(state)
    run(fresh, resumed, range(3, 6))
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_restore_saved_dtypes_after_a_generic_loader():
    torch.manual_seed(0)
    params = make_params(torch.bfloat16)
    opt = Adafactor(params, beta1=0.9)
    run(opt, params, range(2))
    saved = copy.deepcopy(opt.state_dict())
    fresh = Adafactor([torch.nn.Parameter(p.detach().clone()) for p in params], beta1=0.9)
    torch.optim.Optimizer.load_state_dict(fresh, saved)  # what a wrapper optimizer would do
    assert fresh.state[fresh.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16
    restore_saved_dtypes(fresh, saved)
    for i, p in enumerate(fresh.param_groups[0]["params"]):
        for key, value in saved["state"][i].items():
            if torch.is_tensor(value):
                assert torch.equal(fresh.state[p][key], value)
            else:
                assert fresh.state[p][key] == value


def test_resume_through_torch_distributed_checkpoint_helpers():
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def build() -> tuple[torch.nn.Module, Adafactor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5)).bfloat16()
        return model, Adafactor(model.parameters(), beta1=0.9, weight_decay=0.01)

    def train(model, opt, steps):
        for t in steps:
            set_grads(list(model.parameters()), t)
            opt.step()
            opt.zero_grad()

    model, opt = build()
    train(model, opt, range(3))
    saved = copy.deepcopy(get_optimizer_state_dict(model, opt))
    at_save = copy.deepcopy(model.state_dict())
    train(model, opt, range(3, 6))

    model2, opt2 = build()
    model2.load_state_dict(at_save)
    set_optimizer_state_dict(model2, opt2, saved)
    train(model2, opt2, range(3, 6))
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
