"""Pipeline parallelism on 2 and 4 processes (gloo, torchrun): every schedule gives the one-process
results, checkpoints resume bit-exactly after kill -9 and reshard into FSDP, bad splits are refused.

The model is a 4-layer forgather causal LM with tied embeddings, so the first and last stages hold
one weight between them.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from forgather.ml.train.checkpoint import latest_checkpoint, read_manifest
from forgather.ml.train.checkpoint_format import STATE_FILE
from tests.unit.train._tiny import (
    RESUME_ARGS,
    assert_resumed_losses,
    kill_when,
    launch,
    read_records,
    records_after,
    run,
)

pytestmark = pytest.mark.dist

# The global batch is 8 per optimizer step: 2 micro-batches of 4, one whole batch on every
# pipeline rank (the pipeline's micro-batches are the gradient-accumulation micro-batches).
SINGLE = {**RESUME_ARGS, "per_device_train_batch_size": 4}
PIPELINE = {**SINGLE, "parallelism": "pipeline"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    run(
        {**SINGLE, "output_dir": str(root / "single")},
        root / "single.jsonl",
        weights=root / "single.pt",
        model="forgather",
    )
    return root


def assert_same_run(root, name: str, rel: float = 1e-5) -> None:
    single, other = read_records(root / "single.jsonl"), read_records(root / f"{name}.jsonl")
    assert [r["step"] for r in single] == [r["step"] for r in other]
    assert len([r for r in other if "loss" in r]) >= 10
    for a, b in zip(single, other, strict=True):
        for key in ("loss", "grad_norm", "eval_loss", "learning_rate"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-6), (name, a["step"], key)
        if "tokens" in a:
            assert a["tokens"] == b["tokens"], name
    wa = torch.load(root / "single.pt", weights_only=True)
    wb = torch.load(root / f"{name}.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=5e-5), (name, key)


@pytest.mark.parametrize(
    "schedule",
    ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBV"],
)
def test_every_schedule_on_two_processes_matches_one_process(single, schedule):
    assert_same_run(single, two_stage_run(single, schedule))


def two_stage_run(root, schedule: str) -> str:
    """The 2-process run of `schedule` under `root` (run once per module)."""
    name = f"pp2-{schedule}"
    if not (root / f"{name}.pt").exists():
        run(
            {**PIPELINE, "pipeline_schedule": schedule, "output_dir": str(root / name)},
            root / f"{name}.jsonl",
            weights=root / f"{name}.pt",
            nproc=2,
            model="forgather",
        )
    return name


def test_four_stages_on_four_processes_match_one_process(single):
    # 1F1B needs at least as many micro-batches as stages: 4 of 2 (the same 8 samples per step).
    four = {**PIPELINE, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    run(
        {**four, "pipeline_schedule": "1F1B", "output_dir": str(single / "pp4")},
        single / "pp4.jsonl",
        weights=single / "pp4.pt",
        nproc=4,
        model="forgather",
    )
    # other micro-batch sizes sum the gradients in another order: float rounding, 1e-4
    assert_same_run(single, "pp4", rel=1e-4)
    manifest = read_manifest(single / "pp4" / "checkpoints" / "checkpoint-12")
    assert (manifest["parallelism"], manifest["world_size"]) == ("pipeline", 4)


def test_two_stages_each_sharded_over_two_ranks_match_one_process(single, tmp_path):
    """2-D: 2 pipeline stages x FSDP over 2 ranks each, on 4 processes. Each stage's two ranks
    split the batch: 2 micro-batches of 2 samples each, x 2 = the same 8 samples per step."""
    two_d = {
        **PIPELINE,
        "per_device_train_batch_size": 2,
        "pipeline_fsdp": 2,
        "output_dir": str(single / "pp2xfsdp2"),
    }
    run(two_d, single / "pp2xfsdp2.jsonl", weights=single / "pp2xfsdp2.pt", nproc=4,
                 model="forgather")  # fmt: skip
    assert_same_run(single, "pp2xfsdp2", rel=1e-4)
    manifest = read_manifest(single / "pp2xfsdp2" / "checkpoints" / "checkpoint-12")
    assert (manifest["parallelism"], manifest["world_size"]) == ("pipeline", 4)
    # every rank wrote its own shard (FSDP within a stage, stages across the pipeline)
    assert {f"model/__{r}_0.distcp" for r in range(4)} <= set(manifest["files"])

    # and its checkpoint 8 resumes in one process (the stages' shards make up the whole model)
    shutil.copytree(
        single / "pp2xfsdp2" / "checkpoints" / "checkpoint-8",
        tmp_path / "out" / "checkpoints" / "checkpoint-8",
    )
    output = run(
        {**SINGLE, "output_dir": str(tmp_path / "out"), "resume_from_checkpoint": True},
        tmp_path / "resumed.jsonl",
        model="forgather",
    )
    assert "from pipeline on 4 process(es) to ddp on 1" in output
    assert_resumed_losses(single / "pp2xfsdp2.jsonl", tmp_path / "resumed.jsonl")


def test_built_on_meta_each_rank_materialises_its_stages_and_resumes_exactly(single, tmp_path):
    meta = {**PIPELINE, "pipeline_schedule": "1F1B", "pipeline_build_on_meta": True}
    # resumed from the 1F1B run's checkpoint 8, stages built on meta continue bit for bit
    source = single / two_stage_run(single, "1F1B") / "checkpoints" / "checkpoint-8"
    shutil.copytree(source, tmp_path / "out" / "checkpoints" / "checkpoint-8")
    run(
        {**meta, "output_dir": str(tmp_path / "out"), "resume_from_checkpoint": True},
        tmp_path / "resumed.jsonl",
        nproc=2,
        model="forgather",
    )

    assert records_after(tmp_path / "resumed.jsonl", 8) == records_after(
        single / "pp2-1F1B.jsonl", 8
    )

    # from scratch: the first and last stage initialise the tied embedding alike, and it learns
    run({**meta, "output_dir": str(tmp_path / "fresh")}, tmp_path / "fresh.jsonl",
        weights=tmp_path / "fresh.pt", nproc=2, model="forgather")  # fmt: skip
    losses = [r["loss"] for r in read_records(tmp_path / "fresh.jsonl") if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]
    weights = torch.load(tmp_path / "fresh.pt", weights_only=True)
    # the last stage's copy was updated with the summed gradient, as the first stage's
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])


def test_pipeline_fsdp_that_does_not_divide_the_world_is_one_clear_error(tmp_path):
    process = launch(
        {**PIPELINE, "pipeline_fsdp": 3, "output_dir": str(tmp_path / "out")},
        tmp_path / "log.jsonl",
        nproc=2,
        model="forgather",
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "pipeline_fsdp=3 does not divide the world size 2" in output
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_pipeline_kill_9_then_resume_is_bit_exact(single, tmp_path):
    args = {**PIPELINE, "pipeline_schedule": "1F1B", "output_dir": str(tmp_path / "out")}
    run(args, tmp_path / "straight.jsonl", nproc=2, model="forgather")
    shutil.rmtree(tmp_path / "out")
    process = launch(args, tmp_path / "killed.jsonl", nproc=2, hang_after_save=8, model="forgather")
    kill_when(process, (tmp_path / "out" / "hanging").exists)
    assert latest_checkpoint(tmp_path / "out").name == "checkpoint-8"

    run(
        {**args, "resume_from_checkpoint": True},
        tmp_path / "resumed.jsonl",
        nproc=2,
        model="forgather",
    )

    assert records_after(tmp_path / "resumed.jsonl", 8) == records_after(
        tmp_path / "straight.jsonl", 8
    )


def test_a_pipeline_checkpoint_resumes_under_fsdp(single, tmp_path):
    """Pipeline on 2 stages -> FSDP on 2 ranks: the stages' weights make up the whole model."""
    source = single / two_stage_run(single, "1F1B") / "checkpoints" / "checkpoint-8"
    shutil.copytree(source, tmp_path / "out" / "checkpoints" / "checkpoint-8")
    output = run(
        {
            **RESUME_ARGS,
            "per_device_train_batch_size": 2,
            "parallelism": "fsdp",
            "output_dir": str(tmp_path / "out"),
            "resume_from_checkpoint": True,
        },
        tmp_path / "resumed.jsonl",
        nproc=2,
        model="forgather",
    )
    assert "from pipeline on 2 process(es) to fsdp on 2" in output
    assert_resumed_losses(single / "pp2-1F1B.jsonl", tmp_path / "resumed.jsonl")


