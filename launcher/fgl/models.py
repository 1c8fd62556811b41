"""Model directories on nodes: what to ship, its digest, and a copy per node kept in a Docker volume.

``fgl serve MODEL --node HOST`` serves a model directory of this machine on another node. The node
gets it once per content: the files go into the volume ``fgl-model-<digest>`` on the node's engine
(through a created, never started helper container and ``put_archive``, so only the Docker API is
needed, no shared filesystem or scp), and a marker written last says the copy is complete. A later
serve of the same content finds the volume and copies nothing.

What ships: the model directory's files (``config.json``, weights, tokenizer, model source), without a
training run's ``checkpoints/`` and ``runs/``; when MODEL is a checkpoint, its weights and manifest go
along under ``checkpoints/<name>/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from fgl.engine import Node
from fgl.errors import FglError

MOUNT = "/models/model"
MARKER = ".fgl-model"
SKIPPED_DIRS = {"checkpoints", "runs", "__pycache__"}
SKIPPED_FILES = {".forgather-run.lock"}  # the trainer's lock of its output directory
# What serving a training checkpoint needs (never the optimizer state): its manifest, its weights
# (`model/`, sharded DCP files; `model.safetensors` in format 1) and its model config (`hf/`).
CHECKPOINT_MANIFEST = "manifest.json"
CHECKPOINT_PARTS = ("model.safetensors", "model", "hf")


@dataclass
class ModelSource:
    """A model directory (or a checkpoint of one) on this machine, ready to ship."""

    root: Path
    checkpoint: Path | None
    files: list[tuple[Path, str]]
    digest: str

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def volume(self) -> str:
        return f"fgl-model-{self.digest[:16]}"

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path, _ in self.files)

    def path_in(self, mount: str) -> str:
        """What the server is given, with the model directory at ``mount``."""
        if self.checkpoint is None:
            return mount
        return f"{mount}/checkpoints/{self.checkpoint.name}"


def model_source(path: str | Path) -> ModelSource:
    """The files and digest of a model directory or checkpoint; FglError when it is neither."""
    given = Path(path).expanduser().resolve()
    if not given.is_dir():
        raise FglError(f"model {given} is not a directory")
    checkpoint = None
    root = given
    if (given / CHECKPOINT_MANIFEST).is_file() and not (given / "config.json").is_file():
        checkpoint = given
        if given.parent.name != "checkpoints":
            raise FglError(f"checkpoint {given} is not in a run's checkpoints/ directory")
        root = given.parent.parent  # the run's output directory, nothing above it
        if not (root / "config.json").is_file() and not (given / "hf" / "config.json").is_file():
            raise FglError(f"checkpoint {given} has no hf/config.json and its run no config.json")
    elif not (given / "config.json").is_file():
        raise FglError(
            f"{given} holds neither a model (config.json) nor a checkpoint (manifest.json)"
        )
    files = [
        (p, p.relative_to(root).as_posix())
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.name not in SKIPPED_FILES
        and not (set(p.relative_to(root).parts[:-1]) & SKIPPED_DIRS)
    ]
    if checkpoint is not None:
        parts = [checkpoint / CHECKPOINT_MANIFEST]
        for name in CHECKPOINT_PARTS:
            part = checkpoint / name
            parts += sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else []
            parts += [part] if part.is_file() else []
        if not any(p.name in ("model.safetensors", ".metadata") for p in parts):
            raise FglError(
                f"checkpoint {checkpoint} has no model weights (model/ or model.safetensors)"
            )
        for file in parts:
            relative = file.relative_to(checkpoint).as_posix()
            files.append((file, f"checkpoints/{checkpoint.name}/{relative}"))
    return ModelSource(root, checkpoint, files, content_digest(files))


# ---------------------------------------------------------------- digests


def hash_cache_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fgl" / "file-hashes.json"


def file_sha256(path: Path, cache: dict[str, str]) -> str:
    """SHA-256 of a file, remembered by path, size and modification time."""
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()
    return cache[key]


def content_digest(files: list[tuple[Path, str]]) -> str:
    """One digest of every file's name and content."""
    cache_file = hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    total = hashlib.sha256()
    for path, name in files:
        total.update(f"{name}\0{file_sha256(path, cache)}\n".encode())
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        if len(cache) > 10000:  # keep the cache small: only this model's files
            keep = {f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p, _ in files}
            cache = {k: v for k, v in cache.items() if k in keep}
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass  # a cache we cannot write only costs time
    return total.hexdigest()


# ---------------------------------------------------------------- the copy on a node


def _archive(source: ModelSource) -> tempfile.SpooledTemporaryFile:
    """A tar of the files (owned by root, world-readable) with the completion marker last."""
    spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - the caller closes it
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path, name in source.files:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory not in dirs:
                    dirs.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                    tar.addfile(info)
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
        marker = source.digest.encode()
        info = tarfile.TarInfo(MARKER)
        info.size, info.mode, info.mtime = len(marker), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(marker))
    spool.seek(0)
    return spool


def _read_marker(container) -> str | None:
    try:
        stream, _ = container.get_archive(f"{MOUNT}/{MARKER}")
    except docker.errors.NotFound:
        return None
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(MARKER)
        return member.read().decode() if member else None


def ensure_model(node: Node, source: ModelSource, image: str) -> str:
    """Make sure ``source`` is in its volume on ``node``; returns "present" or "copied"."""
    client = node.client
    try:
        client.volumes.get(source.volume)
        existed = True
    except docker.errors.NotFound:
        existed = False
    if not existed:
        client.volumes.create(
            source.volume,
            labels={"fgl.model-digest": source.digest, "fgl.model-name": source.name},
        )
    helper = client.containers.create(
        image,
        command=["true"],
        entrypoint=[],
        volumes={source.volume: {"bind": MOUNT, "mode": "rw"}},
        labels={"fgl.role": "model-copy"},
        network_mode="none",
    )
    try:
        if existed and _read_marker(helper) == source.digest:
            return "present"
        with _archive(source) as archive:
            if not helper.put_archive(MOUNT, archive):
                raise node.fail(f"copying {source.root} into volume {source.volume} failed")
        if _read_marker(helper) != source.digest:
            raise node.fail(f"the copy of {source.root} in volume {source.volume} is incomplete")
        return "copied"
    except docker.errors.APIError as exc:
        raise node.fail(f"copying the model: {exc.explanation or exc}") from None
    finally:
        helper.remove(force=True)
