"""`forgather dataset` on a small project whose config builds its datasets with forgather.ml.data."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgather.cli import common
from forgather.cli import dataset as dataset_cli
from forgather.cli.main import app

pytestmark = pytest.mark.unit

META = """\
-- extends "meta_defaults.yaml"
-- block configs
name: Data demo
config_prefix: configs
default_config: data.yaml
-- endblock configs
"""

CONFIG = """\
-- extends "config_type.yaml"
-- block main_body
-- set data_dir = joinpath(project_dir, "data")
-- set hf_cache = joinpath(project_dir, "hf_cache")
raw_train: &raw_train !singleton:forgather.ml.data.corpus:load_text_dataset
    args: [{{ data_dir | toyaml }}, train]
    kwargs: {cache_dir: {{ hf_cache | toyaml }}}
raw_eval: &raw_eval !singleton:forgather.ml.data.corpus:load_text_dataset
    args: [{{ data_dir | toyaml }}, validation]
    kwargs: {cache_dir: {{ hf_cache | toyaml }}}
tokenizer: &tokenizer !singleton:forgather.ml.data.tokenizer:load_or_train_tokenizer
    config: {name: demo, vocab_size: 300}
    dataset_or_path: *raw_train
    cache_dir: {{ joinpath(project_dir, "tokenizers") | toyaml }}
train_dataset: !singleton:forgather.ml.data.preprocess:preprocess_dataset
    args: [*raw_train, *tokenizer]
    kwargs:
        fn_kwargs: {max_length: 48, packed: true, packing_strategy: greedy}
eval_dataset: !singleton:forgather.ml.data.preprocess:preprocess_dataset
    args: [*raw_eval, *tokenizer]
    kwargs:
        fn_kwargs: {max_length: 4096}
main: !dict
    ok: true
-- endblock main_body
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, paragraphs) -> Path:
    root = tmp_path_factory.mktemp("dataproj")
    (root / "templates" / "configs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "meta.yaml").write_text(META)
    (root / "templates" / "configs" / "data.yaml").write_text(textwrap.dedent(CONFIG))
    rows = [json.dumps({"text": p}) + "\n" for p in paragraphs[:60]]
    (root / "data" / "train.jsonl").write_text("".join(rows[:50]))
    (root / "data" / "validation.jsonl").write_text("".join(rows[50:]))
    return root


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def test_dataset_prints_a_summary_and_three_decoded_examples_with_document_markers(project):
    result = run("-p", project, "dataset")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("train_dataset: Dataset, ")
    assert lines[0].endswith("rows, columns: input_ids, document_starts")
    headers = [line for line in lines if line.startswith("--- example")]
    assert len(headers) == 3
    assert headers[0].startswith("--- example 0: 48 tokens, 1 document start(s) at 0")
    assert f"{dataset_cli.DOC_MARKER}<|BOS|>" in result.stdout
    assert "token lengths" not in result.stdout


def test_examples_show_every_document_start_of_a_packed_row(project):
    result = run("-p", project, "dataset", "-n", "8")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("--- example") and "at " in line:
            starts = line.split(" at ")[1].removesuffix(" ---").split(", ")
            assert lines[index + 1].count(dataset_cli.DOC_MARKER) == len(starts)


def test_histogram_is_plain_text_without_a_terminal(project):
    result = run("-p", project, "dataset", "-n", "0", "--histogram", "--histogram-samples", "20")
    assert result.exit_code == 0, result.output
    assert "--- example" not in result.stdout
    assert "token lengths of train_dataset:" in result.stdout
    assert "20 samples, tokens: min" in result.stdout and "max 48" in result.stdout
    assert "#" in result.stdout and "█" not in result.stdout


def test_histogram_uses_rich_bars_on_a_terminal(project, monkeypatch):
    monkeypatch.setattr(common, "stdout_is_tty", lambda: True)
    result = run("-p", project, "dataset", "--histogram")
    assert result.exit_code == 0, result.output
    assert "█" in result.stdout


def test_target_option_picks_another_dataset(project):
    result = run("-p", project, "dataset", "--target", "eval_dataset", "-n", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("eval_dataset: Dataset, 10 rows")


def test_untokenized_target_shows_text_and_measures_it_with_the_tokenizer(project, paragraphs):
    result = run("-p", project, "dataset", "--target", "raw_eval", "-n", "1", "--histogram")
    assert result.exit_code == 0, result.output
    assert paragraphs[50] in result.stdout
    assert "10 samples, tokens:" in result.stdout


def test_unknown_target_is_a_one_line_error(project):
    result = run("-p", project, "dataset", "--target", "nope")
    assert result.exit_code == 1
    assert "no target 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_histogram_bins_cover_the_lengths_and_count_them():
    bins = dataset_cli.histogram_bins([1, 2, 2, 10], max_bins=5)
    assert bins == [(1, 2, 3), (3, 4, 0), (5, 6, 0), (7, 8, 0), (9, 10, 1)]
    assert dataset_cli.histogram_bins([7, 7]) == [(7, 7, 2)]
    lines = dataset_cli.render_histogram([1, 2, 2, 10], fancy=False)
    assert lines[0].startswith("4 samples, tokens: min 1, mean 3.8, median 2")
    assert lines[1] == " 1-1  1 " + "#" * (dataset_cli.BAR_WIDTH // 2)
    assert lines[2] == " 2-2  2 " + "#" * dataset_cli.BAR_WIDTH
    assert lines[3] == " 3-3  0"


def test_sample_indices_spread_over_the_dataset():
    assert dataset_cli.sample_indices(10, 20) == list(range(10))
    assert dataset_cli.sample_indices(100, 4) == [0, 25, 50, 75]
    assert dataset_cli.sample_indices(5, 0) == []
