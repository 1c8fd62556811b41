"""Every component combination builds, runs forward (and backward) with the right shapes."""

from __future__ import annotations

import itertools

import pytest
import torch

from .conftest import VOCAB, backend_param, tiny_model

pytestmark = pytest.mark.unit

NORMS = ("rmsnorm", "layernorm")
LAYER_TYPES = ("pre_ln", "post_ln", "deepnet")
FEEDFORWARDS = ("swiglu", "mlp")
POSITIONAL = ("rope", "alibi", "sinusoidal", "none")
BACKENDS = ("eager", "sdpa", "flex")

GRID = [
    pytest.param(norm, layer, ff, pe, backend_param(be).values[0], marks=backend_param(be).marks)
    for norm, layer, ff, pe, be in itertools.product(
        NORMS, LAYER_TYPES, FEEDFORWARDS, POSITIONAL, BACKENDS
    )
]


@pytest.mark.parametrize("norm,layer_type,feedforward,positional,backend", GRID)
def test_shapes_and_finite(norm, layer_type, feedforward, positional, backend):
    model = tiny_model(
        norm=norm,
        layer_type=layer_type,
        feedforward=feedforward,
        positional_encoding=positional,
        attention_backend=backend,
        qk_norm=(norm == "rmsnorm"),
    )
    ids = torch.randint(3, VOCAB, (2, 11))
    # Two packed documents in the first row, so the document mask is exercised too.
    position_ids = torch.tensor([list(range(5)) + list(range(6)), list(range(11))])
    training = backend != "flex"  # no flex backward on CPU
    model.train(training)
    with torch.set_grad_enabled(training):
        out = model(ids, position_ids=position_ids, labels=ids, output_hidden_states=True)
    assert out.logits.shape == (2, 11, VOCAB)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 11, 32) for h in out.hidden_states)
    assert torch.isfinite(out.logits).all()
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    if training:
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
