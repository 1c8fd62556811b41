"""The `dataset` command: show examples of a config's dataset and a histogram of their token lengths."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from forgather.cli import common
from forgather.cli.common import EXTRA_ARGS, OVERRIDES_HELP

DOC_MARKER = "[[doc]]"
BAR_WIDTH = 50
MAX_BINS = 20


# ---- pieces (kept free of Typer so tests can use them) -------------------------------------


def sample_indices(length: int, count: int) -> list[int]:
    """`count` indices spread evenly over `range(length)` (all of them when there are fewer)."""
    if count <= 0 or length <= 0:
        return []
    if length <= count:
        return list(range(length))
    return [i * length // count for i in range(count)]


def take_rows(data: Any, indices: list[int]) -> list[dict[str, Any]]:
    """Rows of a map-style dataset (by index) or the first rows of an iterable one."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return [data[i] for i in indices]
    rows = []
    for row in data:
        if len(rows) >= len(indices):
            break
        rows.append(row)
    return rows


def dataset_length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:  # a streaming dataset
        return None


def row_token_length(row: dict[str, Any], tokenizer: Any, text_field: str) -> int:
    if "input_ids" in row:
        return len(row["input_ids"])
    if tokenizer is None:
        raise common.project_error("the dataset has no input_ids and the config no tokenizer")
    if text_field not in row:
        raise common.project_error(f"the dataset has neither input_ids nor a {text_field!r} field")
    return len(tokenizer(row[text_field], add_special_tokens=False, verbose=False)["input_ids"])


