"""TrainingArguments: defaults, validation, unknown names, and the generated options page."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from forgather.config import errors
from forgather.config.environment import ConfigEnvironment
from forgather.config.graph import load_config
from forgather.config.validate import validate_graph
from forgather.ml.train.args import TrainingArguments, field_docs
from forgather.ml.train.options_doc import render

pytestmark = pytest.mark.unit

OPTIONS_PAGE = Path(__file__).resolve().parents[3] / "docs" / "trainers" / "options.md"


def test_defaults_derive_run_name_logging_dir_and_seeds():
    args = TrainingArguments(output_dir="out", run_name="r1", seed=7)
    assert args.logging_dir == str(Path("out") / "runs" / "r1")
    assert args.data_seed == 7
    assert args.eval_steps == args.logging_steps
    assert args.greater_is_better is False  # eval_loss
    assert TrainingArguments(metric_for_best_model="accuracy").greater_is_better is True
    assert TrainingArguments().run_name  # a timestamp


def test_unknown_argument_from_dict_suggests_the_close_name():
    with pytest.raises(errors.ArgumentError) as info:
        TrainingArguments.from_dict({"lerning_rate": 1e-3}, source="train.yaml")
    message = str(info.value)
    assert "unknown training argument 'lerning_rate' (did you mean 'learning_rate'?)" in message
    assert message.startswith("train.yaml")


def test_unknown_argument_in_a_config_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "first: 1\n"
        "args: !singleton:forgather.ml.train.args:TrainingArguments\n"
        "  output_dir: out\n"
        "  lerning_rate: 0.001\n"
    )
    config = load_config(ConfigEnvironment([tmp_path]), "c.yaml")
    [problem] = validate_graph(config.graph)
    assert isinstance(problem, errors.ArgumentError)
    assert "lerning_rate" in problem.message and "did you mean 'learning_rate'" in problem.message
    assert str(problem).startswith(f"{tmp_path / 'c.yaml'}:4")  # the misspelt key's line


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_steps": -5}, "max_steps"),
        ({"max_steps": 10**12}, "max_steps"),  # past any sensible bound
        ({"num_train_epochs": 1e9}, "num_train_epochs"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"lr_scheduler_type": "step"}, "lr_scheduler_type"),
        ({"optim": "adam"}, "optim"),
        ({"eval_strategy": "sometimes"}, "eval_strategy"),
        ({"bf16": True, "fp16": True}, "fp16"),
        ({"save_best": True}, "eval_strategy"),
        ({"save_total_limit": 0}, "save_total_limit"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"resume_from_checkpoint": 3}, "resume_from_checkpoint"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        TrainingArguments(**kwargs)


def test_every_field_has_a_docstring():
    docs = field_docs()
    missing = [f.name for f in dataclasses.fields(TrainingArguments) if not docs.get(f.name)]
    assert missing == []


def test_options_page_lists_every_field_and_is_up_to_date():
    page = OPTIONS_PAGE.read_text()
    for f in dataclasses.fields(TrainingArguments):
        assert f"| `{f.name}` |" in page, f.name
    assert page == render(), (
        "regenerate: python -m forgather.ml.train.options_doc > docs/trainers/options.md"
    )
