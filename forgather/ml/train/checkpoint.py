"""Atomic, sharded training checkpoints with a manifest, exact resume, and resharding.

The format (names, manifest, finding checkpoints) is owned by `checkpoint_format`; this module writes
and loads checkpoints with torch. Weights and optimizer state go through torch.distributed.checkpoint
(DCP): every rank writes its own shards in parallel (no gather to rank 0), keyed by parameter name, so
a checkpoint loads into another world size or strategy (DDP on 2 ranks -> FSDP on 4 -> 1 process).
Rank 0 writes the small replicated files; every rank writes its RNG file and hashes the files it
wrote; rank 0 writes the manifest last and renames the directory into place. Loading checks
everything (manifest, model digest, every file's size and hash) before it changes anything, and
reports any problem as one `CheckpointError` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
)

from forgather.ml.train.checkpoint_format import (
    DATA_FILE,
    DCP_METADATA,
    FORMAT,
    HF_DIR,
    LEGACY_FORMAT,
    MANIFEST,
    MODEL_DIR,
    OPTIMIZER_DIR,
    REQUIRED_FILES,
    SCALER_FILE,
    SCHEDULER_FILE,
    STATE_FILE,
    TEMP_RE,
    CheckpointError,
    best_checkpoint,
    check_files,
    checkpoints_dir,
    file_entries,
    is_complete,
    is_rank_file,
    latest_checkpoint,
    list_checkpoints,
    manifest_problem,
    rank_data_file,
    read_manifest,
    resolve_checkpoint,
    rng_file,
    step_of,
)
from forgather.ml.train.checkpoint_storage import StorageGroups, detect_storage, sync_files
from forgather.ml.train.run_lock import OutputDirInUse, RunLock, machine_key
from forgather.ml.unwrap import local_nbytes, model_class_name, unwrap_model

# Test hook: with FORGATHER_TEST_CHECKPOINT_STALL=<step>, the write of checkpoint <step> stops (sleeps)
# after the model weights, so a test can kill the process in the middle of a checkpoint write.
STALL_ENV = "FORGATHER_TEST_CHECKPOINT_STALL"
# Set by `fgl up --elastic`: copy every checkpoint file to every node (trainer_args.save_on_each_node).
SAVE_ON_EACH_NODE_ENV = "FORGATHER_SAVE_ON_EACH_NODE"


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


STALE_TEMP_SECONDS = 24 * 3600
"""A temp dir written by another machine (or container, or boot) untouched this long is a leftover."""


def _writer_may_run(match: re.Match, path: Path) -> bool:
    """Whether the process named by a temp dir's `-<machine>-<pid>` may still be writing it."""
    machine, pid = match["machine"], int(match["pid"])
    if machine is None or machine == machine_key():  # older names: a pid of this host
        return _pid_alive(pid)
    try:
        return time.time() - path.stat().st_mtime < STALE_TEMP_SECONDS
    except OSError:
        return False


