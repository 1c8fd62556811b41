"""What every forgather optimizer's step shares: the closure's loss back, sparse gradients refused."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.optim import Adafactor, Apollo, Muon, SinkGD

pytestmark = pytest.mark.unit

BUILDERS = {
    "Muon": lambda params: Muon(params, lr=0.01),
    "Apollo": lambda params: Apollo(params, lr=0.01, rank=2),
    "SinkGD": lambda params: SinkGD(params, lr=0.01),
    "Adafactor": lambda params: Adafactor(params, lr=0.01, relative_step=False),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_step_returns_the_closures_loss_computed_with_gradients(name):
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = BUILDERS[name]([weight])

    def closure():
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    before = weight.detach().clone()
    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx((before**2).sum().item())
    assert not torch.equal(weight, before)


@pytest.mark.parametrize("name", BUILDERS)
def test_a_sparse_gradient_is_refused_by_name(name):
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = BUILDERS[name]([weight])
    weight.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match=f"{name} does not support sparse gradients"):
        optimizer.step()


def test_the_step_in_backward_runs_a_closure_with_gradients():
    from forgather.ml.optim.in_backward import OptimizerInBackward

    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = OptimizerInBackward(torch.optim.SGD([weight], lr=0.1))
    before = weight.detach().clone()
    loss = optimizer.step(lambda: (weight**2).sum().backward() or (before**2).sum())
    assert loss.item() == pytest.approx((before**2).sum().item())
    assert torch.allclose(weight, before * 0.8)  # stepped by its hook: w - 0.1 * 2w
