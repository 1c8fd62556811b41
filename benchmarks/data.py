"""The data pipelines side by side: streaming (`token_stream`) versus map-style (`preprocess_dataset`),
and the time to resume a stream at step N.

    python benchmarks/data.py [--copies 4] [--files 16] [--block-size 256] [--batch-size 16]

1. **Throughput**: tokens/s of tokenizing and packing the embedded corpus's train split (repeated
   `--copies` times, split into `--files` JSON-lines files) with the main job's packing (best fit,
   blocks of `--block-size`), once through `preprocess_dataset` on a map-style dataset (the
   `datasets` cache off: the work is done, not loaded) and once by reading a `token_stream` of the
   same files. Same tokenizer, same documents, same packing buffer (1000 documents).
2. **Resume at step N**: a training loader (`StatefulDataLoader`, 0 workers, a 256-row shuffle
   buffer) is read to step N, its state saved, and a new loader started from that state; printed is
   the time from `load_state_dict` to the first batch, for N across the run, beside the time a
   skip-ahead loader (reading and discarding N batches, the approach `token_stream` avoids) takes.
   The goal: a resume time independent of N.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forgather.ml.data.corpus import embedded_texts  # noqa: E402
from forgather.ml.data.streaming import token_stream  # noqa: E402


def write_files(directory: Path, copies: int, files: int) -> list[str]:
    """The train split, `copies` times over, as `files` JSON-lines files; returns the texts."""
    texts = embedded_texts("train") * copies
    per_file = -(-len(texts) // files)
    for index in range(files):
        with (directory / f"train-{index:05d}.jsonl").open("w") as out:
            for text in texts[index * per_file : (index + 1) * per_file]:
                out.write(json.dumps({"text": text}) + "\n")
    return texts


def throughput(directory: Path, tokenizer, packing: dict) -> dict[str, float]:
    import datasets

    from forgather.ml.data.corpus import load_text_dataset
    from forgather.ml.data.preprocess import preprocess_dataset

    datasets.disable_caching()
    started = time.perf_counter()
    mapped = preprocess_dataset(
        load_text_dataset(str(directory), split="train"), tokenizer, fn_kwargs=packing
    )
    map_tokens = sum(len(ids) for ids in mapped["input_ids"])
    map_seconds = time.perf_counter() - started

    started = time.perf_counter()
    stream_tokens = sum(
        len(row["input_ids"])
        for row in token_stream(str(directory), tokenizer, fn_kwargs=packing).single_pass()
    )
    stream_seconds = time.perf_counter() - started
    if stream_tokens != map_tokens:
        raise SystemExit(f"the pipelines disagree: {stream_tokens} vs {map_tokens} tokens")
    return {
        "tokens": map_tokens,
        "map_tps": map_tokens / map_seconds,
        "stream_tps": stream_tokens / stream_seconds,
    }


def resume_times(directory: Path, tokenizer, packing: dict, batch_size: int, steps: list[int]):
    import torch

    from forgather.ml.data.streaming import resumable_loader

    def collate(rows):
        return [torch.tensor(row["input_ids"]) for row in rows]

    def loader():
        stream = token_stream(
            str(directory), tokenizer, fn_kwargs=packing, packing_buffer=64, shuffle_buffer=256
        )
        return resumable_loader(stream, batch_size=batch_size, collate_fn=collate)

    rows = []
    for step in steps:
        reader = loader()
        batches = iter(reader)
        for _ in range(step):
            next(batches)
        state = reader.state_dict()
        expected = next(batches)

        started = time.perf_counter()
        resumed = loader()
        resumed.load_state_dict(state)
        got = next(iter(resumed))
        resume_seconds = time.perf_counter() - started
        if not all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)):
            raise SystemExit(f"resume at step {step} gave another batch")

        started = time.perf_counter()
        skipping = iter(loader())
        for _ in range(step):
            next(skipping)
        next(skipping)
        skip_seconds = time.perf_counter() - started
        rows.append((step, resume_seconds, skip_seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    options = parser.parse_args()

    import datasets

    from forgather.ml.data.tokenizer import train_tokenizer

    datasets.disable_progress_bars()
    packing = {"max_length": options.block_size, "packed": True, "packing_strategy": "best_fit"}
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        texts = write_files(directory, options.copies, options.files)
        tokenizer = train_tokenizer(texts[: len(texts) // options.copies], vocab_size=4096)
        print(f"{len(texts)} documents in {options.files} files, blocks of {options.block_size}")

        speed = throughput(directory, tokenizer, packing)
        print(f"\ntokenize + pack, {speed['tokens']:,} tokens:")
        print(f"  map-style (preprocess_dataset)  {speed['map_tps']:>12,.0f} tokens/s")
        print(f"  streaming (token_stream)        {speed['stream_tps']:>12,.0f} tokens/s")
        print(f"  ratio streaming / map-style     {speed['stream_tps'] / speed['map_tps']:>12.2f}")

        total_batches = speed["tokens"] // (options.block_size * options.batch_size)
        steps = [1] + [int(total_batches * f) for f in (0.25, 0.5, 0.9)]
        print(f"\nresume at step N (batches of {options.batch_size}, ~{total_batches} per pass):")
        print(f"  {'step N':>8} {'resume s':>10} {'skip-ahead s':>13} {'skip / resume':>14}")
        for step, resume, skip in resume_times(
            directory, tokenizer, packing, options.batch_size, steps
        ):
            print(f"  {step:>8} {resume:>10.3f} {skip:>13.3f} {skip / resume:>14.1f}")


if __name__ == "__main__":
    main()
