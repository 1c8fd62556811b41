"""The training-checkpoint format: names, the manifest, and finding checkpoints. No torch here.

Every reader and writer of checkpoints goes through this module: the trainer's `CheckpointManager`,
`forgather checkpoint`, and the model loader behind `forgather generate`/`serve`.

Layout (format `forgather-checkpoint/2`), under `<output_dir>/checkpoints/checkpoint-<step>/`:

    model/              the weights, a torch.distributed.checkpoint (DCP) directory: `.metadata`
                        and one `__<rank>_<n>.distcp` file per writing rank (sharded under FSDP)
    optimizer/          the optimizer state, a DCP directory keyed by parameter name
    scheduler.pt        the LR scheduler's state
    trainer_state.json  global step, epoch, tokens seen, best metric, log history
    data_state.pt       the data position (epoch, samples consumed, sampler settings)
    rng_state_rank<r>.pt  each rank's RNG states
    data_state_rank<r>.pt each rank's stream position (streaming training data only)
    grad_scaler.pt      fp16 runs only
    hf/                 what loading needs besides weights: config.json, generation_config.json,
                        the tokenizer and (forgather models) the model's source
    manifest.json       written last: format, complete, step, world size, strategy, digests,
                        metrics, and every file's size and sha256

A checkpoint is written into `.tmp-checkpoint-<step>-<machine>-<pid>/` (`<machine>`: 12 hex digits of
the writer's host name and boot id, `run_lock.machine_key`) and renamed into place after its manifest
(`"complete": true`); only directories with a complete manifest count. Format 1 checkpoints (one
`model.safetensors`) still load for inference; resuming needs format 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from forgather.errors import ForgatherError

FORMAT = "forgather-checkpoint/2"
LEGACY_FORMAT = "forgather-checkpoint/1"
MANIFEST = "manifest.json"
MODEL_DIR = "model"
OPTIMIZER_DIR = "optimizer"
HF_DIR = "hf"
LEGACY_MODEL_FILE = "model.safetensors"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "grad_scaler.pt"
STATE_FILE = "trainer_state.json"
DATA_FILE = "data_state.pt"
DCP_METADATA = ".metadata"
REQUIRED_FILES = (
    f"{MODEL_DIR}/{DCP_METADATA}",
    f"{OPTIMIZER_DIR}/{DCP_METADATA}",
    SCHEDULER_FILE,
    STATE_FILE,
    DATA_FILE,
)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Temp names end in -<machine>-<pid> (older versions wrote -<pid> alone: no machine group).
TEMP_RE = re.compile(r"^\.tmp-.*?-(?:(?P<machine>[0-9a-f]{12})-)?(?P<pid>\d+)$")
TEMP_CHECKPOINT_RE = re.compile(r"^\.tmp-checkpoint-(\d+)-(?:[0-9a-f]{12}-)?\d+$")


class CheckpointError(ForgatherError):
    """A checkpoint cannot be used: missing, incomplete, corrupt, or made for another model."""


def rng_file(rank: int) -> str:
    return f"rng_state_rank{rank}.pt"


def rank_data_file(rank: int) -> str:
    """A rank's own data position: a stream's place differs per rank (map-style data needs none)."""
    return f"data_state_rank{rank}.pt"


def is_rank_file(name: str) -> bool:
    """Files one rank wrote for itself (its shards, its RNG state, its stream position)."""
    base = Path(name).name
    return name.endswith(".distcp") or base.startswith(("rng_state_rank", "data_state_rank"))


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def step_of(path: str | os.PathLike) -> int | None:
    """The step number in a `checkpoint-<step>` directory name, or None."""
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of checkpoint directory `path`; CheckpointError if it is missing or unreadable."""
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no {MANIFEST} (not a checkpoint, or an interrupted write)"
        ) from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable: {error}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: not a JSON object")
    return manifest


def manifest_problem(manifest: dict[str, Any]) -> str:
    """Why a manifest does not describe a complete checkpoint ("" when it does)."""
    if manifest.get("format") not in (FORMAT, LEGACY_FORMAT):
        return f"unknown format {manifest.get('format')!r} (expected {FORMAT})"
    if manifest.get("complete") is not True:
        return f"incomplete (manifest says complete={manifest.get('complete')!r})"
    return ""


