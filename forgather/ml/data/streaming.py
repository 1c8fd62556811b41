"""Streaming training data: corpora read as streams, tokenized and packed on the fly, resumable exactly.

`token_stream(sources, tokenizer, ...)` builds a `TokenStream`, a torch `IterableDataset` of training
rows (`input_ids`, `document_starts`), from one or more `datasets` streams (local files or hub names
read with `streaming=True`, or `datasets.IterableDataset`s you built). Per pass over the data, for
each process (data-parallel rank) and dataloader worker:

1. every source is split among the ranks (`datasets.distributed.split_dataset_by_node`: whole files
   per rank when the file count divides by the world size, else every world-size-th document);
   dataloader workers then split the rank's files among themselves (`datasets` does that; a worker
   beyond the file count gets nothing and stays idle);
2. each source is tokenized and packed in batches of `packing_buffer` documents by
   `block_tokenize_fn` (its greedy / first-fit / best-fit strategies, see `packing`), lazily;
3. several sources are interleaved with `weights` (the chance that the next row comes from each;
   rows are blocks of tokens, so a weight is a share of the training tokens);
4. a shuffle buffer of `shuffle_buffer` rows mixes blocks from far apart in the stream.

The trainer cycles the stream (pass after pass, `max_steps` decides the end) and saves its position
in every checkpoint: the source position is `datasets`' own `state_dict` (file and row, read from
there on resume), the shuffle buffer's rows and random state are saved with it, and torchdata's
`StatefulDataLoader` keeps each worker's state, so a resumed run sees exactly the batches the
interrupted one would have seen. Resuming needs the same number of ranks and workers.
"""

from __future__ import annotations

import copy
import functools
import random
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from forgather.ml.data.errors import DatasetError

STATE_VERSION = 1


def _is_hf_stream(value: Any) -> bool:
    # Without `datasets` imported nothing can be one of its streams: training on map-style data
    # never imports it.
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(value, datasets.IterableDataset)


