"""`forgather checkpoint list|inspect|consolidate`: a training run's checkpoints, from their manifests.

The format (names, manifest, completeness) is `forgather.ml.train.checkpoint_format`'s. Directories
without a manifest, with `complete: false`, or still named `.tmp-checkpoint-<step>-<pid>` are listed as
incomplete. `consolidate` turns any checkpoint, sharded or not, into a Hugging Face model directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from forgather.cli import common
from forgather.cli.common import EXTRA_ARGS
from forgather.ml.train import checkpoint_format as fmt
from forgather.ml.train.checkpoint_format import (
    BAD_STATUSES,
    CHECKPOINT_RE,
    MANIFEST,
    STATE_FILE,
    verify_files,
)
from forgather.ml.train.checkpoint_format import TEMP_CHECKPOINT_RE as TMP_CHECKPOINT_RE

checkpoint_app = typer.Typer(
    name="checkpoint",
    help="List, inspect and consolidate training checkpoints (read from their manifest.json files).",
    no_args_is_help=True,
)


# ---- project paths (shared with `forgather tb`) -------------------------------------------------


def project_meta(ctx: typer.Context, project_dir: Path | None = None, tokens=()) -> dict[str, Any]:
    """The `meta` target of the selected config of the project at/above `project_dir` (or -p).

    {} when there is no project or the config has no `meta` target. Relative paths among
    `output_dir`, `logging_dir` and `models_dir` are made absolute against the project directory.
    """
    from forgather.project import load_project
    from forgather.workspace import find_project_dir

    start = project_dir if project_dir is not None else Path(common.state(ctx).project_dir)
    found = find_project_dir(start)
    if found is None:
        return {}
    project = load_project(found, common.state(ctx).config_template, list(tokens))
    if "meta" not in project.config.targets:
        return {}
    meta = project.config.build("meta")
    if not isinstance(meta, dict):
        return {}
    meta = dict(meta)
    for key in ("output_dir", "logging_dir", "models_dir"):
        value = meta.get(key)
        if value and not Path(str(value)).is_absolute():
            meta[key] = str((found / str(value)).resolve())
    return meta


# ---- reading checkpoints -------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    path: Path
    step: int | None
    manifest: dict[str, Any] | None
    problem: str = ""  # why it is incomplete
    size: int = 0
    best: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.problem

    @property
    def created(self) -> str:
        if self.manifest and self.manifest.get("created"):
            return format_time(str(self.manifest["created"]))
        try:
            return datetime.fromtimestamp(self.path.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        except OSError:
            return "?"


def format_time(text: str) -> str:
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S%z")
    except ValueError:
        return text


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


def read_manifest(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, problem): the problem is empty for a complete checkpoint."""
    if not (path / MANIFEST).is_file():
        return None, f"no {MANIFEST}"
    try:
        manifest = fmt.read_manifest(path)
    except fmt.CheckpointError as error:
        return None, str(error).removeprefix(f"{path / MANIFEST}: ")
    if manifest.get("complete") is not True:
        return manifest, "complete is not true"
    return manifest, fmt.manifest_problem(manifest)


def checkpoints_root(directory: Path) -> Path:
    """The directory holding checkpoint-* dirs for an output dir (or that directory itself)."""
    if (directory / "checkpoints").is_dir():
        return directory / "checkpoints"
    if directory.name == "checkpoints" or any(
        CHECKPOINT_RE.match(p.name) or TMP_CHECKPOINT_RE.match(p.name)
        for p in (directory.iterdir() if directory.is_dir() else [])
    ):
        return directory
    return directory / "checkpoints"


