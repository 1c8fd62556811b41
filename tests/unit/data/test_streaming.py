"""token_stream: per-rank splits, packing on the fly, weighted interleaving, shuffle buffers and exact
resume through torchdata's StatefulDataLoader (0 and 2 workers), on real `datasets` streams of files."""

from __future__ import annotations

import json

import pytest
import torch

from forgather.ml.data.errors import DatasetError
from forgather.ml.data.streaming import (
    TokenStream,
    as_token_stream,
    resumable_loader,
    token_stream,
)

pytestmark = pytest.mark.unit


def write_shards(directory, rows_per_file: int, files: int, tag: int = 0, text: bool = False):
    """`files` JSON-lines files `train-<i>.jsonl`; row k of the set is `{"input_ids": [tag, k]}`
    (or `{"text": ...}` documents): every row can be told apart."""
    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(files):
        with (directory / f"train-{shard}.jsonl").open("w") as out:
            for index in range(shard * rows_per_file, (shard + 1) * rows_per_file):
                row = {"text": f"row {tag} {index} " + "word " * (index % 9)} if text else {
                    "input_ids": [tag, index]
                }  # fmt: skip
                out.write(json.dumps(row) + "\n")
    return directory


def collate(rows):
    return torch.tensor([row["input_ids"] for row in rows])


def batches(stream: TokenStream, workers: int, count: int, state=None):
    loader = resumable_loader(stream, batch_size=3, collate_fn=collate, num_workers=workers)
    if state is not None:
        loader.load_state_dict(state)
    iterator = iter(loader)
    got = [next(iterator).tolist() for _ in range(count)]
    return got, loader.state_dict()


@pytest.fixture
def two_sources(tmp_path):
    return (
        write_shards(tmp_path / "a", rows_per_file=7, files=4, tag=1),
        write_shards(tmp_path / "b", rows_per_file=5, files=2, tag=2),
    )


def mixed(two_sources):
    return token_stream(list(map(str, two_sources)), weights=[3, 1], shuffle_buffer=5, seed=7)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_stream_gives_exactly_the_batches_of_a_straight_read(
    two_sources, workers, world
):
    """Interleaved sources, a shuffle buffer and several passes (the sources are read ~3 times)."""
    rank = world - 1
    straight, _ = batches(mixed(two_sources).split_by_node(rank, world), workers, 40)
    first, state = batches(mixed(two_sources).split_by_node(rank, world), workers, 17)
    state = _through_torch_save(state)
    rest, _ = batches(mixed(two_sources).split_by_node(rank, world), workers, 23, state)
    assert first + rest == straight
    assert first != straight[17:]  # the position mattered


def _through_torch_save(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what checkpoint loading does


def test_ranks_never_see_the_same_row_and_together_see_all(tmp_path):
    # 3 files for 2 ranks: not divisible, so rows (not files) are dealt out
    for files in (3, 4):
        source = write_shards(tmp_path / f"f{files}", rows_per_file=6, files=files)
        seen = [
            [
                tuple(r["input_ids"])
                for r in token_stream(str(source)).split_by_node(k, 2).single_pass()
            ]
            for k in range(2)
        ]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == [(0, i) for i in range(6 * files)]


def test_a_single_pass_ends_and_a_training_stream_repeats(tmp_path):
    source = str(write_shards(tmp_path / "s", rows_per_file=4, files=2))
    once = [r["input_ids"][1] for r in token_stream(source, shuffle_buffer=3).single_pass()]
    assert sorted(once) == list(range(8)) and once != list(range(8))  # shuffled, all there
    stream = iter(token_stream(source))
    assert [next(stream)["input_ids"][1] for _ in range(20)] == [i % 8 for i in range(20)]


def test_interleaving_weights_are_observed_over_10k_rows(tmp_path):
    a = write_shards(tmp_path / "a", rows_per_file=1000, files=2, tag=1)
    b = write_shards(tmp_path / "b", rows_per_file=1000, files=2, tag=2)
    stream = iter(token_stream([str(a), str(b)], weights=[0.8, 0.2], seed=1))
    tags = [next(stream)["input_ids"][0] for _ in range(10_000)]
    assert tags.count(1) / len(tags) == pytest.approx(0.8, abs=0.015)


def test_streamed_blocks_equal_the_map_style_pipeline_on_the_same_documents(tmp_path, tokenizer):
    """Tokenizing and packing on the fly gives the blocks `preprocess_dataset` gives a map-style
    dataset of the same documents (one packing buffer = one `map` batch)."""
    from forgather.ml.data.corpus import load_text_dataset
    from forgather.ml.data.preprocess import preprocess_dataset

    source = write_shards(tmp_path / "docs", rows_per_file=30, files=2, text=True)
    packing = {"max_length": 16, "packed": True, "packing_strategy": "best_fit"}
    mapped = preprocess_dataset(
        load_text_dataset(str(source), split="train"), tokenizer, fn_kwargs=packing, batch_size=8
    )
    streamed = token_stream(str(source), tokenizer, fn_kwargs=packing, packing_buffer=8)
    rows = list(streamed.single_pass())
    assert [r["input_ids"] for r in rows] == mapped["input_ids"]
    assert [r["document_starts"] for r in rows] == mapped["document_starts"]


def test_resume_in_the_middle_of_a_packing_buffer(tmp_path, tokenizer):
    source = str(write_shards(tmp_path / "docs", rows_per_file=30, files=2, text=True))

    def stream():
        return token_stream(
            source, tokenizer, fn_kwargs={"max_length": 16, "packed": True}, packing_buffer=8
        )

    straight = [r["input_ids"] for r in stream().single_pass()]
    reader = stream().single_pass()
    rows = iter(reader)
    first = [next(rows)["input_ids"] for _ in range(11)]
    resumed = stream().single_pass()
    resumed.load_state_dict(reader.state_dict())
    assert first + [r["input_ids"] for r in resumed] == straight


def test_a_position_from_another_world_size_is_refused(tmp_path):
    source = str(write_shards(tmp_path / "s", rows_per_file=4, files=2))
    state = token_stream(source).split_by_node(0, 2).state_dict()
    with pytest.raises(DatasetError, match="rank 0 of 2, this stream is rank 0 of 1"):
        token_stream(source).load_state_dict(state)


def test_bad_settings_are_named(tmp_path):
    source = str(write_shards(tmp_path / "s", rows_per_file=4, files=2))
    with pytest.raises(DatasetError, match="weights: 1 weights for 2 sources"):
        token_stream([source, source], weights=[1])
    with pytest.raises(DatasetError, match="weights must all be > 0"):
        token_stream([source, source], weights=[1, 0])
    with pytest.raises(DatasetError, match="shuffle_buffer must be >= 0"):
        token_stream(source, shuffle_buffer=-1)
    with pytest.raises(DatasetError, match="no such file or directory"):
        token_stream(str(tmp_path / "missing.jsonl"))

    class Lines(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ({"input_ids": [i]} for i in range(3))

    with pytest.raises(TypeError, match="iterable Lines, which cannot resume"):
        as_token_stream(Lines())


def test_an_empty_stream_is_an_error_not_an_endless_loop():
    import datasets

    empty = datasets.IterableDataset.from_generator(lambda: iter(()), features=None)
    with pytest.raises(DatasetError, match="a pass over the data gave no rows"):
        next(iter(token_stream(empty)))
