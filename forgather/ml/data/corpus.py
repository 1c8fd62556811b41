"""Loading text datasets: local files through `datasets`, hub names for online users; the embedded corpus.

`load_text_dataset(path_or_name, split=None)`:

* an existing **file** (`.txt`, `.jsonl`/`.json` (optionally `.gz`/`.bz2`/`.xz`/`.zst`), `.parquet`,
  `.csv`/`.tsv`, `.arrow`) is loaded with the matching `datasets` builder as the split `train`;
* an existing **directory** holding top-level files named after splits (`train.jsonl.gz`,
  `validation.jsonl`, `test-00000-of-00002.parquet`, ...) is loaded with those files as the splits;
  a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` is loaded with
  `datasets.load_from_disk`; any other directory goes to `datasets.load_dataset(directory)`, which
  understands the hub's repository layouts (`data/train-*.parquet`, a README with configs, ...);
* anything else is a **hub name** passed to `datasets.load_dataset(name, split=split, **kwargs)`.

`subdir` reads a **local copy of a hub repository** the way the hub reads one of its configs: the
data files of `<directory>/<subdir>` (e.g. `data`, `wikitext-103-raw-v1`, `sample/10BT`) are the
splits, by name where they carry one (`train-00000-of-00004.parquet`), else all of them are `train`;
a hub config `name=` is then dropped (the folder is the config). For a hub name `subdir` is ignored,
so one call works online by name (`name=` picks the config) and offline against a local copy.
`hold_out(data, docs)` splits a validation split off a corpus that has only a train split.

`split=None` returns every split (a `DatasetDict`); a split name returns one `Dataset`. Names with a
slice (`"train[:1000]"`, `"train[:5%]"`) work for files and hub names. Problems a user can fix raise
`DatasetError` with a one-line message naming the path.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forgather.ml.data.errors import DatasetError

CORPUS_NAME = "austen"
"""The embedded corpus: Jane Austen's six novels, one document per chapter (see corpora/austen/SOURCE.md)."""

EMBEDDED_CORPUS_DIR = Path(__file__).resolve().parent / "corpora" / CORPUS_NAME
"""Directory of the embedded corpus: `train.jsonl.gz` and `validation.jsonl.gz` (`{"text", "book", "chapter"}`)."""

BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
SPLIT_NAMES = ("train", "validation", "test", "dev", "valid", "eval")
SHARD = re.compile(r"^(?P<split>[A-Za-z]+)(?:[-_.].*)?$")


def data_format(path: str | os.PathLike) -> tuple[str, dict[str, Any]] | None:
    """The `datasets` builder (and its extra arguments) for a data file, or None if not a data file."""
    name = Path(path).name.lower()
    for compression in COMPRESSIONS:
        if name.endswith(compression):
            name = name[: -len(compression)]
            break
    suffix = Path(name).suffix
    builder = BUILDERS.get(suffix)
    if builder is None:
        return None
    return builder, ({"delimiter": "\t"} if suffix == ".tsv" else {})


def split_files(directory: Path) -> dict[str, list[Path]]:
    """Top-level data files of `directory` whose names start with a split name, grouped by split."""
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or data_format(path) is None:
            continue
        match = SHARD.match(path.name)
        if match and match["split"].lower() in SPLIT_NAMES:
            found.setdefault(match["split"].lower(), []).append(path)
    return found


def subdir_files(directory: Path, where: str) -> dict[str, list[Path]]:
    """The data files of a hub config's folder, as splits: split-named files by split, else (files
    such as `000_00000.parquet`) every data file as `train`; nested folders are searched too."""
    if not directory.is_dir():
        raise DatasetError(f"{where}: no such directory")
    found = split_files(directory)
    if found:
        return found
    files = sorted(p for p in directory.rglob("*") if p.is_file() and data_format(p) is not None)
    if not files:
        raise DatasetError(f"{where}: no data files")
    return {"train": files}