@dataclass
class LoadedCheckpoint:
    """What `CheckpointManager.load` read besides the weights and optimizer/scheduler states it applied."""

    path: Path
    manifest: dict[str, Any]
    trainer_state: dict[str, Any]
    data_state: dict[str, Any]
    rng_state: dict[str, Any]
    rank_data_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class CheckpointManager:
    """Writes, prunes, finds and loads checkpoints of one run.

    `env` is the `DistributedEnvironment` (None: single process). Every rank writes its shards of
    the weights and optimizer state (DCP) and its RNG file; rank 0 the small shared files and the
    manifest, with barriers between the phases. `metadata` may set `config_digest`,
    `hyperparameters`, `git_sha` and `image_digest` of the manifest; a checkpoint trained with
    other `hyperparameters` than this run's is refused at load unless
    `allow_changed_hyperparameters` (then rank 0 says which changed).

    On nodes without a shared filesystem (found at the first save or load, `checkpoint_storage`) each
    node's directory gets the shared files and the manifest, and the lowest rank of each node renames,
    prunes and cleans there; `save_on_each_node` copies every shard to every node as well, and a load
    first gives each node the files it lacks. The methods that say "collective" must be called by all
    ranks together.
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
        save_on_each_node: bool = False,
        allow_changed_hyperparameters: bool = False,
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
        self.allow_changed_hyperparameters = allow_changed_hyperparameters
        self.save_on_each_node = save_on_each_node or os.environ.get(SAVE_ON_EACH_NODE_ENV) == "1"
        self._storage: StorageGroups | None = None
        self._lock = RunLock(self.output_dir)
        # Every rank names temp dirs after rank 0's machine and pid (one name on every node).
        self.writer = self._broadcast(f"{machine_key()}-{os.getpid()}")

    # --- collectives (no-ops in one process) ---
    def _barrier(self) -> None:
        if self.env is not None:
            self.env.barrier()

    def _broadcast(self, obj: Any) -> Any:
        return self.env.broadcast_object(obj) if self.env is not None else obj

    def _all_gather(self, obj: Any) -> list[Any]:
        return self.env.all_gather_object(obj) if self.env is not None else [obj]

    @property
    def storage(self) -> StorageGroups:
        """Which ranks share the checkpoint directory (collective the first time)."""
        if self._storage is None:
            self._storage = detect_storage(self.output_dir, self.env)
            if not self._storage.shared and self.rank == 0:
                copies = (
                    "every checkpoint file is copied to every node"
                    if self.save_on_each_node
                    else "each node keeps its ranks' shards and a copy of the shared files"
                )
                sys.stderr.write(
                    f"forgather: {self.output_dir} is local to each node "
                    f"({self._storage.describe()} see one directory each): {copies}\n"
                )
        return self._storage

    def _on_leaders(self, value: Any) -> list[Any]:
        """`value` of every storage group's leader, in group order (collective)."""
        storage = self.storage
        views = self._all_gather(value if storage.is_leader else None)
        return [views[leader] for leader in storage.leaders]

    # --- finding ---
    def list(self) -> list[Path]:
        return list_checkpoints(self.output_dir)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.output_dir)

    def best(self) -> Path | None:
        return best_checkpoint(self.output_dir, self.metric_for_best_model, self.greater_is_better)

    def lock_output_dir(self) -> None:
        """Hold the output directory for this run (collective: each node's storage leader locks
        its directory). OutputDirInUse, on every rank, when another run holds it."""
        outcome: tuple[str | None, str | None] = (None, None)
        if self.storage.is_leader:
            try:
                outcome = (None, self._lock.acquire())
            except OutputDirInUse as error:
                outcome = (str(error), None)
        results = self._on_leaders(outcome)
        refused = [problem for problem, _ in results if problem]
        if refused:
            self._lock.release()
            raise OutputDirInUse(refused[0])
        warnings = [warning for _, warning in results if warning]
        if warnings and self.rank == 0:
            sys.stderr.write(f"forgather: warning: {warnings[0]}\n")

    def unlock_output_dir(self) -> None:
        self._lock.release()

    def latest_on_any_node(self) -> Path | None:
        """The newest complete checkpoint in any node's directory (collective)."""
        latest = self.latest()
        steps = [s for s in self._on_leaders(step_of(latest) if latest else None) if s is not None]
        return self.dir / f"checkpoint-{max(steps)}" if steps else None

    def resolve(self, spec: bool | str | os.PathLike) -> Path:
        """The checkpoint `resume_from_checkpoint=spec` names (collective). With node-local
        directories "latest" is the newest step complete on every node (else on any node)."""
        if self.storage.shared:
            return resolve_checkpoint(self.output_dir, spec)
        if spec is True or spec == "latest":
            views = self._on_leaders([step_of(p) for p in self.list()])
            everywhere = set.intersection(*(set(v) for v in views))
            anywhere = set().union(*views)
            if not anywhere:
                raise CheckpointError(
                    f"cannot resume: no complete checkpoint in {self.dir} on any node"
                )
            return self.dir / f"checkpoint-{max(everywhere or anywhere)}"
        path = Path(spec)
        if not any(self._on_leaders(path.is_dir())):
            raise CheckpointError(f"cannot resume: checkpoint {path} does not exist on any node")
        return path

    # --- writing ---
    def _check_free_space(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        """CheckpointError on every rank, before anything is written, when a storage's free space
        is below the checkpoint's size (the weights and optimizer state all ranks hold, + 5%):
        a full disk must not interrupt a write half-way (collective)."""
        tensors = [*model.state_dict().values()]
        for state in optimizer.state.values():
            tensors += [t for t in state.values() if isinstance(t, torch.Tensor)]
        local = sum(local_nbytes(t) for t in tensors)
        need = int(sum(self._all_gather(local)) * 1.05)
        free = None
        if self.storage.is_leader:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.dir if self.dir.exists() else self.dir.parent).free
        least = min(f for f in self._on_leaders(free) if f is not None)
        if least < need:
            raise CheckpointError(
                f"not enough free space in {self.dir} for checkpoint {step}: it needs about "
                f"{_gib(need)}, {_gib(least)} are free; free space (or lower save_total_limit) "
                "and resume: the complete checkpoints are kept"
            )

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
        tokenizer: Any = None,
        strategy: Any = None,
        rank_data_state: dict[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint `step` atomically (all ranks call this); returns its final path.

        `model` is the module the optimizer's parameters belong to (sharded or not, not a DDP
        wrapper); `strategy` (a `parallel.Strategy`, None for plain) decides how the optimizer
        state is stored. `rank_data_state`, this rank's own data position (a stream's), is written
        beside its RNG state. A complete checkpoint of the same step already on disk is kept as it is.
        """
        final = self.dir / f"checkpoint-{step}"
        temp = self.dir / f".tmp-checkpoint-{step}-{self.writer}"
        storage = self.storage
        if all(self._on_leaders(is_complete(final))):
            return final
        model = unwrap_model(model)
        self._check_free_space(step, model, optimizer)
        if storage.is_leader:
            self.dir.mkdir(parents=True, exist_ok=True)
            if temp.exists():
                shutil.rmtree(temp)
            temp.mkdir()
        self._barrier()

        _dcp_save(get_model_state_dict(model), temp / MODEL_DIR)
        if os.environ.get(STALL_ENV) == str(step):
            time.sleep(3600)  # test hook: be killed in the middle of a write
        optimizer_state = (
            strategy.optimizer_state_dict(model, optimizer)
            if strategy is not None
            else get_optimizer_state_dict(model, optimizer)
        )
        _dcp_save(optimizer_state, temp / OPTIMIZER_DIR)
        if self.rank == 0:
            _torch_save(lr_scheduler.state_dict(), temp / SCHEDULER_FILE)
            if grad_scaler is not None:
                _torch_save(grad_scaler.state_dict(), temp / SCALER_FILE)
            _torch_save(data_state, temp / DATA_FILE)
            (temp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, default=str))
            _fsync(temp / STATE_FILE)
            _save_loading_files(model, temp / HF_DIR, tokenizer)
        _torch_save(rng_state, temp / rng_file(self.rank))
        if rank_data_state is not None:
            _torch_save(rank_data_state, temp / rank_data_file(self.rank))
        self._barrier()
        # Every rank hashes the files it wrote (in parallel); rank 0 also the shared ones.
        entries = (
            self.env.gather_object(self._own_files(temp)) if self.env else [self._own_files(temp)]
        )
        manifest = None
        if self.rank == 0:
            files = dict(sorted((k, v) for part in entries for k, v in part.items()))
            manifest = {
                "format": FORMAT,
                "complete": True,
                "step": step,
                "epoch": epoch,
                "world_size": self.world_size,
                "parallelism": strategy.name if strategy is not None else "ddp",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "config_digest": self.metadata.get("config_digest"),
                "hyperparameters": self.metadata.get("hyperparameters"),
                "model_digest": strategy.model_digest(model)
                if strategy is not None
                else model_digest(model),
                "model_class": model_class_name(model),
                "versions": _versions(),
                "git_sha": self.metadata.get("git_sha"),
                "image_digest": self.metadata.get("image_digest"),
                "metrics": dict(metrics or {}),
                "files": files,
            }
        if not storage.shared:
            manifest = self._broadcast(manifest)
            copied = sorted(manifest["files"])
            if not self.save_on_each_node:
                copied = [name for name in copied if not is_rank_file(name)]
            sync_files(temp, copied, storage, self.env)
        if storage.is_leader:
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

    def _own_files(self, temp: Path) -> dict[str, dict[str, Any]]:
        """Manifest entries of the files this rank wrote (its shards, RNG and stream files; rank 0 the rest)."""
        mine = [rng_file(self.rank)]
        if (temp / rank_data_file(self.rank)).is_file():
            mine.append(rank_data_file(self.rank))
        for sub in (MODEL_DIR, OPTIMIZER_DIR):
            shards = sorted(p.name for p in (temp / sub).glob(f"__{self.rank}_*.distcp"))
            mine += [f"{sub}/{name}" for name in shards]
        if self.rank == 0:
            shared = [
                p.relative_to(temp).as_posix()
                for p in temp.rglob("*")
                if p.is_file() and not is_rank_file(p.name)
            ]
            mine += shared
        for name in mine:
            _fsync(temp / name)
        return file_entries(temp, sorted(set(mine)))

    def _remove(self, path: Path) -> None:
        """Delete a checkpoint directory so that no half-deleted `checkpoint-<step>` is ever visible."""
        doomed = self.dir / f".tmp-delete-{path.name}-{self.writer}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def prune(self) -> list[Path]:
        """Delete all but the newest `save_total_limit` checkpoints (and the best one, if kept), in
        this node's directory (its storage leader only; `save` calls it)."""
        if self.save_total_limit is None or not self.storage.is_leader:
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
        """Delete `.tmp-*` leftovers of interrupted writes (collective; each node's storage leader
        cleans its directory). While this run holds the output dir's lock no other run writes
        there, so every temp dir is a leftover; without the lock (a filesystem that cannot lock)
        only those whose writer is known to be gone: a dead pid of this machine and boot, or a
        writer elsewhere silent for `STALE_TEMP_SECONDS`."""
        if not self.storage.is_leader or not self.dir.is_dir():
            return []
        removed = []
        for path in self.dir.iterdir():
            match = TEMP_RE.match(path.name)
            if not match or not path.is_dir():
                continue
            writer = f"{match['machine']}-{match['pid']}" if match["machine"] else None
            if writer != self.writer and not self._lock.held and _writer_may_run(match, path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def delete_all(self) -> None:
        """Remove every checkpoint of this output_dir (overwrite_output_dir); collective, each
        node's storage leader deletes in its directory."""
        if self.storage.is_leader and self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.is_dir() and (step_of(path) is not None or TEMP_RE.match(path.name)):
                    self._remove(path) if step_of(path) is not None else shutil.rmtree(path)
        self._barrier()

    # --- reading ---
    def check(
        self,
        path: str | os.PathLike,
        model: torch.nn.Module,
        verify_hashes: bool = True,
        strategy: Any = None,
    ) -> dict:
        """The manifest of `path` after checking it fits this run; CheckpointError naming the cause."""
        path = Path(path)
        manifest = read_manifest(path)
        if problem := manifest_problem(manifest):
            raise CheckpointError(f"{path}: {problem}")
        if manifest.get("format") == LEGACY_FORMAT:
            raise CheckpointError(
                f"{path}: format {LEGACY_FORMAT} (one model.safetensors) loads for inference but "
                f"cannot be resumed; this trainer resumes {FORMAT} checkpoints"
            )
        digest = strategy.model_digest(model) if strategy is not None else model_digest(model)
        if manifest.get("model_digest") != digest:
            raise CheckpointError(
                f"{path}: model_digest mismatch: the checkpoint belongs to another model "
                f"({manifest.get('model_class')}, digest {str(manifest.get('model_digest'))[:12]}) "
                f"than this run's ({model_class_name(model)}, digest {digest[:12]})"
            )
        self._check_hyperparameters(path, manifest)
        files = manifest.get("files") or {}
        for name in REQUIRED_FILES:
            if name not in files:
                raise CheckpointError(f"{path}: the manifest lists no {name}")
        check_files(path, manifest, verify_hashes)
        return manifest

    def _check_hyperparameters(self, path: Path, manifest: dict[str, Any]) -> None:
        """Refuse a checkpoint trained with other `hyperparameters` than this run's metadata says
        (older checkpoints record none), unless `allow_changed_hyperparameters`: then say so."""
        recorded = manifest.get("hyperparameters") or {}
        current = self.metadata.get("hyperparameters") or {}
        normal = lambda value: json.loads(json.dumps(value))  # noqa: E731 (tuples as lists)
        changed = [
            f"{name} {recorded[name]!r} -> {value!r}"
            for name, value in current.items()
            if name in recorded and normal(recorded[name]) != normal(value)
        ]
        if not changed:
            return
        if not self.allow_changed_hyperparameters:
            raise CheckpointError(
                f"{path} was trained with other hyper-parameters: {', '.join(changed)}; restore "
                "them, or resume with the new ones: trainer_args.allow_changed_hyperparameters=true"
            )
        if self.rank == 0:
            sys.stderr.write(
                f"forgather: resuming {path.name} with changed hyper-parameters: "
                f"{', '.join(changed)}\n"
            )

    def load(
        self,
        path: str | os.PathLike,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        grad_scaler: Any = None,
        verify_hashes: bool = True,
        strategy: Any = None,
    ) -> LoadedCheckpoint:
        """Check `path`, read every file, then load weights, optimizer, scheduler and scaler states.

        `model` is the module the optimizer's parameters belong to, sharded or not: DCP reshards the
        saved tensors into whatever layout this run has. Returns the trainer state, data state and
        this rank's RNG state (None when the checkpoint's world had no such rank) for the caller to
        apply. The manifest, model digest and every file's size and sha256 are checked, and all
        small files read, before anything is loaded; a state that still does not fit (say, an
        optimizer of another kind) raises CheckpointError naming it. Nothing on disk is changed.
        """
        path = Path(path)
        if not self.storage.shared:
            self._gather_files(path)
        manifest = self.check(path, model, verify_hashes, strategy)
        own_rng = path / rng_file(self.rank)
        own_data = path / rank_data_file(self.rank)
        try:
            scheduler_state = _torch_load(path / SCHEDULER_FILE)
            data_state = _torch_load(path / DATA_FILE)
            rng_state = _torch_load(own_rng) if own_rng.is_file() else None
            rank_data_state = _torch_load(own_data) if own_data.is_file() else None
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
            (
                "model weights",
                lambda: load_model_weights(
                    target, path / MODEL_DIR, partial=bool(getattr(strategy, "runs_steps", False))
                ),
            ),
            (
                "optimizer state",
                lambda: optimizer and _load_optimizer(target, optimizer, path, strategy, manifest),
            ),
            (
                "scheduler state",
                lambda: lr_scheduler and _load_scheduler(lr_scheduler, scheduler_state, optimizer),
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
                message = " ".join(str(error).split())[:400]
                raise CheckpointError(f"{path}: cannot load {what}: {message}") from error
        return LoadedCheckpoint(
            path, manifest, trainer_state, data_state, rng_state, rank_data_state
        )

    def load_weights(self, path: str | os.PathLike, model: torch.nn.Module) -> None:
        """Load only the model weights of checkpoint `path` into `model` (collective)."""
        path = Path(path)
        if not self.storage.shared:
            self._gather_files(path)
        load_model_weights(unwrap_model(model), path / MODEL_DIR)

    def _gather_files(self, path: Path) -> None:
        """Node-local directories: give each node's copy of checkpoint `path` the files it lacks."""
        try:
            listed = sorted(read_manifest(path).get("files") or {})
        except CheckpointError:
            listed = None
        known = [names for names in self._on_leaders(listed) if names is not None]
        if not known:
            raise CheckpointError(f"{path}: no {MANIFEST} on any node")
        sync_files(path, [MANIFEST, *known[0]], self.storage, self.env)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _dcp_save(state: dict[str, Any], directory: Path) -> None:
    with warnings.catch_warnings():  # in one process DCP warns that it assumes one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=directory, no_dist=not _distributed())


def _dcp_load(state: dict[str, Any], directory: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=directory, no_dist=not _distributed())


def _dcp_keys(directory: Path) -> set[str]:
    return set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)


def load_model_weights(
    model: torch.nn.Module, directory: str | os.PathLike, partial: bool = False
) -> None:
    """Load the DCP weights in `directory` into `model` (sharded or not), every key matching.

    `partial`: the model is one pipeline stage's part, so the checkpoint may hold more keys.
    """
    directory = Path(directory)
    state = get_model_state_dict(model)
    saved = _dcp_keys(directory)
    missing = sorted(set(state) - saved)
    unexpected = [] if partial else sorted(saved - set(state))
    if missing or unexpected:
        raise ValueError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    _dcp_load(state, directory)
    set_model_state_dict(model, state)


def _load_optimizer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    path: Path,
    strategy: Any,
    manifest: dict[str, Any],
) -> None:
    saved = _dcp_keys(path / OPTIMIZER_DIR)

    def load(state: dict[str, Any]) -> None:
        wanted = {key for key in _flatten_keys(state) if ".param_groups" not in f".{key}"}
        missing = sorted(k for k in wanted if k not in saved)
        if missing:
            raise ValueError(
                f"the checkpoint's optimizer state lacks {missing[:3]} (another optimizer?)"
            )
        _dcp_load(state, path / OPTIMIZER_DIR)

    if strategy is None:
        from forgather.ml.train.parallel.base import load_optimizer_state

        load_optimizer_state(model, optimizer, load, manifest)
    else:
        strategy.load_optimizer_state_dict(model, optimizer, load, manifest)


