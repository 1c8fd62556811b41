"""The README's main job end to end: `forgather -p examples/tiny_experiments/tiny_llama train` and the
commands around it (resume, DDP, generate, dataset, one-line errors), each a real CLI subprocess.

The model is shrunk to ~0.37M parameters and runs are tens of steps, so the file takes a few minutes
on two CPU cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import (
    PROJECT,
    SMALL,
    SMALL_MODEL,
    TIMEOUT,
    assert_one_line_error,
    read_logs,
    run_dirs,
    tree_digest,
)

pytestmark = pytest.mark.slow

REPORT = re.compile(
    r"^validation loss (?P<loss>\d+\.\d+) nats/token \(perplexity [\d.]+\); "
    r"unigram entropy of the validation split (?P<entropy>\d+\.\d+) nats/token: "
    r"(?P<verdict>below|NOT below) it by (?P<margin>[+-]\d+\.\d+)$",
    re.MULTILINE,
)


# ---- 1. training --------------------------------------------------------------------------------


def test_tiny_llama_trains_and_validation_loss_falls(trained, e2e_env):
    output_dir, run = trained
    assert not list(Path(e2e_env["FORGATHER_JOBS_DIR"]).iterdir())  # the job unregistered itself
    (run_dir,) = run_dirs(output_dir)
    records = read_logs(run_dir)

    evals = [r for r in records if "eval_loss" in r]
    assert [r["global_step"] for r in evals] == [20, 40]
    first_train_loss = next(r["loss"] for r in records if "loss" in r)
    first_eval, last_eval = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    assert last_eval < first_eval, (first_eval, last_eval)
    assert last_eval < first_train_loss, (first_train_loss, last_eval)

    # The closing comparison with the corpus's unigram entropy, for the last evaluation.
    (report,) = REPORT.finditer(run.stdout)
    assert float(report["loss"]) == pytest.approx(last_eval, abs=1e-4)
    entropy = float(report["entropy"])
    assert 4.0 < entropy < 8.0
    assert report["verdict"] == ("below" if last_eval < entropy else "NOT below")
    assert float(report["margin"]) == pytest.approx(entropy - last_eval, abs=2e-4)

    # The overrides reached the model, and the run records where every value came from.
    config = json.loads((output_dir / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert "max_steps: 40" in (run_dir / "config.yaml").read_text()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    max_steps = provenance["trainer_args.max_steps"]
    assert max_steps["value"] == 40
    assert max_steps["set_at"].startswith("<command line>")
    assert "--max-steps 40" in max_steps["set_at"]
    assert [o["value"] for o in max_steps["overrode"]] == [-1, 250]
    assert provenance["model.hidden_size"] == {
        "value": 64,
        "set_at": "<command line> (+model.hidden_size=64)",
    }
    assert (output_dir / "checkpoints" / "checkpoint-40" / "manifest.json").is_file()


# ---- 2. the saved directory -----------------------------------------------------------------------

PLAIN_TRANSFORMERS = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
ids = tokenizer("It is a truth universally acknowledged", return_tensors="pt")["input_ids"]
encoded = tokenizer("Emma", return_tensors="pt")
with torch.no_grad():
    logits = model(ids).logits
    greedy = model.generate(
        **encoded, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
text = tokenizer.decode(greedy[0], skip_special_tokens=True)
torch.save({"ids": ids, "logits": logits}, out)
print(json.dumps({"text": text, "new_tokens": greedy.shape[1] - encoded["input_ids"].shape[1]}))
"""

OWN_PATH = """
import sys
import torch
from transformers import AutoModelForCausalLM
from forgather.ml.models.loading import load_causal_lm
from forgather.ml.models.factory import register_auto_classes

model_dir, checkpoint, inputs, out = sys.argv[1:]
ids = torch.load(inputs)["ids"]
register_auto_classes()
installed = AutoModelForCausalLM.from_pretrained(model_dir).eval()
assert type(installed).__module__.startswith("forgather."), type(installed).__module__
from_checkpoint, _, _ = load_causal_lm(checkpoint)
with torch.no_grad():
    torch.save({"installed": installed(ids).logits, "checkpoint": from_checkpoint(ids).logits}, out)
"""