def is_saved_dataset(directory: Path) -> bool:
    """Whether `directory` was written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (directory / "dataset_dict.json").is_file() or (
        (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()
    )


def looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or os.path.isabs(name)
        or data_format(name) is not None
    )


def split_base(split: str) -> str:
    """`"train[:10%]"` -> `"train"`."""
    return split.split("[", 1)[0].strip()


def one_line(text: object) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def check_text_field(data: Any, text_field: str | None, where: str) -> None:
    """Raise DatasetError if a dataset (or any split of a dict of them) lacks `text_field`."""
    if text_field is None:
        return
    columns = getattr(data, "column_names", None)
    parts = list(columns.items()) if isinstance(columns, dict) else [(None, columns)]
    for split, names in parts:
        if names is None:  # a streaming dataset whose features are unknown until read
            continue
        if text_field not in names:
            in_split = f" split {split!r}" if split else ""
            raise DatasetError(
                f"{where}{in_split}: no text field {text_field!r} (columns: {', '.join(names) or 'none'})"
            )


def _load_files(
    where: str, files: dict[str, list[Path]], split: str | None, kwargs: dict[str, Any]
) -> Any:
    import datasets

    formats = [data_format(p) for paths in files.values() for p in paths]
    builders = {fmt[0] for fmt in formats if fmt}
    if len(builders) != 1:
        raise DatasetError(
            f"{where}: data files of different formats ({', '.join(sorted(builders))})"
        )
    builder, extra = next(fmt for fmt in formats if fmt)
    if split is not None:
        base = split_base(split)
        if base not in files:
            raise DatasetError(f"{where}: no split {base!r} (splits: {', '.join(files)})")
        files = {base: files[base]}
    data_files = {name: [str(p) for p in paths] for name, paths in files.items()}
    try:
        return datasets.load_dataset(
            builder, data_files=data_files, split=split, **{**extra, **kwargs}
        )
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(
            f"{where}: cannot load as {builder}: {type(error).__name__}: {one_line(error)}"
        ) from error


def _load_saved(where: str, directory: Path, split: str | None) -> Any:
    import datasets

    data = datasets.load_from_disk(str(directory))
    if split is None:
        return data
    if "[" in split:
        raise DatasetError(
            f"{where}: split slices ({split!r}) are not supported for saved datasets"
        )
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DatasetError(f"{where}: no split {split!r} (splits: {', '.join(data)})")
        return data[split]
    if split != "train":
        raise DatasetError(f"{where}: a saved Dataset has one split, 'train'; asked for {split!r}")
    return data


def _load_hub(name: str, split: str | None, kwargs: dict[str, Any]) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, split=split, **kwargs)
    except Exception as error:
        reason = f"{type(error).__name__}: {one_line(error)}"
        if split is not None and re.search(r"unknown split|bad split", str(error), re.IGNORECASE):
            raise DatasetError(f"{name}: no split {split_base(split)!r} ({reason})") from error
        offline = datasets.config.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") in (
            "1",
            "true",
            "TRUE",
            "yes",
        )
        hint = " (offline mode: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set)" if offline else ""
        raise DatasetError(
            f"cannot load dataset {name!r}: not a local path, and loading it as a hub name failed{hint}: {reason}"
        ) from error


def load_text_dataset(
    path_or_name: str | os.PathLike,
    split: str | None = None,
    text_field: str | None = "text",
    subdir: str | None = None,
    **kwargs: Any,
) -> Any:
    """Load a text dataset from a local file or directory, or (for anything else) a hub name.

    Returns a `datasets.Dataset` when `split` is given, else a `DatasetDict` of all splits. Keyword
    arguments go to `datasets.load_dataset` (e.g. `streaming=True`, `cache_dir=...`, `name=` (a hub
    config), or `sample_by=` for text files). `text_field` is the column that must exist (None: no
    check). `subdir`: for a local directory, read the files of this folder of it (a local copy of a
    hub repository, see the module docs); ignored for hub names.
    """
    where = str(path_or_name)
    path = Path(os.path.expanduser(where))
    if subdir and path.is_dir():
        where = os.path.join(where, subdir)
        kwargs.pop("name", None)  # the hub config's folder is chosen by subdir
        data = _load_files(where, subdir_files(path / subdir, where), split, kwargs)
    elif path.is_file():
        fmt = data_format(path)
        if fmt is None:
            raise DatasetError(
                f"{where}: unknown data file type (use one of {', '.join(sorted(BUILDERS))})"
            )
        data = _load_files(where, {"train": [path]}, split, kwargs)
    elif path.is_dir():
        files = split_files(path)
        if files:
            data = _load_files(where, files, split, kwargs)
        elif is_saved_dataset(path):
            data = _load_saved(where, path, split)
        else:
            data = _load_hub(str(path), split, kwargs)
    elif path.exists():
        raise DatasetError(f"{where}: not a file or directory")
    elif looks_like_path(where):
        raise DatasetError(f"{where}: no such file or directory")
    else:
        data = _load_hub(where, split, kwargs)
    check_text_field(data, text_field, where)
    return data


def hold_out(data: Any, docs: int, split: str = "train", name: str = "validation") -> Any:
    """A corpus with only a `split` split (FineWeb-edu, SmolLM) given a validation split: its first
    `docs` documents become `name`, and `split` keeps the rest.

    `data` is a dataset dict or one split; a stream (`datasets.IterableDataset`) is split with
    `take`/`skip` (when a stream is later read by several processes or workers, `datasets` spreads
    the skipped count over its files), a map-style dataset with `select`. Returns a dataset dict of
    the same kind with the two splits.
    """
    import datasets

    if docs < 1:
        raise DatasetError(f"hold_out: docs must be >= 1, got {docs}")
    if isinstance(data, datasets.DatasetDict | datasets.IterableDatasetDict | dict):
        if split not in data:
            raise DatasetError(f"hold_out: no split {split!r} (splits: {', '.join(data)})")
        data = data[split]
    if isinstance(data, datasets.IterableDataset):
        return datasets.IterableDatasetDict({split: data.skip(docs), name: data.take(docs)})
    if len(data) <= docs:
        raise DatasetError(
            f"hold_out: {docs} validation documents leave no training data ({len(data)} in all)"
        )
    return datasets.DatasetDict(
        {split: data.select(range(docs, len(data))), name: data.select(range(docs))}
    )


def embedded_texts(split: str) -> list[str]:
    """The embedded corpus's documents of one split as plain strings (no `datasets` needed)."""
    import gzip
    import json

    path = EMBEDDED_CORPUS_DIR / f"{split}.jsonl.gz"
    if not path.is_file():
        raise DatasetError(f"the embedded corpus has no split {split!r} ({path})")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line in lines if line.strip()]