def _best_name(
    root: Path, checkpoints: list[CheckpointInfo], metric: str = "eval_loss", greater: bool = False
) -> str | None:
    """The best checkpoint's directory name: `best_model_checkpoint` in the trainer state of the
    newest complete checkpoint (what the trainer recorded); else the complete checkpoint whose manifest
    has the best `metric` (the earliest step on a tie)."""
    for info in reversed(checkpoints):
        if not info.complete:
            continue
        state_file = info.path / STATE_FILE
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        best = state.get("best_model_checkpoint") if isinstance(state, dict) else None
        if best:
            return Path(str(best)).name
        break
    best_name, best_value = None, None
    for info in checkpoints:
        metrics = info.manifest.get("metrics") if info.complete and info.manifest else None
        value = metrics.get(metric) if isinstance(metrics, dict) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if best_value is None or (value > best_value if greater else value < best_value):
            best_name, best_value = info.path.name, value
    return best_name


def scan_checkpoints(
    root: Path, metric: str = "eval_loss", greater: bool = False
) -> list[CheckpointInfo]:
    """Checkpoint dirs under `root`, by step (temporary dirs included, as incomplete)."""
    found: list[CheckpointInfo] = []
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if not path.is_dir() or path.is_symlink():
            continue
        match = CHECKPOINT_RE.match(path.name)
        tmp = TMP_CHECKPOINT_RE.match(path.name)
        if not match and not tmp:
            continue
        manifest, problem = read_manifest(path)
        if tmp:
            problem = "temporary directory (being written, or left by a crash)"
        step = int((match or tmp).group(1))
        if manifest and isinstance(manifest.get("step"), int) and match:
            step = manifest["step"]
        found.append(CheckpointInfo(path, step, manifest, problem, dir_size(path)))
    found.sort(key=lambda c: (c.step if c.step is not None else -1, c.path.name))
    best = _best_name(root, found, metric, greater)
    for info in found:
        info.best = best is not None and info.path.name == best
    return found


def format_metrics(metrics: Any) -> str:
    if not isinstance(metrics, dict):
        return ""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


# ---- commands --------------------------------------------------------------------------------


def resolve_output_dir(ctx: typer.Context, directory: str | None, tokens: list[str]) -> Path:
    if directory is not None:
        path = Path(directory)
        if (path / "meta.yaml").is_file() and not (path / "checkpoints").is_dir():
            meta = project_meta(ctx, path, tokens)
            if not meta.get("output_dir"):
                raise common.project_error(
                    f"the config of project {path} has no meta.output_dir; give an output dir"
                )
            return Path(meta["output_dir"])
        return path
    meta = project_meta(ctx, None, tokens)
    return Path(meta["output_dir"]) if meta.get("output_dir") else Path("output")


@checkpoint_app.command("list", context_settings=EXTRA_ARGS)
def list_command(
    ctx: typer.Context,
    directory: Annotated[
        str | None,
        typer.Argument(
            help="An output dir (holding checkpoints/) or a project; default: the project's "
            "meta.output_dir, else ./output",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric", help="Manifest metric that picks the best checkpoint when none is recorded."
        ),
    ] = "eval_loss",
    greater_is_better: Annotated[
        bool, typer.Option("--greater-is-better", help="A higher --metric is better.")
    ] = False,
) -> None:
    """List checkpoints by step: created, complete, metrics, size; the best one is marked *.

    The best checkpoint is the one the trainer recorded (best_model_checkpoint in its state), else
    the one with the best --metric in its manifest.
    """
    from forgather.config.overrides import is_override

    tokens = list(ctx.args)
    if directory is not None and (directory.startswith("-") or is_override(directory)):
        tokens.insert(0, directory)
        directory = None
    output_dir = resolve_output_dir(ctx, directory, tokens)
    root = checkpoints_root(output_dir)
    checkpoints = scan_checkpoints(root, metric, greater_is_better)
    if not checkpoints:
        typer.echo(f"no checkpoints in {root}")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", title=str(root), title_justify="left")
    for column in ("", "CHECKPOINT", "STEP", "CREATED", "COMPLETE", "METRICS", "SIZE"):
        table.add_column(column, justify="right" if column in ("STEP", "SIZE") else "left")
    for info in checkpoints:
        complete = "yes" if info.complete else f"NO ({info.problem})"
        table.add_row(
            "*" if info.best else "",
            info.path.name,
            str(info.step) if info.step is not None else "?",
            info.created,
            complete,
            format_metrics(info.manifest.get("metrics")) if info.manifest else "",
            human_size(info.size),
        )
    common.console().print(table)
    if any(info.best for info in checkpoints):
        typer.echo("* best checkpoint")