def test_a_stage_count_that_does_not_divide_the_layers_is_one_clear_error(tmp_path):
    process = launch(
        {
            **PIPELINE,
            "pipeline_schedule": "Interleaved1F1B",
            "pipeline_stages_per_rank": 3,  # 6 stages for 4 layers
            "output_dir": str(tmp_path / "out"),
        },
        tmp_path / "log.jsonl",
        nproc=2,
        model="forgather",
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "6 pipeline stages do not divide the model's 4 layers" in output
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
def test_torchs_splitter_cuts_a_hugging_face_llama_like_one_process(tmp_path, schedule):
    """`pipeline_splitter: auto` sends a model that is not a forgather LM (Hugging Face's
    LlamaForCausalLM, untied) through torch's tracer: 2 stages on 2 processes give the one-process
    run's losses, gradient norms, evaluation losses and weights; its checkpoint resumes in one
    process under DDP."""
    run(
        {**SINGLE, "output_dir": str(tmp_path / "single")},
        tmp_path / "single.jsonl",
        weights=tmp_path / "single.pt",
    )
    name = f"traced-{schedule}"
    output = run(
        {**PIPELINE, "pipeline_schedule": schedule, "output_dir": str(tmp_path / name)},
        tmp_path / f"{name}.jsonl",
        weights=tmp_path / f"{name}.pt",
        nproc=2,
    )
    state = json.loads((tmp_path / name / "checkpoints" / "checkpoint-12" / STATE_FILE).read_text())
    assert state["parallelism"].startswith(f"pipeline ({schedule}, 2 stages cut by torch's tracer")
    assert_same_run(tmp_path, name)
    resumed = tmp_path / "resumed"
    shutil.copytree(
        tmp_path / name / "checkpoints" / "checkpoint-8", resumed / "checkpoints" / "checkpoint-8"
    )
    output = run(
        {**SINGLE, "output_dir": str(resumed), "resume_from_checkpoint": True},
        tmp_path / "resumed.jsonl",
    )
    assert "from pipeline on 2 process(es) to ddp on 1" in output
    assert_resumed_losses(tmp_path / f"{name}.jsonl", tmp_path / "resumed.jsonl")
