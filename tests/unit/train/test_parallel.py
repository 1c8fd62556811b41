"""Choosing a parallel strategy: the names, the FSDP block finder and its one-line refusals."""

from __future__ import annotations

import pytest
import torch

from forgather.ml.train.args import TrainingArguments
from forgather.ml.train.parallel import STRATEGIES, make_strategy
from forgather.ml.train.parallel.fsdp import FSDPSetupError
from forgather.ml.train.trainer import Trainer
from forgather.ml.unwrap import transformer_blocks
from tests.unit.train._tiny import ProgressionDataset, Recorder, tiny_forgather, tiny_llama

pytestmark = pytest.mark.unit


def test_an_unknown_parallelism_names_the_known_ones(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"parallelism must be one of \('ddp', 'fsdp', 'pipeline', 'diloco'\), got 'fsdpp'",
    ):
        TrainingArguments(output_dir=str(tmp_path), parallelism="fsdpp")
    with pytest.raises(ValueError, match="fsdp_param_dtype must be None or one of"):
        TrainingArguments(output_dir=str(tmp_path), fsdp_param_dtype="bf16")
    assert set(STRATEGIES) == {"ddp", "fsdp", "pipeline", "diloco"}
    with pytest.raises(ValueError, match="pipeline_schedule must be one of"):
        TrainingArguments(output_dir=str(tmp_path), pipeline_schedule="1f1b")


def test_blocks_are_the_no_split_modules_or_the_longest_uniform_module_list():
    llama = tiny_llama()
    assert [type(b).__name__ for b in transformer_blocks(llama)] == ["LlamaDecoderLayer"] * 2

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])
            self.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))

    stack = Stack()
    assert transformer_blocks(stack) == list(stack.layers)


def test_fsdp_refuses_a_model_without_blocks_before_training(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8))
    args = TrainingArguments(output_dir=str(tmp_path), parallelism="fsdp", max_steps=1)
    trainer = Trainer(args=args, model=model, train_dataset=ProgressionDataset(8))
    with pytest.raises(FSDPSetupError, match="Sequential has no blocks"):
        trainer.train()
    assert not (tmp_path / "checkpoints").exists()
    strategy = make_strategy(args, trainer.env, torch.device("cpu"))
    with pytest.raises(FSDPSetupError, match="shards a model block by block"):
        strategy.prepare(model)


def test_fsdp_in_one_process_trains_exactly_like_ddp(tmp_path):
    losses = {}
    for name in ("ddp", "fsdp"):
        recorder = Recorder()
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            parallelism=name,
            max_steps=4,
            logging_steps=1,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            device="cpu",
        )
        trainer = Trainer(
            args=args,
            model_init=tiny_llama,
            train_dataset=ProgressionDataset(16, seed=1),
            callbacks=[recorder],
        )
        trainer.train()
        losses[name] = recorder.step_losses()
    assert losses["fsdp"] == losses["ddp"] and len(losses["ddp"]) == 4


def test_the_manual_splitter_takes_forgather_models_only_and_the_schedule_is_checked(tmp_path):
    from forgather.ml.train.parallel.pipeline import PipelineSetupError, layer_ranges, stage_ids

    args = TrainingArguments(
        output_dir=str(tmp_path),
        parallelism="pipeline",
        pipeline_splitter="manual",
        max_steps=1,
    )
    trainer = Trainer(args=args, model=tiny_llama(), train_dataset=ProgressionDataset(8))
    with pytest.raises(
        PipelineSetupError,
        match="splits forgather causal LMs .* LlamaForCausalLM is not one: use pipeline_splitter=torch",
    ):
        trainer.train()
    with pytest.raises(ValueError, match="pipeline_splitter must be one of"):
        TrainingArguments(output_dir=str(tmp_path), pipeline_splitter="fx")
    with pytest.raises(PipelineSetupError, match="runs one stage per rank"):
        make_strategy(
            TrainingArguments(
                output_dir=str(tmp_path), parallelism="pipeline", pipeline_stages_per_rank=2
            ),
            trainer.env,
            torch.device("cpu"),
        )
    with pytest.raises(PipelineSetupError, match="6 pipeline stages do not divide the model's 4"):
        layer_ranges(4, 6)
    assert layer_ranges(4, 2) == [range(0, 2), range(2, 4)]
    # Looped stages (interleaved schedules) and the V of ZBV: the last stage back on rank 0.
    assert [stage_ids(r, 2, 2, "loop") for r in (0, 1)] == [[0, 2], [1, 3]]
    assert [stage_ids(r, 2, 2, "v") for r in (0, 1)] == [[0, 3], [1, 2]]


