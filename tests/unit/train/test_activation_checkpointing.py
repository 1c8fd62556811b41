"""Activation checkpointing policies: "full" recomputes a layer's matmuls in the backward,
"selective" keeps their outputs and recomputes only element-wise ops; both give the gradients of
no checkpointing (forgather and Hugging Face models)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from forgather.ml.train import activation_checkpointing
from forgather.ml.train.args import TrainingArguments
from tests.unit.train._tiny import SEQ_LEN, VOCAB, tiny_forgather, tiny_llama

pytestmark = pytest.mark.unit

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in MATMULS
        return func(*args, **(kwargs or {}))


def forward_backward(model_init, policy: str | None):
    """(matmuls run in forward + backward, the gradients) of one step under `policy`."""
    torch.manual_seed(0)
    model = model_init()
    model.train()
    if policy is not None:
        activation_checkpointing.enable(model, policy=policy)
    ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    with CountMatmuls() as counter:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return counter.count, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_init", [tiny_forgather, tiny_llama])
def test_selective_recomputes_no_matmul_and_every_policy_keeps_the_gradients(model_init):
    none, reference = forward_backward(model_init, None)
    full, full_grads = forward_backward(model_init, "full")
    selective, selective_grads = forward_backward(model_init, "selective")
    assert full > none  # the backward ran each checkpointed layer's matmuls again
    assert selective == none  # ... and under "selective" none of them
    for grads in (full_grads, selective_grads):
        for name, grad in reference.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_an_unknown_policy_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="gradient_checkpointing_policy must be one of"):
        TrainingArguments(output_dir=str(tmp_path), gradient_checkpointing_policy="some")


def test_the_trainer_trains_the_same_under_the_selective_policy(tmp_path):
    from forgather.ml.train.trainer import Trainer
    from tests.unit.train._tiny import ProgressionDataset

    def losses(name, **overrides):
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=4,
            max_steps=3,
            logging_steps=1,
            learning_rate=1e-2,
            save_strategy="no",
            device="cpu",
            **overrides,
        )
        trainer = Trainer(
            args=args, model_init=tiny_forgather, train_dataset=ProgressionDataset(16, seed=1)
        )
        return [r["loss"] for r in trainer.train().log_history if "loss" in r]

    plain = losses("plain")
    selective = losses(
        "selective", gradient_checkpointing=True, gradient_checkpointing_policy="selective"
    )
    assert len(plain) == 3 and selective == pytest.approx(plain, rel=1e-5)
