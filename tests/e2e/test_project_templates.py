"""Each project template makes a project whose default config trains: `forgather project create
--template lm-training` trains a model from scratch, and `--template finetune` fine-tunes it on text
and (chat.yaml) on conversations — 3 steps each, real CLI subprocesses."""

from __future__ import annotations

import pytest

from .conftest import SMALL_MODEL, read_logs, run_dirs

pytestmark = pytest.mark.slow

QUICK = [
    "--max-steps", "3", "trainer_args.logging_steps=1", "trainer_args.save_steps=3",
    "trainer_args.per_device_train_batch_size=4", "+main.do_eval=false", "main.sample_prompts=[]",
]  # fmt: skip


def trained_steps(output_dir) -> list[int]:
    return [r["global_step"] for d in run_dirs(output_dir) for r in read_logs(d) if "loss" in r]


def test_lm_training_then_finetune_projects_train(forgather, tmp_path):
    lm, ft = tmp_path / "lm", tmp_path / "ft"
    for directory, template in ((lm, "lm-training"), (ft, "finetune")):
        made = forgather("project", "create", directory, "--template", template)
        assert made.returncode == 0, made.describe()

    trained = forgather("-p", lm, "train", *SMALL_MODEL, *QUICK)
    assert trained.returncode == 0, trained.describe()
    model = lm / "output_models" / "model"
    assert trained_steps(model) == [1, 2, 3]
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()

    for config, output in (("finetune.yaml", "finetuned"), ("chat.yaml", "chat")):
        run = forgather("-p", ft, "-t", config, "train", "--model-path", model, *QUICK)
        assert run.returncode == 0, (config, run.describe())
        assert trained_steps(ft / "output_models" / output) == [1, 2, 3], config

    missing = forgather("-p", ft, "train", *QUICK)  # no --model-path and no output_models/base
    assert missing.returncode != 0
    assert str(ft / "output_models" / "base") in missing.stderr