def _print_manifest(manifest: dict[str, Any]) -> None:
    import yaml

    shown = {k: v for k, v in manifest.items() if k != "files"}
    common.echo_text(yaml.safe_dump(shown, sort_keys=False, default_flow_style=False).rstrip())


@checkpoint_app.command("inspect")
def inspect_command(
    path: Annotated[
        Path,
        typer.Argument(help="A checkpoint directory (or its manifest.json)", show_default=False),
    ],
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the sha256 of every file.")
    ] = True,
) -> None:
    """Show a checkpoint's manifest and its files with sizes and sha256 check status.

    Exits 1 when the checkpoint is incomplete or a file is missing or does not match the manifest.
    """
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    if not path.is_dir():
        raise common.project_error(f"{path} is not a checkpoint directory")
    manifest, problem = read_manifest(path)
    typer.echo(f"checkpoint: {path.resolve()}")
    if manifest is not None:
        typer.echo("manifest:")
        _print_manifest(manifest)
    rows = verify_files(path, manifest, verify)
    if rows:
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for column in ("FILE", "BYTES", "ON DISK", "SHA256"):
            table.add_column(column, justify="right" if column in ("BYTES", "ON DISK") else "left")
        for row in rows:
            table.add_row(
                row["file"],
                str(row["bytes"]) if row["bytes"] is not None else "-",
                str(row["on_disk"]) if row["on_disk"] is not None else "-",
                row["status"],
            )
        typer.echo("files:")
        common.console().print(table)
    bad = [row["file"] for row in rows if row["status"] in BAD_STATUSES]
    if problem:
        typer.secho(f"error: incomplete checkpoint: {problem}", fg="red", err=True)
        raise typer.Exit(1)
    if bad:
        typer.secho(
            f"error: {len(bad)} file(s) do not match the manifest: {', '.join(bad)}",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo("complete" + (", all files verified" if verify else ""))


@checkpoint_app.command("consolidate")
def consolidate_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint directory, sharded (any strategy) or not", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Argument(help="The model directory to write (must not exist)", show_default=False),
    ],
    dtype: Annotated[
        str, typer.Option(help="dtype of the written weights: float32, bfloat16 or float16.")
    ] = "float32",
) -> None:
    """Write a Hugging Face model directory from a training checkpoint.

    The shards of every rank are read into one model on the CPU (any world size, any strategy) and
    saved with the model's config, generation config and tokenizer from the checkpoint, so that
    `AutoModelForCausalLM.from_pretrained(OUTPUT, trust_remote_code=True)` loads it, with or
    without forgather installed. The directory is written under a temporary name and renamed
    when complete; OUTPUT must not exist.
    """
    from forgather.ml.models.loading import load_causal_lm
    from forgather.ml.models.save import write_new_model_dir

    if dtype not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter(
            f"must be float32, bfloat16 or float16, got {dtype!r}", param_hint="--dtype"
        )
    if not (checkpoint / MANIFEST).is_file():
        raise common.project_error(f"{checkpoint} is not a checkpoint (no {MANIFEST})")
    _, problem = read_manifest(checkpoint)
    if problem:
        raise common.project_error(f"{checkpoint}: {problem}")
    if output.exists():
        raise common.project_error(f"{output} already exists; give a new directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    typer.echo(f"reading {checkpoint} ...", err=True)
    model, tokenizer, _ = load_causal_lm(checkpoint, device="cpu", dtype=dtype)
    write_new_model_dir(model, output, tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    typer.echo(f"wrote {output} ({type(model).__name__}, {parameters:,} parameters, {dtype})")


def register(app: typer.Typer) -> None:
    app.add_typer(checkpoint_app, name="checkpoint")