def load_embedded_corpus(split: str | None = None, **kwargs: Any) -> Any:
    """The embedded corpus (`EMBEDDED_CORPUS_DIR`) through `load_text_dataset`."""
    return load_text_dataset(EMBEDDED_CORPUS_DIR, split, **kwargs)


def iter_texts(
    dataset: Any, text_field: str = "text", max_docs: int | None = None
) -> Iterable[str]:
    """The texts of a dataset (or any iterable of rows or strings), at most `max_docs` of them."""
    if isinstance(getattr(dataset, "column_names", None), list) and hasattr(dataset, "__len__"):
        count = len(dataset) if max_docs is None else min(max_docs, len(dataset))
        for start in range(0, count, 1000):  # an arrow Dataset: read the column in batches
            yield from dataset[start : min(start + 1000, count)][text_field]
        return
    for index, row in enumerate(dataset):
        if max_docs is not None and index >= max_docs:
            return
        yield row if isinstance(row, str) else row[text_field]


def unigram_entropy(
    dataset: Any, tokenizer: Any, max_docs: int | None = None, text_field: str = "text"
) -> float:
    """Entropy of the token unigram distribution of `dataset`, in **nats per token**.

    Texts are tokenized without special tokens and every token is counted; the result is
    `-sum(p * ln p)` over the token frequencies `p`. It is the loss (natural log, like a model's
    cross-entropy loss) of the best model that ignores context, fitted on the same text, so a language
    model's validation loss should end up well below the validation split's unigram entropy.
    """
    counts: Counter[int] = Counter()
    batch: list[str] = []

    def flush() -> None:
        if batch:
            for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
                counts.update(ids)
            batch.clear()

    for text in iter_texts(dataset, text_field, max_docs):
        batch.append(text)
        if len(batch) >= 256:
            flush()
    flush()
    total = sum(counts.values())
    if total == 0:
        raise DatasetError("unigram_entropy: the dataset has no tokens")
    return -sum(c / total * math.log(c / total) for c in counts.values())


__all__ = [
    "CORPUS_NAME",
    "EMBEDDED_CORPUS_DIR",
    "hold_out",
    "load_embedded_corpus",
    "load_text_dataset",
    "unigram_entropy",
]