def histogram_bins(lengths: Sequence[int], max_bins: int = MAX_BINS) -> list[tuple[int, int, int]]:
    """Equal-width integer bins `(low, high, count)` (inclusive bounds) covering the lengths."""
    low, high = min(lengths), max(lengths)
    width = max(1, math.ceil((high - low + 1) / max_bins))
    count = math.ceil((high - low + 1) / width)
    counts = [0] * count
    for length in lengths:
        counts[(length - low) // width] += 1
    return [
        (low + i * width, min(high, low + (i + 1) * width - 1), counts[i]) for i in range(count)
    ]


def length_summary(lengths: Sequence[int]) -> str:
    ordered = sorted(lengths)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    p95 = ordered[min(n - 1, math.ceil(0.95 * n) - 1)]
    return (
        f"{n} samples, tokens: min {ordered[0]}, mean {sum(ordered) / n:.1f}, median {median:g}, "
        f"p95 {p95}, max {ordered[-1]}, total {sum(ordered)}"
    )


def render_histogram(lengths: Sequence[int], fancy: bool) -> list[Any]:
    """The histogram as lines: rich Text with block bars when `fancy`, plain `#` bars otherwise."""
    from rich.text import Text

    bins = histogram_bins(lengths)
    top = max(c for _, _, c in bins)
    label_width = len(str(bins[-1][1]))
    count_width = len(str(top))
    lines: list[Any] = [Text(length_summary(lengths)) if fancy else length_summary(lengths)]
    for low, high, count in bins:
        label = f"{low:>{label_width}}-{high:<{label_width}}"
        size = count * BAR_WIDTH / top
        if fancy:
            bar = "█" * int(size) + (" ▏▎▍▌▋▊▉"[int((size % 1) * 8)] if size % 1 else "")
            line = Text(f"{label} ")
            line.append(f"{count:>{count_width}} ", "bold")
            line.append(bar, "cyan")
            lines.append(line)
        else:
            bar = "#" * round(size) if count else ""
            if count and not bar:
                bar = "."
            lines.append(f"{label} {count:>{count_width}} {bar}".rstrip())
    return lines


def render_example(
    index: int, row: dict[str, Any], tokenizer: Any, text_field: str, fancy: bool
) -> list[Any]:
    """An example's header and text; document starts of packed rows shown as `[[doc]]` markers."""
    from rich.text import Text

    if "input_ids" not in row:
        text = row.get(text_field)
        if text is None:
            return [Text(f"--- example {index} ---"), Text(repr(row))]
        return [Text(f"--- example {index}: {len(str(text))} characters ---"), Text(str(text))]
    ids = [int(t) for t in row["input_ids"]]
    starts = row.get("document_starts")
    header = f"--- example {index}: {len(ids)} tokens"
    if starts is not None:
        starts = sorted(int(s) for s in starts if 0 <= int(s) < len(ids))
        header += f", {len(starts)} document start(s)"
        if starts:
            header += f" at {', '.join(map(str, starts))}"
    lines: list[Any] = [Text(header + " ---", "bold" if fancy else "")]
    if tokenizer is None:
        lines.append(Text(repr(ids)))
        return lines
    bounds = [0, *[s for s in (starts or []) if s > 0], len(ids)]
    text = Text()
    for begin, end in zip(bounds, bounds[1:], strict=False):
        if starts and begin in starts:
            text.append(DOC_MARKER, "bold magenta" if fancy else "")
        text.append(tokenizer.decode(ids[begin:end], skip_special_tokens=False))
    lines.append(text)
    return lines


# ---- the command -----------------------------------------------------------------------------


def dataset(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option("--target", help="The dataset target to show.")
    ] = "train_dataset",
    examples: Annotated[
        int | None,
        typer.Option(
            "-n",
            "--examples",
            help="Print this many decoded examples (default: 3, or 0 with --histogram).",
            show_default=False,
        ),
    ] = None,
    histogram: Annotated[
        bool, typer.Option("--histogram", help="Print a histogram of the examples' token lengths.")
    ] = False,
    histogram_samples: Annotated[
        int,
        typer.Option(
            "--histogram-samples", help="How many examples (spread over the dataset) to measure."
        ),
    ] = 1000,
    text_field: Annotated[
        str, typer.Option("--text-field", help="The text column of untokenized datasets.")
    ] = "text",
) -> None:
    """Show a dataset target of the config: size, decoded examples, a token-length histogram.

    Builds TARGET (default `train_dataset`) together with the `tokenizer` target (when the config has
    one, used to decode and measure). Packed examples show `[[doc]]` where a document starts
    (from `document_starts`).
    """
    project = common.load(ctx)
    if target not in project.targets:
        raise common.project_error(
            f"the config has no target {target!r} (targets: {', '.join(project.targets)})"
        )
    if "tokenizer" in project.targets and target != "tokenizer":
        data, tokenizer = project(target, "tokenizer")
    else:
        data, tokenizer = project(target), None
    if hasattr(data, "keys") and isinstance(getattr(data, "column_names", None), dict):
        raise common.project_error(
            f"target {target!r} built a {type(data).__name__} with splits {', '.join(data.keys())}; "
            "make the target one split"
        )
    fancy = common.stdout_is_tty()
    out = common.console()
    length = dataset_length(data)
    columns = getattr(data, "column_names", None)
    size = "streaming" if length is None else f"{length} rows"
    summary = f"{target}: {type(data).__name__}, {size}"
    if columns:
        summary += f", columns: {', '.join(columns)}"
    out.print(summary, soft_wrap=True, markup=False)
    count = (0 if histogram else 3) if examples is None else max(examples, 0)
    rows = take_rows(data, list(range(count if length is None else min(count, length))))
    for index, row in enumerate(rows):
        for line in render_example(index, row, tokenizer, text_field, fancy):
            out.print(line, soft_wrap=True)
    if histogram:
        indices = (
            list(range(histogram_samples))
            if length is None
            else sample_indices(length, histogram_samples)
        )
        sampled = take_rows(data, indices)
        if not sampled:
            raise common.project_error(f"target {target!r} has no examples to measure")
        lengths = [row_token_length(row, tokenizer, text_field) for row in sampled]
        out.print(f"token lengths of {target}:", soft_wrap=True, markup=False)
        for line in render_histogram(lengths, fancy):
            out.print(line, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    app.command("dataset", context_settings=EXTRA_ARGS, epilog=OVERRIDES_HELP)(dataset)