def as_stream(source: Any, split: str = "train") -> Any:
    """`source` as one `datasets.IterableDataset`: a path or hub name is loaded with `streaming=True`."""
    import datasets

    from forgather.ml.data.corpus import load_text_dataset

    if isinstance(source, str | bytes) or hasattr(source, "__fspath__"):
        source = load_text_dataset(source, split=split, text_field=None, streaming=True)
    if isinstance(source, datasets.IterableDatasetDict | datasets.DatasetDict):
        raise DatasetError(
            f"token_stream: got a dataset dict (splits {', '.join(source)}); pass one split"
        )
    if isinstance(source, datasets.Dataset):
        return source.to_iterable_dataset()
    if not _is_hf_stream(source):
        raise DatasetError(
            f"token_stream: a source must be a path, a hub name or a datasets.IterableDataset, "
            f"got {type(source).__name__}"
        )
    return source


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float] | None:
    """Interleaving probabilities from `weights` (any positive scale), or None for one source."""
    if weights is None:
        return None if count == 1 else [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise DatasetError(f"token_stream: weights: {len(weights)} weights for {count} sources")
    if any(not w > 0 for w in weights):
        raise DatasetError(f"token_stream: weights must all be > 0, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


class TokenStream(torch.utils.data.IterableDataset):
    """A resumable stream of training rows; see the module docs. Build one with `token_stream`.

    `split_by_node(rank, world_size)` gives this rank's part (the trainer calls it), `single_pass()`
    one pass without repeating (evaluation). `state_dict()` / `load_state_dict()` are the position,
    as torchdata's `StatefulDataLoader` expects of a dataset.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        *,
        transform: Callable[[Any], Any] | None = None,
        weights: Sequence[float] | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        stopping_strategy: str = "all_exhausted",
        repeat: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not sources:
            raise DatasetError("token_stream: no sources")
        if shuffle_buffer < 0:
            raise DatasetError(f"token_stream: shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if stopping_strategy not in ("all_exhausted", "first_exhausted"):
            raise DatasetError(
                "token_stream: stopping_strategy must be 'all_exhausted' or 'first_exhausted', "
                f"got {stopping_strategy!r}"
            )
        self.sources = list(sources)
        self.transform = transform
        self.weights = normalized_weights(weights, len(self.sources))
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.stopping_strategy = stopping_strategy
        self.repeat = repeat
        self.rank, self.world_size = rank, world_size
        self._resume: dict[str, Any] | None = None
        self._live: dict[str, Any] | None = None

    # ---------------------------------------------------------------- views

    def _copy(self, **changes: Any) -> TokenStream:
        settings = dict(
            transform=self.transform, weights=self.weights, shuffle_buffer=self.shuffle_buffer,
            seed=self.seed, stopping_strategy=self.stopping_strategy, repeat=self.repeat,
            rank=self.rank, world_size=self.world_size,
        )  # fmt: skip
        return TokenStream(self.sources, **{**settings, **changes})

    def split_by_node(self, rank: int, world_size: int) -> TokenStream:
        """This rank's part of the stream (ranks never see the same document)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        return self._copy(rank=rank, world_size=world_size)

    def single_pass(self) -> TokenStream:
        """The same stream read once (the shuffle buffer is emptied at the end), not repeated."""
        return self._copy(repeat=False)

    def pipeline(self, epoch: int = 0) -> Any:
        """The `datasets.IterableDataset` of one pass over this rank's part of the data."""
        import datasets
        from datasets.distributed import split_dataset_by_node

        parts = []
        for source in self.sources:
            # A pass's position is loaded into its own objects, never into a source kept across passes.
            source = copy.deepcopy(source)
            if self.world_size > 1:
                source = split_dataset_by_node(source, self.rank, self.world_size)
            parts.append(self.transform(source) if self.transform else source)
        if len(parts) == 1:
            return parts[0]
        return datasets.interleave_datasets(
            parts,
            probabilities=self.weights,
            seed=self.seed + epoch,
            stopping_strategy=self.stopping_strategy,
        )

    @property
    def num_shards(self) -> int:
        """Files (shards) this rank's stream has: dataloader workers beyond this stay idle."""
        return self.pipeline().num_shards

    # ---------------------------------------------------------------- position

    def state_dict(self) -> dict[str, Any]:
        """The position after the last row handed out: pass, source position, shuffle buffer."""
        live = self._live
        if live is None:
            return dict(self._resume) if self._resume else self._initial_state()
        source = live["pipeline"].state_dict() if live["pipeline"] is not None else None
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": live["epoch"],
            "pass_rows": live["pass_rows"],
            "source": source,
            "buffer": list(live["buffer"]),
            "rng": live["rng"].getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict`) at the next iteration."""
        if state.get("version") != STATE_VERSION:
            raise DatasetError(
                f"token_stream: unknown stream state version {state.get('version')!r}"
            )
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise DatasetError(
                f"token_stream: the saved position is rank {state['rank']} of {state['world_size']}, "
                f"this stream is rank {self.rank} of {self.world_size}: a stream resumes only on "
                "as many data-parallel ranks as it was saved from"
            )
        self._resume = dict(state)
        self._live = None

    def _initial_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
            "epoch": 0, "pass_rows": 0, "source": None, "buffer": [], "rng": None,
        }  # fmt: skip

    # ---------------------------------------------------------------- reading

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        state = self._resume or self._initial_state()
        self._resume = None
        rng = random.Random(f"{self.seed}/{self.rank}/{worker_id}")
        if state["rng"] is not None:
            rng.setstate(_as_rng_state(state["rng"]))
        live = {
            "epoch": state["epoch"], "pass_rows": state["pass_rows"], "pipeline": None,
            "buffer": list(state["buffer"]), "rng": rng,
        }  # fmt: skip
        self._live = live
        source_state = state["source"]
        buffer, size = live["buffer"], self.shuffle_buffer
        while True:
            pipeline = self.pipeline(live["epoch"])
            if worker is not None and worker.id >= pipeline.num_shards:
                return  # more dataloader workers than files: this one has nothing to read
            if source_state is not None:
                pipeline.load_state_dict(source_state)
                source_state = None
            live["pipeline"] = pipeline
            for row in pipeline:
                live["pass_rows"] += 1
                if not size:
                    yield row
                elif len(buffer) < size:
                    buffer.append(row)
                else:
                    index = rng.randrange(size)
                    row, buffer[index] = buffer[index], row
                    yield row
            if live["pass_rows"] == 0:
                raise DatasetError(
                    f"token_stream: a pass over the data gave no rows (rank {self.rank} of "
                    f"{self.world_size}, dataloader worker {worker_id}): the sources are empty, or "
                    "every document was dropped by the tokenizing (min_len, max_len)"
                )
            if not self.repeat:
                break
            live["epoch"] += 1
            live["pass_rows"] = 0
            live["pipeline"] = None
        while buffer:  # the end of a single pass: what is left, in random order
            yield buffer.pop(rng.randrange(len(buffer)))


def _as_rng_state(state: Any) -> tuple:
    """`random.Random.getstate()` after a round trip that may have made its tuples lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def token_stream(
    sources: Any,
    tokenizer: Any = None,
    *,
    weights: Sequence[float] | None = None,
    split: str = "train",
    feature: str = "text",
    map_fn: Callable[..., dict] | None = None,
    fn_kwargs: dict[str, Any] | None = None,
    packing_buffer: int = 1000,
    shuffle_buffer: int = 0,
    seed: int = 42,
    stopping_strategy: str = "all_exhausted",
) -> TokenStream:
    """A resumable training stream from `sources` (one or a list): paths, hub names or streams.

    * paths and hub names are read as streams (`load_text_dataset(..., split=split, streaming=True)`);
    * with a `tokenizer`, each source's documents (column `feature`) are tokenized and packed by
      `map_fn` (default `block_tokenize_fn`) with `fn_kwargs` (`max_length`, `packed`,
      `packing_strategy`, ...), `packing_buffer` documents at a time; without one, rows pass as
      they are (already tokenized);
    * `weights`: interleaving weights of the sources (normalised), `stopping_strategy` what ends a
      pass of several sources (`all_exhausted`: every source was read once, the shorter ones
      repeating; `first_exhausted`: the first to end ends it);
    * `shuffle_buffer`: rows held and handed out in random order (0: stream order), seeded by `seed`.
    """
    from forgather.ml.data.preprocess import preprocess_dataset

    items = list(sources) if isinstance(sources, list | tuple) else [sources]
    streams = [as_stream(item, split) for item in items]
    if packing_buffer < 1:
        raise DatasetError(f"token_stream: packing_buffer must be >= 1, got {packing_buffer}")
    transform = None
    if tokenizer is not None:
        transform = functools.partial(
            preprocess_dataset,
            tokenizer=tokenizer,
            map_fn=map_fn,
            fn_kwargs=fn_kwargs,
            feature=feature,
            batch_size=packing_buffer,
        )
    return TokenStream(
        streams,
        transform=transform,
        weights=weights,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        stopping_strategy=stopping_strategy,
    )


def resumable_loader(dataset: Any, **kwargs: Any) -> Any:
    """torchdata's `StatefulDataLoader` over `dataset` (`kwargs` as for torch's `DataLoader`): the
    loader whose `state_dict()` is each worker's stream position."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    with warnings.catch_warnings():  # torchdata 0.11 calls a torch API that now warns
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        return StatefulDataLoader(dataset, **kwargs)


def as_token_stream(dataset: Any) -> TokenStream | None:
    """A training dataset as a `TokenStream` when it is a stream (a bare `datasets.IterableDataset`
    is wrapped as it is), None for a map-style dataset; other iterables are refused by name."""
    if isinstance(dataset, TokenStream):
        return dataset
    if _is_hf_stream(dataset):
        return TokenStream([dataset])
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise TypeError(
            f"the train_dataset is an iterable {type(dataset).__name__}, which cannot resume: use "
            "forgather.ml.data.streaming.token_stream (or a datasets.IterableDataset)"
        )
    return None


__all__ = ["TokenStream", "as_stream", "as_token_stream", "resumable_loader", "token_stream"]