def test_pipeline_in_one_process_trains_the_plain_model_like_ddp(tmp_path):
    losses = {}
    for name in ("ddp", "pipeline"):
        recorder = Recorder()
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            parallelism=name,
            max_steps=3,
            logging_steps=1,
            per_device_train_batch_size=4,
            device="cpu",
        )
        Trainer(
            args=args,
            model_init=tiny_forgather,
            train_dataset=ProgressionDataset(16, seed=1),
            callbacks=[recorder],
        ).train()
        losses[name] = recorder.step_losses()
    assert losses["pipeline"] == losses["ddp"] and len(losses["ddp"]) == 3


def test_a_model_built_on_meta_is_materialised_and_initialised_like_a_normal_build(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path / "meta"),
        parallelism="pipeline",
        pipeline_build_on_meta=True,
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        device="cpu",
    )
    recorder = Recorder()
    trainer = Trainer(
        args=args,
        model_init=tiny_forgather,
        train_dataset=ProgressionDataset(16, seed=1),
        callbacks=[recorder],
    )
    assert all(p.is_meta for p in trainer.model.parameters())  # nothing allocated yet
    model = trainer.strategy.prepare(trainer.model)
    assert not any(p.is_meta for p in model.parameters())
    normal = tiny_forgather()
    built = dict(model.named_parameters())
    for name, reference in normal.named_parameters():
        value = built[name]
        if name.endswith("norm.weight"):
            assert torch.equal(value, torch.ones_like(value)), name
        else:  # the same initialisation scheme: N(0, initializer_range)
            assert value.std().item() == pytest.approx(reference.std().item(), rel=0.15), name
            assert not torch.equal(value, reference), name  # from the seed and the name
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    trainer.model = model
    trainer.train()
    losses = recorder.step_losses()
    assert len(losses) == 3 and all(loss == loss for loss in losses.values())


def test_the_torch_splitter_refuses_tied_weights_before_anything_runs(tmp_path):
    from forgather.ml.train.parallel.pipeline import PipelineSetupError

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        parallelism="pipeline",
        pipeline_splitter="torch",
        max_steps=1,
    )
    trainer = Trainer(args=args, model=tiny_forgather(), train_dataset=ProgressionDataset(8))
    with pytest.raises(
        PipelineSetupError,
        match=r"cannot keep model.embed_tokens.weight and lm_head.weight one tensor .* untie them",
    ):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoints").exists()


def _llama_with_dropout():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        attention_dropout=0.5,
    )
    return LlamaForCausalLM(config)


def test_traced_stages_chain_to_the_models_output_in_both_modes():
    """The stages torch's tracer cuts, run one after the other, give the model's logits: in
    evaluation mode without dropout (a second trace), in training mode with it; the first stage
    gets ids, positions and mask by name (the tracer reorders them); the model keeps its weights."""
    from forgather.ml.train.parallel.pipeline import first_stage_inputs, layer_ranges
    from forgather.ml.train.parallel.pipeline_trace import keep_only, trace_stages

    model = _llama_with_dropout()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: the mask must reach attention as a mask, not as positions
    example = first_stage_inputs({"input_ids": ids, "attention_mask": mask})
    ranges = layer_ranges(4, 2)
    model.eval()
    expected = model(input_ids=ids, attention_mask=mask).logits
    for train in (False, True):
        stages = trace_stages(model, ranges, example, [0, 1], train=train)
        hidden = stages[0](*example)
        logits = stages[1](*hidden)
        if train:  # dropout in every attention: not the evaluation output
            assert not torch.allclose(logits, expected, atol=1e-3)
        else:
            torch.testing.assert_close(logits, expected)
    assert not model.training  # tracing leaves the mode as it was
    assert model(input_ids=ids, attention_mask=mask).logits.equal(expected)  # no split markers
    stage_one = trace_stages(model, ranges, example, [1], train=False)
    keep_only(model, stage_one)
    kept = {name for name, _ in model.named_parameters()}
    assert "model.embed_tokens.weight" not in kept and "lm_head.weight" in kept
    assert {n for n in kept if "layers." in n} == {
        n for n in kept if n.startswith(("model.layers.2.", "model.layers.3."))
    }


def test_a_batch_shorter_than_the_trace_is_padded_without_changing_its_loss():
    from forgather.ml.models.transformer.modeling_forgather import causal_lm_loss
    from forgather.ml.train.parallel.pipeline_trace import TraceSplitError, fit_to_trace

    model = _llama_with_dropout().eval()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2))
    loss = causal_lm_loss(model(input_ids=ids).logits, ids)
    padded = fit_to_trace({"input_ids": ids}, 16)
    assert padded["input_ids"].shape == (2, 16) and padded["position_ids"][0, -1] == 15
    logits = model(
        input_ids=padded["input_ids"],
        attention_mask=padded["attention_mask"],
        position_ids=padded["position_ids"],
    ).logits
    torch.testing.assert_close(causal_lm_loss(logits, padded["labels"]), loss)
    with pytest.raises(TraceSplitError, match="traced sequences of 8 tokens; this batch has 10"):
        fit_to_trace({"input_ids": ids}, 8)
