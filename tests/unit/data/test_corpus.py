"""load_text_dataset: local files and directories, saved datasets, hub layouts; errors; the corpus."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forgather.ml.data.corpus import (
    CORPUS_NAME,
    EMBEDDED_CORPUS_DIR,
    load_embedded_corpus,
    load_text_dataset,
    unigram_entropy,
)
from forgather.ml.data.errors import DatasetError

pytestmark = pytest.mark.unit

DOCS = [{"text": f"document number {i}", "n": i} for i in range(6)]


def write_jsonl(path: Path, rows: list[dict], compress: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# ---- the embedded corpus --------------------------------------------------------------------


def test_embedded_corpus_has_train_and_validation_files_and_a_source_note():
    assert EMBEDDED_CORPUS_DIR.name == CORPUS_NAME
    assert (EMBEDDED_CORPUS_DIR / "train.jsonl.gz").is_file()
    assert (EMBEDDED_CORPUS_DIR / "validation.jsonl.gz").is_file()
    source = (EMBEDDED_CORPUS_DIR / "SOURCE.md").read_text()
    assert "r-cran-janeaustenr" in source and "1.0.0-1" in source and "MIT" in source
    assert (EMBEDDED_CORPUS_DIR.parent / "build_corpus.py").is_file()


def test_embedded_corpus_holds_over_two_megabytes_of_text_split_about_95_to_5():
    splits = {}
    for split in ("train", "validation"):
        with gzip.open(EMBEDDED_CORPUS_DIR / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
            splits[split] = [json.loads(line) for line in f]
    total = sum(len(d["text"].encode()) for docs in splits.values() for d in docs)
    assert total > 2_000_000
    assert len(splits["train"]) == 256 and len(splits["validation"]) == 13
    train_ids = {(d["book"], d["chapter"]) for d in splits["train"]}
    validation_ids = {(d["book"], d["chapter"]) for d in splits["validation"]}
    assert not train_ids & validation_ids
    assert len({d["book"] for d in splits["train"]}) == 6


def test_embedded_corpus_loads_through_datasets(tmp_path):
    data = load_embedded_corpus(cache_dir=str(tmp_path))
    assert set(data) == {"train", "validation"}
    assert data["validation"].num_rows == 13
    assert data["train"][0]["text"].startswith("The family of Dashwood")


# ---- local files and directories --------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_jsonl_file_loads_as_the_train_split(tmp_path, compress):
    path = write_jsonl(tmp_path / ("d.jsonl.gz" if compress else "d.jsonl"), DOCS, compress)
    data = load_text_dataset(path, cache_dir=str(tmp_path / "cache"))
    assert list(data) == ["train"]
    assert data["train"]["text"] == [d["text"] for d in DOCS]
    assert load_text_dataset(str(path), "train", cache_dir=str(tmp_path / "cache")).num_rows == 6


def test_text_csv_tsv_and_parquet_files_load(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(DOCS)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.txt").write_text("\n".join(d["text"] for d in DOCS) + "\n")
    cache = str(tmp_path / "cache")
    for name in ("d.csv", "d.tsv", "d.parquet", "d.txt"):
        data = load_text_dataset(tmp_path / name, "train", cache_dir=cache)
        assert data["text"] == [d["text"] for d in DOCS], name


def test_split_slice_selects_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", DOCS)
    data = load_text_dataset(path, "train[:2]", cache_dir=str(tmp_path / "cache"))
    assert data["text"] == ["document number 0", "document number 1"]


def test_directory_with_split_files_loads_each_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", DOCS[:4])
    write_jsonl(tmp_path / "validation.jsonl", DOCS[4:])
    (tmp_path / "README.md").write_text("not data\n")
    cache = str(tmp_path / "cache")
    data = load_text_dataset(tmp_path, cache_dir=cache)
    assert {name: ds.num_rows for name, ds in data.items()} == {"train": 4, "validation": 2}
    assert load_text_dataset(tmp_path, "validation", cache_dir=cache)["n"] == [4, 5]


def test_sharded_split_files_are_one_split(tmp_path):
    write_jsonl(tmp_path / "train-00000-of-00002.jsonl", DOCS[:3])
    write_jsonl(tmp_path / "train-00001-of-00002.jsonl", DOCS[3:])
    data = load_text_dataset(tmp_path, "train", cache_dir=str(tmp_path / "cache"))
    assert data["n"] == list(range(6))


def test_saved_dataset_dict_loads_with_and_without_split(tmp_path):
    from datasets import Dataset, DatasetDict

    saved = DatasetDict({"train": Dataset.from_list(DOCS[:4]), "test": Dataset.from_list(DOCS[4:])})
    saved.save_to_disk(str(tmp_path / "saved"))
    assert set(load_text_dataset(tmp_path / "saved")) == {"train", "test"}
    assert load_text_dataset(tmp_path / "saved", "test")["n"] == [4, 5]
    with pytest.raises(DatasetError, match="no split 'validation'"):
        load_text_dataset(tmp_path / "saved", "validation")


def test_saved_single_dataset_is_its_train_split(tmp_path):
    from datasets import Dataset

    Dataset.from_list(DOCS).save_to_disk(str(tmp_path / "one"))
    assert load_text_dataset(tmp_path / "one", "train").num_rows == 6
    with pytest.raises(DatasetError, match="one split"):
        load_text_dataset(tmp_path / "one", "validation")


def test_hub_code_path_loads_a_local_copy_of_a_hub_repository_layout(tmp_path):
    """A directory without top-level split files goes to `datasets.load_dataset(directory)`."""
    import pandas as pd

    repo = tmp_path / "user__corpus"
    (repo / "data").mkdir(parents=True)
    pd.DataFrame(DOCS[:5]).to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame(DOCS[5:]).to_parquet(repo / "data" / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text("# a dataset card\n")
    cache = str(tmp_path / "cache")
    data = load_text_dataset(str(repo), cache_dir=cache)
    assert {name: ds.num_rows for name, ds in data.items()} == {"train": 5, "test": 1}
    assert load_text_dataset(str(repo), "test", cache_dir=cache)["n"] == [5]


def test_subdir_reads_one_config_folder_of_a_local_hub_copy(tmp_path):
    """`subdir`: the folder of one config (split-named files, or unnamed files as `train`); a hub
    config `name=` is dropped for a local copy (the folder is the config)."""
    import pandas as pd

    repo = tmp_path / "wikitext"
    for config, rows in (("wikitext-2-raw-v1", DOCS[:2]), ("wikitext-103-raw-v1", DOCS)):
        (repo / config).mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(repo / config / "train-00000-of-00001.parquet")
        pd.DataFrame(rows[:1]).to_parquet(repo / config / "validation-00000-of-00001.parquet")
    cache = str(tmp_path / "cache")
    data = load_text_dataset(
        repo, subdir="wikitext-103-raw-v1", name="wikitext-103-raw-v1", cache_dir=cache
    )
    assert {name: ds.num_rows for name, ds in data.items()} == {"train": 6, "validation": 1}
    sample = repo / "sample" / "10BT"
    sample.mkdir(parents=True)
    for index in range(2):
        pd.DataFrame(DOCS[3 * index : 3 * index + 3]).to_parquet(
            sample / f"00{index}_00000.parquet"
        )
    train = load_text_dataset(repo, "train", subdir="sample/10BT", cache_dir=cache)
    assert train["n"] == list(range(6))
    stream = load_text_dataset(repo, "train", subdir="sample/10BT", streaming=True)
    assert [row["n"] for row in stream] == list(range(6))
    with pytest.raises(DatasetError, match="sample/100BT: no such directory"):
        load_text_dataset(repo, subdir="sample/100BT")


def test_hold_out_splits_a_validation_split_off_a_train_only_corpus(tmp_path):
    import datasets

    from forgather.ml.data.corpus import hold_out

    data = datasets.DatasetDict({"train": datasets.Dataset.from_list(DOCS)})
    split = hold_out(data, 2)
    assert split["validation"]["n"] == [0, 1] and split["train"]["n"] == [2, 3, 4, 5]
    streamed = hold_out(data["train"].to_iterable_dataset(), 2)
    assert [r["n"] for r in streamed["validation"]] == [0, 1]
    assert [r["n"] for r in streamed["train"]] == [2, 3, 4, 5]
    with pytest.raises(DatasetError, match="leave no training data"):
        hold_out(data, 6)


# ---- errors --------------------------------------------------------------------------------


def test_missing_path_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(DatasetError) as info:
        load_text_dataset(missing)
    assert str(missing) in str(info.value) and "no such file" in str(info.value)
    assert "\n" not in str(info.value)


def test_relative_looking_missing_path_is_not_sent_to_the_hub():
    with pytest.raises(DatasetError, match=r"^\./data/corpus: no such file or directory$"):
        load_text_dataset("./data/corpus")


def test_missing_split_names_the_path_and_the_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", DOCS)
    with pytest.raises(DatasetError) as info:
        load_text_dataset(tmp_path, "validation")
    assert str(info.value) == f"{tmp_path}: no split 'validation' (splits: train)"
    with pytest.raises(DatasetError, match="no split 'test'"):
        load_text_dataset(tmp_path / "train.jsonl", "test")


def test_missing_text_field_names_the_path_and_columns(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    with pytest.raises(DatasetError) as info:
        load_text_dataset(tmp_path / "d.jsonl", "train", cache_dir=str(tmp_path / "c"))
    assert str(info.value) == f"{tmp_path / 'd.jsonl'}: no text field 'text' (columns: body)"
    data = load_text_dataset(
        tmp_path / "d.jsonl", "train", text_field="body", cache_dir=str(tmp_path / "c")
    )
    assert data["body"] == ["x"]


def test_unknown_file_type_is_an_error(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(DatasetError, match="unknown data file type"):
        load_text_dataset(tmp_path / "notes.md")


def test_hub_name_offline_gives_our_one_line_error_not_a_traceback(tmp_path):
    code = (
        "from forgather.ml.data.corpus import load_text_dataset\n"
        "from forgather.ml.data.errors import DatasetError\n"
        "try:\n"
        "    load_text_dataset('forgather-test/no-such-dataset', 'train')\n"
        "except DatasetError as error:\n"
        "    print('DatasetError:', error)\n"
    )
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("DatasetError: cannot load dataset 'forgather-test/no-such-dataset'")
    assert "offline mode" in lines[0]
    assert "Traceback" not in out.stderr


# ---- unigram entropy -----------------------------------------------------------------------


class CharTokenizer:
    """One token per character (its code point)."""

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_unigram_entropy_is_in_nats_per_token():
    import math

    assert unigram_entropy(["abab", "ab"], CharTokenizer()) == pytest.approx(math.log(2))
    assert unigram_entropy(["aaaa"], CharTokenizer()) == pytest.approx(0.0)
    assert unigram_entropy(["abcd"], CharTokenizer()) == pytest.approx(math.log(4))


def test_unigram_entropy_reads_a_dataset_column_and_honours_max_docs():
    import math

    from datasets import Dataset

    data = Dataset.from_dict({"text": ["ab", "abcd", "zzzz"]})
    assert unigram_entropy(data, CharTokenizer(), max_docs=1) == pytest.approx(math.log(2))
    expected = -(
        4 / 10 * math.log(4 / 10) + 2 * 2 / 10 * math.log(2 / 10) + 2 * 1 / 10 * math.log(1 / 10)
    )
    assert unigram_entropy(data, CharTokenizer()) == pytest.approx(expected)


def test_unigram_entropy_of_the_corpus_slice_is_between_zero_and_log_vocab(corpus_texts, tokenizer):
    import math

    entropy = unigram_entropy(corpus_texts[:3], tokenizer)
    assert 3.0 < entropy < math.log(len(tokenizer))