def test_trained_model_loads_in_plain_transformers(trained, forgather, e2e_env, tmp_path):
    import torch

    output_dir, _ = trained
    # Plain transformers in isolated mode (-I: no PYTHONPATH, no cwd, no user site), from a tmp cwd:
    # the model's code comes from the directory (trust_remote_code), not from forgather.
    plain_env = {k: v for k, v in e2e_env.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_TRANSFORMERS, str(output_dir), str(tmp_path / "a.pt")],
        cwd=tmp_path,
        env=plain_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain["new_tokens"] > 0
    assert plain["text"].startswith("Emma")

    # The same weights through forgather's own classes: the saved dir, and the last checkpoint.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            OWN_PATH,
            str(output_dir),
            str(output_dir / "checkpoints" / "checkpoint-40"),
            str(tmp_path / "a.pt"),
            str(tmp_path / "b.pt"),
        ],
        cwd=tmp_path,
        env=e2e_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    reference = torch.load(tmp_path / "a.pt")["logits"]
    own = torch.load(tmp_path / "b.pt")
    assert reference.shape[-1] == 4096
    torch.testing.assert_close(own["installed"], reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(own["checkpoint"], reference, rtol=0, atol=1e-5)

    # `forgather generate`, greedy, never prompting (stdin is closed): the same text.
    run = forgather(
        "generate", output_dir, "--prompt", "Emma", "--max-new-tokens", "10", "--temperature", "0"
    )
    assert run.returncode == 0, run.describe()
    assert run.stdout.startswith("Emma")
    assert run.stdout.rstrip("\n") == plain["text"]


CHAT_CHECK = """
import json, sys
import torch
from forgather.ml.models.loading import load_causal_lm
from forgather.serve.chat import chat_format, render_chat

model, tokenizer, _ = load_causal_lm(sys.argv[1])
fmt = chat_format(tokenizer)
end = tokenizer.convert_tokens_to_ids("<|im_end|>")
replies = []
for question in json.loads(sys.argv[2]):
    ids = render_chat(tokenizer, fmt, [{"role": "user", "content": question}])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)
    new = out[0, len(ids):].tolist()
    replies.append({"text": tokenizer.decode(new, skip_special_tokens=True), "ids": new})
print(json.dumps({"template": fmt.source, "end": end, "replies": replies}))
"""

CHAT_QUESTIONS = [
    "Who wrote Persuasion?",
    "How many chapters does Emma have?",
    'Which novel is this line from? "She was sorry for it, but could not repent."',
]


def test_chat_fine_tune_answers_in_the_chat_format(trained, forgather, e2e_env, tmp_path):
    """finetune_chat.yaml on the trained model: assistant-only loss on the embedded conversations;
    the result answers a user turn with a reply that ends its turn (<|im_end|>) by itself."""
    output_dir, _ = trained
    chat_dir = tmp_path / "chat"
    run = forgather(
        "-p", PROJECT, "-t", "finetune_chat.yaml", "train", "--model-path", output_dir,
        "--output-dir", chat_dir, "--max-steps", "200", "trainer_args.logging_steps=50",
        "trainer_args.eval_steps=100", "trainer_args.save_steps=200",
        "trainer_args.learning_rate=3e-3",
    )  # fmt: skip
    assert run.returncode == 0, run.describe()
    evals = [r["eval_loss"] for d in run_dirs(chat_dir) for r in read_logs(d) if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0], evals

    done = subprocess.run(
        [sys.executable, "-c", CHAT_CHECK, str(chat_dir), json.dumps(CHAT_QUESTIONS)],
        cwd=tmp_path, env=e2e_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["template"] == "the tokenizer's chat template"  # saved with the model
    for question, reply in zip(CHAT_QUESTIONS, result["replies"], strict=True):
        # greedy generation stopped at the end of the assistant's turn, after a non-empty answer
        assert reply["ids"][-1] == result["end"] and len(reply["ids"]) < 40, (question, reply)
        assert reply["text"].strip() and "<|im_start|>" not in reply["text"], (question, reply)

    answer = forgather(
        "generate", chat_dir, "--chat", "--temperature", "0", "--prompt", CHAT_QUESTIONS[0]
    )
    assert answer.returncode == 0, answer.describe()
    assert answer.stdout.strip() == result["replies"][0]["text"].strip()


# ---- 3. resume ------------------------------------------------------------------------------------

# No final evaluation or samples, and half-size batches: this test is about steps and checkpoints.
QUICK = [
    "+main.do_eval=false",
    "main.sample_prompts=[]",
    "trainer_args.logging_steps=5",
    "trainer_args.per_device_train_batch_size=4",
]


def test_resume_continues_from_latest_checkpoint(train, tmp_path):
    output_dir = tmp_path / "out"
    first = train(output_dir, "--max-steps", "20", "trainer_args.save_steps=10", *QUICK)
    assert first.returncode == 0, first.describe()
    checkpoints = output_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-10", "checkpoint-20"]

    resumed = train(
        output_dir, "--resume", "latest", "--max-steps", "30", "trainer_args.save_steps=10", *QUICK
    )
    assert resumed.returncode == 0, resumed.describe()
    assert re.search(r"^\s*resumed at step\s+20$", resumed.stdout, re.MULTILINE), resumed.stdout
    first_run, second_run = run_dirs(output_dir)
    assert {r["global_step"] for r in read_logs(first_run)} == {5, 10, 15, 20}
    steps = [r["global_step"] for r in read_logs(second_run)]
    assert steps and all(21 <= s <= 30 for s in steps), steps
    assert set(steps) == {25, 30}
    progress = re.findall(r"^step (\d+)/30 ", resumed.stdout, re.MULTILINE)
    assert progress == ["25", "30"], resumed.stdout
    assert (checkpoints / "checkpoint-30" / "manifest.json").is_file()
    provenance = json.loads((second_run / "provenance.json").read_text())
    assert provenance["trainer_args.resume_from_checkpoint"]["value"] == "latest"

    # Training again without --resume refuses to touch the existing run.
    before = tree_digest(output_dir)
    again = train(output_dir, "--max-steps", "30", *QUICK)
    assert_one_line_error(again, "already holds checkpoints", "--resume latest")
    assert tree_digest(output_dir) == before


def test_streaming_config_trains_and_resumes_with_the_straight_runs_losses(forgather, tmp_path):
    """train_streaming.yaml: the corpus read as a stream; a run resumed from its step-4 checkpoint
    (the later one removed, as after a crash) logs the straight run's losses for steps 5-8."""
    import shutil

    def train_stream(output_dir, *extra):
        return forgather(
            "-p", PROJECT, "-t", "train_streaming.yaml", "train", "--output-dir", output_dir,
            "--max-steps", "8", "trainer_args.save_steps=4", "trainer_args.logging_steps=1",
            "trainer_args.eval_steps=100", "+main.do_eval=false", "main.sample_prompts=[]",
            *SMALL, *extra,
        )  # fmt: skip

    straight = train_stream(tmp_path / "a")
    assert straight.returncode == 0, straight.describe()
    checkpoint = tmp_path / "a" / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "data_state_rank0.pt").is_file()
    shutil.copytree(checkpoint, tmp_path / "b" / "checkpoints" / "checkpoint-4")
    resumed = train_stream(tmp_path / "b", "--resume", "latest")
    assert resumed.returncode == 0, resumed.describe()

    def losses(output_dir):
        return {
            r["global_step"]: r["loss"]
            for run_dir in run_dirs(output_dir)
            for r in read_logs(run_dir)
            if "loss" in r
        }

    expected = {step: loss for step, loss in losses(tmp_path / "a").items() if step > 4}
    assert losses(tmp_path / "b") == expected


# ---- 4. DDP ---------------------------------------------------------------------------------------


@pytest.mark.dist
def test_ddp_two_ranks_via_forgather_train(train, e2e_env, tmp_path):
    output_dir = tmp_path / "ddp"
    run = train(
        output_dir,
        "--nproc",
        "2",
        "--max-steps",
        "6",
        "trainer_args.logging_steps=3",
        "trainer_args.eval_steps=6",
        "trainer_args.save_steps=6",
        small=[*SMALL_MODEL, "trainer_args.per_device_train_batch_size=4"],
    )
    assert run.returncode == 0, run.describe()
    assert re.search(r"^\s*world size\s+2$", run.stdout, re.MULTILINE), run.stdout
    assert re.search(r"^\s*effective batch size\s+8$", run.stdout, re.MULTILINE), run.stdout
    # Rank 0 alone reports, logs and writes the run info.
    assert run.stdout.count("training summary:") == 1
    assert run.stdout.count("training done:") == 1
    assert len(REPORT.findall(run.stdout)) == 1
    checkpoint = output_dir / "checkpoints" / "checkpoint-6"
    assert (checkpoint / "manifest.json").is_file()
    assert {p.name for p in checkpoint.glob("rng_state_rank*.pt")} == {
        "rng_state_rank0.pt",
        "rng_state_rank1.pt",
    }
    (run_dir,) = run_dirs(output_dir)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "provenance.json").is_file()
    records = read_logs(run_dir)
    train_steps = [r["global_step"] for r in records if "loss" in r]
    eval_steps = [r["global_step"] for r in records if "eval_loss" in r]
    assert train_steps == [3, 6]
    assert eval_steps == [6]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (output_dir / "model.safetensors").is_file()
    assert not list(Path(e2e_env["FORGATHER_JOBS_DIR"]).iterdir())