def is_complete(path: str | os.PathLike) -> bool:
    try:
        return not manifest_problem(read_manifest(path))
    except CheckpointError:
        return False


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `<output_dir>/checkpoints`, oldest first (by step number)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: step_of(p))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def best_checkpoint(
    output_dir: str | os.PathLike, metric: str = "eval_loss", greater_is_better: bool = False
) -> Path | None:
    """The complete checkpoint whose manifest has the best `metric` (the earliest step on a tie)."""
    best, best_value = None, None
    for path in list_checkpoints(output_dir):
        value = read_manifest(path).get("metrics", {}).get(metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        better = best_value is None or (
            value > best_value if greater_is_better else value < best_value
        )
        if better:
            best, best_value = path, value
    return best


def resolve_checkpoint(output_dir: str | os.PathLike, spec: bool | str | os.PathLike) -> Path:
    """The checkpoint `resume_from_checkpoint=spec` names: True/"latest" the newest complete one."""
    if spec is True or spec == "latest":
        latest = latest_checkpoint(output_dir)
        if latest is None:
            raise CheckpointError(
                f"cannot resume: no complete checkpoint in {checkpoints_dir(output_dir)}"
            )
        return latest
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"cannot resume: checkpoint {path} does not exist")
    return path


def run_output_dir(checkpoint: str | os.PathLike) -> Path | None:
    """The output directory of the run a `<output_dir>/checkpoints/checkpoint-<step>` belongs to."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return None


def model_config_dir(checkpoint: str | os.PathLike) -> Path | None:
    """The directory holding the checkpoint's model `config.json`: its own `hf/`, else its run's
    output directory (format 1, or a model saved there). Never looks further up."""
    checkpoint = Path(checkpoint)
    candidates = [checkpoint / HF_DIR]
    if (run := run_output_dir(checkpoint)) is not None:
        candidates.append(run)
    return next((c for c in candidates if (c / "config.json").is_file()), None)


def weights_location(checkpoint: str | os.PathLike) -> tuple[str, Path]:
    """("dcp", dir) or ("safetensors", file): where a checkpoint's model weights are."""
    checkpoint = Path(checkpoint)
    if (checkpoint / MODEL_DIR / DCP_METADATA).is_file():
        return "dcp", checkpoint / MODEL_DIR
    if (checkpoint / LEGACY_MODEL_FILE).is_file():
        return "safetensors", checkpoint / LEGACY_MODEL_FILE
    raise CheckpointError(
        f"{checkpoint}: no model weights ({MODEL_DIR}/{DCP_METADATA} or {LEGACY_MODEL_FILE})"
    )


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """`{name: {"bytes", "sha256"}}` for files `names` (relative to `root`), for the manifest."""
    return {
        name: {"bytes": (root / name).stat().st_size, "sha256": sha256_file(root / name)}
        for name in names
    }


def files_under(root: Path) -> list[str]:
    """Every file below `root` except the manifest, as sorted relative POSIX paths."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )


def verify_files(path: Path, manifest: dict[str, Any] | None, verify: bool = True) -> list[dict]:
    """One row per file listed in the manifest and/or on disk, with its status: ok, sha256 mismatch,
    size mismatch, missing, unlisted, not verified, no sha256 in manifest."""
    listed = manifest.get("files") if manifest else None
    listed = listed if isinstance(listed, dict) else {}
    rows = []
    for name, entry in listed.items():
        entry = entry if isinstance(entry, dict) else {}
        file = path / name
        row = {"file": name, "bytes": entry.get("bytes"), "on_disk": None, "status": ""}
        if not file.is_file():
            row["status"] = "missing"
        else:
            row["on_disk"] = file.stat().st_size
            if entry.get("bytes") is not None and row["on_disk"] != entry.get("bytes"):
                row["status"] = "size mismatch"
            elif not verify:
                row["status"] = "not verified"
            elif not entry.get("sha256"):
                row["status"] = "no sha256 in manifest"
            elif sha256_file(file) == entry["sha256"]:
                row["status"] = "ok"
            else:
                row["status"] = "sha256 mismatch"
        rows.append(row)
    for name in files_under(path):
        if name not in listed:
            size = (path / name).stat().st_size
            rows.append({"file": name, "bytes": None, "on_disk": size, "status": "unlisted"})
    return rows


BAD_STATUSES = frozenset({"missing", "size mismatch", "sha256 mismatch"})


def check_files(path: Path, manifest: dict[str, Any], verify: bool = True) -> None:
    """CheckpointError naming the first file that is missing or differs from the manifest."""
    for row in verify_files(path, manifest, verify):
        if row["status"] == "missing":
            raise CheckpointError(f"{path}: missing file {row['file']}")
        if row["status"] == "size mismatch":
            raise CheckpointError(
                f"{path}: {row['file']} has {row['on_disk']} bytes, the manifest says {row['bytes']}"
            )
        if row["status"] == "sha256 mismatch":
            raise CheckpointError(
                f"{path}: {row['file']} is corrupt (sha256 differs from the manifest)"
            )


__all__ = [
    "CheckpointError",
    "FORMAT",
    "best_checkpoint",
    "check_files",
    "checkpoints_dir",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "model_config_dir",
    "read_manifest",
    "resolve_checkpoint",
    "run_output_dir",
    "step_of",
    "verify_files",
    "weights_location",
]