def _load_scheduler(scheduler: Any, state: dict[str, Any], optimizer: Any) -> None:
    """Restore the LR scheduler, and from it the learning rate of every param group (the
    optimizer's param-group settings are not read from checkpoints, only its per-parameter state)."""
    scheduler.load_state_dict(state)
    last = getattr(scheduler, "get_last_lr", None)
    if optimizer is not None and callable(last):
        lrs = last()
        if len(lrs) == len(optimizer.param_groups):
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr


def _flatten_keys(state: Any, prefix: str = "") -> list[str]:
    """DCP's flattened key names (`state.<fqn>.<name>`) of a nested optimizer state dict."""
    if isinstance(state, dict):
        return [
            key
            for name, value in state.items()
            for key in _flatten_keys(value, f"{prefix}.{name}" if prefix else str(name))
        ]
    if isinstance(state, list):
        return [prefix]
    return [prefix]


def _save_loading_files(model: torch.nn.Module, directory: Path, tokenizer: Any) -> None:
    """The `hf/` directory (config, tokenizer, source) of Hugging Face-style models; else nothing."""
    if not hasattr(getattr(model, "config", None), "save_pretrained"):
        return
    from forgather.ml.models.save import save_model_config

    save_model_config(model, directory, tokenizer)
    for file in directory.rglob("*"):
        if file.is_file():
            _fsync(file)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "DCP_METADATA",
    "LoadedCheckpoint",
    "best_checkpoint",
    "checkpoints_dir",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "model_digest",
    "read_manifest",
    "resolve_checkpoint",
    "step_of",
]