@pytest.mark.dist
def test_fsdp_two_ranks_then_consolidate_loads_in_plain_transformers(
    train, forgather, e2e_env, tmp_path
):
    output_dir = tmp_path / "fsdp"
    run = train(
        output_dir,
        "--nproc",
        "2",
        "--max-steps",
        "6",
        "trainer_args.parallelism=fsdp",
        "trainer_args.save_steps=6",
        *QUICK,
        small=[*SMALL_MODEL],
    )
    assert run.returncode == 0, run.describe()
    assert re.search(r"^\s*parallelism\s+fsdp$", run.stdout, re.MULTILINE), run.stdout
    checkpoint = output_dir / "checkpoints" / "checkpoint-6"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert (manifest["parallelism"], manifest["world_size"]) == ("fsdp", 2)
    assert {p.name for p in (checkpoint / "model").glob("*.distcp")} == {
        "__0_0.distcp",
        "__1_0.distcp",
    }

    consolidated = tmp_path / "consolidated"
    done = forgather("checkpoint", "consolidate", checkpoint, consolidated)
    assert done.returncode == 0, done.describe()
    assert f"wrote {consolidated}" in done.stdout
    again = forgather("checkpoint", "consolidate", checkpoint, consolidated)
    assert_one_line_error(again, "already exists")

    # The consolidated checkpoint and the model the FSDP run saved at its end (gathered from the
    # shards) load in plain transformers, without forgather, with the same logits.
    plain_env = {k: v for k, v in e2e_env.items() if k != "PYTHONPATH"}
    logits = {}
    for name, model_dir in (("consolidated", consolidated), ("saved", output_dir)):
        done = subprocess.run(
            [
                sys.executable,
                "-I",
                "-c",
                PLAIN_TRANSFORMERS,
                str(model_dir),
                str(tmp_path / f"{name}.pt"),
            ],
            cwd=tmp_path,
            env=plain_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        import torch

        logits[name] = torch.load(tmp_path / f"{name}.pt")["logits"]
    torch.testing.assert_close(logits["consolidated"], logits["saved"], rtol=0, atol=1e-5)


# ---- 5. bad inputs --------------------------------------------------------------------------------

BAD_INPUTS = {
    # The tokenizer and the raw dataset both read the path: `.raw_dataset` is a dot-key (not
    # addressable), but it is shared, so `train_dataset.arg0.0` is the raw dataset node.
    "tokenizer_dataset_missing": (["tokenizer.dataset_or_path=/nope"], ["/nope", "no such file"]),
    "raw_dataset_missing": (["train_dataset.arg0.0.0=/nope"], ["/nope", "no such file"]),
    "vocab_mismatch": (["model.vocab_size=100"], ["vocab_size", "100", "4096"]),
    "unknown_training_argument": (["+trainer_args.lerning_rate=0.1"], ["lerning_rate"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error(case, train, tmp_path):
    overrides, needles = BAD_INPUTS[case]
    output_dir = tmp_path / "out"
    run = train(output_dir, "--max-steps", "2", *overrides)
    line = assert_one_line_error(run, *needles)
    if case == "unknown_training_argument":
        # Named where the misspelt key came from: the override as typed, with a suggestion.
        assert "<command line> (+trainer_args.lerning_rate=0.1)" in line, line
        assert "did you mean 'learning_rate'" in line, line
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_missing_dataset_path_in_a_config(forgather, tmp_path):
    """A project whose config extends the training template with `ns.dataset_path` set wrong."""
    project = tmp_path / "project"
    (project / "templates" / "configs").mkdir(parents=True)
    (project / "meta.yaml").write_text(
        (PROJECT / "meta.yaml").read_text().replace("train_tiny_llama.yaml", "nope.yaml")
    )
    (project / "templates" / "configs" / "nope.yaml").write_text(
        textwrap.dedent(
            """\
            -- extends "training_script/causal_lm.yaml"
            -- block config_metadata
                == super()
                -- set ns.config_name = "No data"
                -- set ns.dataset_path = "/nope"
            -- endblock config_metadata
            """
        )
    )
    output_dir = tmp_path / "out"
    run = forgather("-p", project, "train", "--output-dir", output_dir, "--max-steps", "2", *SMALL)
    assert_one_line_error(run, "/nope", "no such file")
    assert not output_dir.exists() or not any(output_dir.iterdir())
    assert not (project / "output_models").exists()


def test_resuming_a_checkpoint_of_another_model_fails(trained, train, tmp_path):
    trained_dir, _ = trained
    checkpoint = trained_dir / "checkpoints" / "checkpoint-20"
    before = tree_digest(trained_dir)
    output_dir = tmp_path / "out"
    run = train(
        output_dir,
        "--max-steps",
        "22",
        "--resume",
        checkpoint,
        "+model.hidden_size=32",
        small=[s for s in SMALL if "hidden_size" not in s],
    )
    assert_one_line_error(run, str(checkpoint), "another model")
    assert not output_dir.exists() or not any(output_dir.iterdir())
    assert tree_digest(trained_dir) == before


# ---- 6. dataset -----------------------------------------------------------------------------------


def test_forgather_dataset_prints_examples_and_histogram(forgather):
    run = forgather(
        "-p", PROJECT, "dataset", "-n", "2", "--histogram", "--histogram-samples", "200"
    )
    assert run.returncode == 0, run.describe()
    lines = run.stdout.splitlines()
    assert re.fullmatch(
        r"train_dataset: Dataset, \d+ rows, columns: input_ids, document_starts", lines[0]
    ), lines[0]
    headers = [line for line in lines if line.startswith("--- example ")]
    assert [h.split(":")[0] for h in headers] == ["--- example 0", "--- example 1"]
    assert re.fullmatch(r"--- example 0: 256 tokens, 1 document start\(s\) at 0 ---", headers[0])
    assert "[[doc]]<|BOS|>" in run.stdout
    assert "Dashwood" in run.stdout  # decoded text of the first chapter of Sense and Sensibility

    start = lines.index("token lengths of train_dataset:")
    summary = lines[start + 1]
    assert re.match(r"200 samples, tokens: min \d+, mean [\d.]+, median \d+", summary), summary
    bins = [re.fullmatch(r"\s*(\d+)-(\d+)\s+(\d+)(?: [#.]+)?", line) for line in lines[start + 2 :]]
    assert bins and all(bins), lines[start + 2 :]
    assert sum(int(b[3]) for b in bins) == 200
    assert int(bins[-1][2]) == 256  # packed blocks are at most block_size tokens
