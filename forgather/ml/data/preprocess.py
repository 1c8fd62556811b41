"""Tokenize (and by default pack) a `datasets.Dataset` for training, cached by `datasets`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from forgather.ml.data.errors import DatasetError
from forgather.ml.data.packing import block_tokenize_fn
from forgather.ml.signatures import accepts_keyword


@contextlib.contextmanager
def local_main_process_first() -> Iterator[bool]:
    """Under torch.distributed, let local rank 0 run the body first; the others wait, then run it.

    The others then find the `datasets` cache files rank 0 wrote. Without an initialized process group
    this is a plain context. Yields whether this process is local rank 0.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = False
    try:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
    except ImportError:  # torch without distributed support
        pass
    if distributed and local_rank != 0:
        dist.barrier()
    try:
        yield local_rank == 0
    finally:
        if distributed and local_rank == 0:
            dist.barrier()


def select_indices(length: int, select_range: Any) -> range:
    """`select_range` as a range over a dataset of `length` rows.

    Accepts an int N (the first N rows), a `(start, stop)` pair (either may be None), a `range` or a
    `slice`; stops past the end are clipped.
    """
    if isinstance(select_range, bool):
        raise DatasetError(
            f"select_range: expected an int, a (start, stop) pair, a range or a slice, got {select_range!r}"
        )
    if isinstance(select_range, int):
        return range(min(max(select_range, 0), length))
    if isinstance(select_range, range):
        return range(length)[select_range.start : select_range.stop : select_range.step]
    if isinstance(select_range, slice):
        return range(length)[select_range]
    if (
        isinstance(select_range, Sequence)
        and not isinstance(select_range, str)
        and len(select_range) == 2
    ):
        start, stop = select_range
        return range(length)[slice(start, stop)]
    raise DatasetError(
        f"select_range: expected an int, a (start, stop) pair, a range or a slice, got {select_range!r}"
    )


def stream_columns(dataset: Any) -> list[str] | None:
    """A streaming dataset's columns; read from its first row when its features are not declared
    (json and text streams), None when it has no rows."""
    if dataset.column_names is not None:
        return dataset.column_names
    for row in dataset.take(1):
        return list(row)
    return None


def preprocess_dataset(
    dataset: Any,
    tokenizer: Any,
    *,
    map_fn: Callable[..., dict] | None = None,
    fn_kwargs: dict[str, Any] | None = None,
    feature: str = "text",
    select_range: Any = None,
    shuffle: bool = False,
    seed: int = 42,
    num_proc: int | None = None,
    desc: str | None = None,
    remove_columns: bool | list[str] = True,
    batch_size: int = 1000,
) -> Any:
    """Tokenize `dataset` with `map_fn` (default `block_tokenize_fn`) in batches; returns the new dataset.

    * `shuffle` (with `seed`) shuffles the documents first, then `select_range` picks rows (see
      `select_indices`): shuffle + select takes a random subset;
    * `map_fn(batch, tokenizer, **fn_kwargs)` is called through `Dataset.map(batched=True)`; it also
      gets `feature=` when it takes that argument (`block_tokenize_fn` does) and it is not in
      `fn_kwargs`. `fn_kwargs` are the rest of `block_tokenize_fn`'s options by default
      (`max_length`, `packed`, `packing_strategy`, ...);
    * `remove_columns=True` drops the input columns (needed when a batch's row count changes, as it
      does when packing); a list drops those; False keeps them;
    * results are cached by `datasets` (keyed by the dataset's fingerprint, the function and its
      arguments), so a second run with the same inputs loads the cache. Under torch.distributed, local
      rank 0 maps first while the other ranks wait at a barrier, then they map too (loading the cache);
      the barrier is used only if a process group is initialized.

    `num_proc` and `desc` go to `Dataset.map`; a streaming `IterableDataset` is mapped lazily (neither
    is used there). `batch_size` is the number of documents per call of `map_fn`: packing works within
    one call, so it is also the packing buffer.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        raise DatasetError(
            f"preprocess_dataset: got a dataset dict with splits {', '.join(dataset)}; pass one split"
        )
    function = map_fn or block_tokenize_fn
    kwargs = {"tokenizer": tokenizer, **(fn_kwargs or {})}
    if "feature" not in kwargs and accepts_keyword(function, "feature", var_keyword=True):
        kwargs["feature"] = feature
    streaming = isinstance(dataset, datasets.IterableDataset)
    columns = dataset.column_names if not streaming else stream_columns(dataset)
    if columns is not None and feature not in columns and kwargs.get("feature") == feature:
        raise DatasetError(
            f"preprocess_dataset: no feature {feature!r} (columns: {', '.join(columns)})"
        )
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if select_range is not None:
        if streaming:
            indices = select_indices(10**18, select_range)
            if indices.step != 1:
                raise DatasetError("select_range: streaming datasets take contiguous ranges only")
            dataset = dataset.skip(indices.start).take(len(indices))
        else:
            dataset = dataset.select(select_indices(len(dataset), select_range))
    if remove_columns is True:
        remove = columns
    elif remove_columns is False:
        remove = None
    else:
        remove = list(remove_columns)
    map_args: dict[str, Any] = {
        "batched": True,
        "batch_size": batch_size,
        "fn_kwargs": kwargs,
        "remove_columns": remove,
    }
    if not streaming:
        map_args["num_proc"] = num_proc
        map_args["desc"] = desc or f"Tokenizing ({getattr(function, '__name__', 'map_fn')})"
    # A stream is mapped lazily: nothing is computed or cached now, so no rank waits for another.
    with contextlib.nullcontext() if streaming else local_main_process_first():
        return dataset.map(function, **map_args)


__all__ = ["local_main_process_first", "preprocess_dataset", "select_indices", "stream_columns"]
