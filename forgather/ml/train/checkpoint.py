"""Atomic training checkpoints with a manifest, and exact resume (see docs/checkpointing/index.md).

Layout: `<output_dir>/checkpoints/checkpoint-<step>/` holding `model.safetensors`, `optimizer.pt`,
`scheduler.pt`, `trainer_state.json`, `data_state.pt`, `rng_state_rank<r>.pt` (one per rank),
`grad_scaler.pt` (fp16 only) and `manifest.json`. A checkpoint is written into
`.tmp-checkpoint-<step>-<pid>/`, every file fsynced, the manifest (`"complete": true`) last, then the
directory is renamed into place; only directories with a complete manifest count. Loading checks
everything (manifest, world size, model digest, every file's size and hash) before it changes anything,
and reports any problem as one `CheckpointError` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from forgather.errors import ForgatherError

FORMAT = "forgather-checkpoint/1"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "grad_scaler.pt"
STATE_FILE = "trainer_state.json"
DATA_FILE = "data_state.pt"
REQUIRED_FILES = (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE, DATA_FILE)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TEMP_RE = re.compile(r"^\.tmp-.*-(\d+)$")

# Test hook: with FORGATHER_TEST_CHECKPOINT_STALL=<step>, the write of checkpoint <step> stops (sleeps)
# after model.safetensors, so a test can kill the process in the middle of a checkpoint write.
STALL_ENV = "FORGATHER_TEST_CHECKPOINT_STALL"


class CheckpointError(ForgatherError):
    """A checkpoint cannot be used: missing, incomplete, corrupt, or made for another model or world size."""


def rng_file(rank: int) -> str:
    return f"rng_state_rank{rank}.pt"


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
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no {MANIFEST} (not a checkpoint, or an interrupted write)"
        ) from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable: {error}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: not a JSON object")
    return manifest


def is_complete(path: str | os.PathLike) -> bool:
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return False
    return manifest.get("complete") is True and manifest.get("format") == FORMAT


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
        if not isinstance(value, int | float):
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


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the sorted parameter names, shapes and dtypes: identifies the model's structure."""
    lines = sorted(
        f"{name}:{tuple(param.shape)}:{param.dtype}"
        for name, param in unwrap_model(model).named_parameters()
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in ("forgather", "torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's (or directory's) contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_save(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    _fsync(path)


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LoadedCheckpoint:
    """What `CheckpointManager.load` read besides the weights and optimizer/scheduler states it applied."""

    path: Path
    manifest: dict[str, Any]
    trainer_state: dict[str, Any]
    data_state: dict[str, Any]
    rng_state: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class CheckpointManager:
    """Writes, prunes, finds and loads checkpoints of one run.

    `env` is the `DistributedEnvironment` (None: single process). Rank 0 writes the replicated state
    (weights, optimizer, scheduler, trainer and data state; plain DDP keeps replicas identical), every
    rank writes its RNG file, with barriers between the phases. `metadata` may set `config_digest`,
    `git_sha` and `image_digest` of the manifest.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        env: Any = None,
        save_total_limit: int | None = None,
        keep_best: bool = False,
        metric_for_best_model: str = "eval_loss",
        greater_is_better: bool = False,
        metadata: dict[str, Any] | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.dir = checkpoints_dir(output_dir)
        self.env = env
        self.rank = env.rank if env is not None else 0
        self.world_size = env.world_size if env is not None else 1
        self.save_total_limit = save_total_limit
        self.keep_best = keep_best
        self.metric_for_best_model = metric_for_best_model
        self.greater_is_better = greater_is_better
        self.metadata = dict(metadata or {})
        # Every rank names the temp dir after rank 0's pid.
        self.owner_pid = self._broadcast(os.getpid())

    # --- collectives (no-ops in one process) ---
    def _barrier(self) -> None:
        if self.env is not None:
            self.env.barrier()

    def _broadcast(self, obj: Any) -> Any:
        return self.env.broadcast_object(obj) if self.env is not None else obj

    # --- finding ---
    def list(self) -> list[Path]:
        return list_checkpoints(self.output_dir)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.output_dir)

    def best(self) -> Path | None:
        return best_checkpoint(self.output_dir, self.metric_for_best_model, self.greater_is_better)

    # --- writing ---
    def save(
        self,
        *,
        step: int,
        epoch: float,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        trainer_state: dict[str, Any],
        data_state: dict[str, Any],
        rng_state: dict[str, Any],
        grad_scaler: Any = None,
        metrics: dict[str, float] | None = None,
    ) -> Path:
        """Write checkpoint `step` atomically (all ranks call this); returns its final path.

        A complete checkpoint of the same step already on disk is kept as it is.
        """
        final = self.dir / f"checkpoint-{step}"
        temp = self.dir / f".tmp-checkpoint-{step}-{self.owner_pid}"
        exists = self._broadcast(is_complete(final) if self.rank == 0 else None)
        if exists:
            return final
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if temp.exists():
                shutil.rmtree(temp)
            temp.mkdir()
        self._barrier()

        if self.rank == 0:
            model = unwrap_model(model)
            save_safetensors_model(model, str(temp / MODEL_FILE))
            _fsync(temp / MODEL_FILE)
            if os.environ.get(STALL_ENV) == str(step):
                time.sleep(3600)  # test hook: be killed in the middle of a write
            _torch_save(optimizer.state_dict(), temp / OPTIMIZER_FILE)
            _torch_save(lr_scheduler.state_dict(), temp / SCHEDULER_FILE)
            if grad_scaler is not None:
                _torch_save(grad_scaler.state_dict(), temp / SCALER_FILE)
            _torch_save(data_state, temp / DATA_FILE)
            (temp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, default=str))
            _fsync(temp / STATE_FILE)
        _torch_save(rng_state, temp / rng_file(self.rank))
        self._barrier()

        if self.rank == 0:
            files = {
                p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(temp.iterdir())
                if p.is_file()
            }
            manifest = {
                "format": FORMAT,
                "complete": True,
                "step": step,
                "epoch": epoch,
                "world_size": self.world_size,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "config_digest": self.metadata.get("config_digest"),
                "model_digest": model_digest(model),
                "model_class": type(unwrap_model(model)).__name__,
                "versions": _versions(),
                "git_sha": self.metadata.get("git_sha"),
                "image_digest": self.metadata.get("image_digest"),
                "metrics": dict(metrics or {}),
                "files": files,
            }
            (temp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            _fsync(temp / MANIFEST)
            _fsync(temp)
            if final.exists():  # an incomplete leftover of the same step: move it out of the way
                self._remove(final)
            os.rename(temp, final)
            _fsync(self.dir)
            self.prune()
        self._barrier()
        return final

    def _remove(self, path: Path) -> None:
        """Delete a checkpoint directory so that no half-deleted `checkpoint-<step>` is ever visible."""
        doomed = self.dir / f".tmp-delete-{path.name}-{self.owner_pid}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def prune(self) -> list[Path]:
        """Delete all but the newest `save_total_limit` checkpoints (and the best one, if kept)."""
        if self.save_total_limit is None or self.rank != 0:
            return []
        checkpoints = self.list()
        keep = set(checkpoints[-self.save_total_limit :])
        if self.keep_best and (best := self.best()) is not None:
            keep.add(best)
        removed = [path for path in checkpoints if path not in keep]
        for path in removed:
            self._remove(path)
        return removed

    def clean_temp_dirs(self) -> list[Path]:
        """Delete `.tmp-*` leftovers of interrupted writes by processes no longer running (rank 0)."""
        if self.rank != 0 or not self.dir.is_dir():
            return []
        removed = []
        for path in self.dir.iterdir():
            match = TEMP_RE.match(path.name)
            if not match or not path.is_dir():
                continue
            pid = int(match.group(1))
            if pid != os.getpid() and _pid_alive(pid):
                continue  # another live process is writing it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def delete_all(self) -> None:
        """Remove every checkpoint of this output_dir (overwrite_output_dir), rank 0 only."""
        if self.rank == 0 and self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.is_dir() and (step_of(path) is not None or TEMP_RE.match(path.name)):
                    self._remove(path) if step_of(path) is not None else shutil.rmtree(path)
        self._barrier()

    # --- reading ---
    def check(
        self, path: str | os.PathLike, model: torch.nn.Module, verify_hashes: bool = True
    ) -> dict:
        """The manifest of `path` after checking it fits this run; CheckpointError naming the cause."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: unknown format {manifest.get('format')!r} (expected {FORMAT})"
            )
        if manifest.get("complete") is not True:
            raise CheckpointError(
                f"{path}: incomplete checkpoint (manifest says complete={manifest.get('complete')!r})"
            )
        if manifest.get("world_size") != self.world_size:
            raise CheckpointError(
                f"{path}: written by world size {manifest.get('world_size')}, this run has world size "
                f"{self.world_size} (resuming needs the same number of processes)"
            )
        digest = model_digest(model)
        if manifest.get("model_digest") != digest:
            raise CheckpointError(
                f"{path}: model_digest mismatch: the checkpoint belongs to another model "
                f"({manifest.get('model_class')}, digest {str(manifest.get('model_digest'))[:12]}) "
                f"than this run's ({type(unwrap_model(model)).__name__}, digest {digest[:12]})"
            )
        files = manifest.get("files") or {}
        for name in (*REQUIRED_FILES, rng_file(self.rank)):
            if name not in files:
                raise CheckpointError(f"{path}: the manifest lists no {name}")
        for name, info in files.items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{path}: missing file {name}")
            if file.stat().st_size != info.get("bytes"):
                raise CheckpointError(
                    f"{path}: {name} has {file.stat().st_size} bytes, the manifest says {info.get('bytes')}"
                )
            if verify_hashes and _sha256(file) != info.get("sha256"):
                raise CheckpointError(
                    f"{path}: {name} is corrupt (sha256 differs from the manifest)"
                )
        return manifest

    def load(
        self,
        path: str | os.PathLike,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        grad_scaler: Any = None,
        verify_hashes: bool = True,
    ) -> LoadedCheckpoint:
        """Check `path`, read every file, then load weights, optimizer, scheduler and scaler states.

        Returns the trainer state, data state and this rank's RNG state for the caller to apply.
        The manifest, world size, model digest and every file's size and sha256 are checked, and all
        files are read, before anything is loaded; a state that still does not fit (say, an optimizer
        of another kind) raises CheckpointError naming it. Nothing on disk is ever changed.
        """
        path = Path(path)
        manifest = self.check(path, model, verify_hashes)
        try:
            optimizer_state = _torch_load(path / OPTIMIZER_FILE)
            scheduler_state = _torch_load(path / SCHEDULER_FILE)
            data_state = _torch_load(path / DATA_FILE)
            rng_state = _torch_load(path / rng_file(self.rank))
            trainer_state = json.loads((path / STATE_FILE).read_text())
            scaler_state = (
                _torch_load(path / SCALER_FILE) if (path / SCALER_FILE).exists() else None
            )
        except Exception as error:
            raise CheckpointError(
                f"{path}: cannot read: {type(error).__name__}: {error}"
            ) from error
        if grad_scaler is not None and scaler_state is None:
            raise CheckpointError(
                f"{path}: this run uses fp16 but the checkpoint has no {SCALER_FILE}"
            )
        target = unwrap_model(model)
        steps = (
            ("model weights", lambda: _load_weights(target, path / MODEL_FILE)),
            ("optimizer state", lambda: optimizer and optimizer.load_state_dict(optimizer_state)),
            (
                "scheduler state",
                lambda: lr_scheduler and lr_scheduler.load_state_dict(scheduler_state),
            ),
            (
                "grad scaler state",
                lambda: grad_scaler and grad_scaler.load_state_dict(scaler_state),
            ),
        )
        for what, apply in steps:
            try:
                apply()
            except Exception as error:
                message = " ".join(str(error).split())
                raise CheckpointError(f"{path}: cannot load {what}: {message}") from error
        return LoadedCheckpoint(path, manifest, trainer_state, data_state, rng_state)


def _load_weights(model: torch.nn.Module, file: Path) -> None:
    device = next(model.parameters()).device
    missing, unexpected = load_safetensors_model(model, str(file), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "LoadedCheckpoint",
    "best_checkpoint",
    "checkpoints_dir",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "model_digest",
    "read_manifest",
    "resolve_checkpoint",
    "step_of",
]
