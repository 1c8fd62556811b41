"""Checkpoints between this machine and the nodes' own disks: ``fgl fetch`` and ``fgl push``.

On nodes without a shared filesystem each node keeps the checkpoint shards its ranks wrote (and a
copy of the small shared files and the manifest). ``fgl fetch RUN`` collects one checkpoint from all
of a run's nodes into one directory here, verified against its manifest; ``fgl push CHECKPOINT
OUTPUT_DIR`` copies a checkpoint of this machine into ``OUTPUT_DIR/checkpoints/`` on every node.

Only the Docker API is used (no scp, no shared filesystem): on each node a helper container of the
run's image mounts the workspace exactly as the run's containers did and runs as this user, and the
files move through ``get_archive``/``put_archive``. The helper carries the run's label, so ``fgl
down RUN`` removes it if fgl dies mid-copy.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import docker.errors

from fgl.containers import LABEL_NODE, LABEL_RANK, LABEL_ROLE, LABEL_RUN
from fgl.engine import Node, parallel
from fgl.errors import FglError
from fgl.models import file_sha256

ROLE = "transfer"
MANIFEST = "manifest.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
OUTPUT_DIR_RE = re.compile(r"^(?:\[node-\d+\] )?\s*output dir\s+(\S.*?)\s*$")


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


class NodeFiles:
    """A helper container on one node that sees the files the run's containers saw."""

    def __init__(
        self, node: Node, image: str, volumes: dict[str, dict[str, str]], run_id: str
    ) -> None:
        self.node = node
        self.user = f"{os.getuid()}:{os.getgid()}"
        try:
            self.container = node.client.containers.run(
                image,
                command=["sleep", "infinity"],
                entrypoint=[],
                name=f"{run_id}-{ROLE}-{node.rank}-{uuid.uuid4().hex[:6]}",
                labels={
                    LABEL_RUN: run_id,
                    LABEL_ROLE: ROLE,
                    LABEL_RANK: str(node.rank),
                    LABEL_NODE: node.name,
                },
                volumes=volumes,
                network_mode="none",
                detach=True,
            )
        except docker.errors.ImageNotFound:
            raise node.fail(f"image {image} is not on this node") from None
        except docker.errors.APIError as exc:
            raise node.fail(f"cannot start a helper container: {exc.explanation or exc}") from None

    def sh(self, script: str) -> str:
        """Run a shell script in the helper as this user; its output (FglError when it fails)."""
        result = self.container.exec_run(["sh", "-c", script], user=self.user)
        output = result.output.decode(errors="replace") if result.output else ""
        if result.exit_code != 0:
            raise self.node.fail(f"`{script}` failed: {output.strip()[-300:]}")
        return output

    def read(self, path: str) -> bytes | None:
        """The bytes of one file, or None when it does not exist."""
        try:
            stream, _ = self.container.get_archive(path)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            handle = tar.extractfile(member) if member else None
            return handle.read() if handle else None

    def stream(self, path: str) -> Iterator[bytes]:
        """A tar of `path` (its top directory named after it), as chunks."""
        stream, _ = self.container.get_archive(path, chunk_size=1 << 20)
        return stream

    def put(self, directory: str, archive: Any) -> None:
        if not self.container.put_archive(directory, archive):
            raise self.node.fail(f"copying into {directory} failed")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True)


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (for streaming tarfile reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def _safe_relative(name: str) -> str | None:
    """The path of a tar member below its top directory, or None when it must not be written."""
    parts = PurePosixPath(name).parts[1:]
    if not parts or any(part in ("..", "") for part in parts) or PurePosixPath(name).is_absolute():
        return None
    return "/".join(parts)


def _extract_missing(chunks: Iterator[bytes], into: Path) -> tuple[int, int]:
    """Write the regular files of a streamed tar into `into` unless already there; (files, bytes)."""
    files = size = 0
    with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 20), mode="r|") as tar:
        for member in tar:
            relative = _safe_relative(member.name)
            if relative is None or not member.isfile():
                continue
            target = into / relative
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            partial = target.with_name(f".{target.name}.part")
            with partial.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            partial.replace(target)
            files, size = files + 1, size + member.size
    return files, size


# ---------------------------------------------------------------- which checkpoint


def output_dir_from_logs(logs: list[Path], working_dir: str | None) -> str | None:
    """The output directory the trainer announced in a run's logs ("output dir ..." in its summary)."""
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            match = OUTPUT_DIR_RE.match(line)
            if match:
                found = match.group(1)
                if not found.startswith("/") and working_dir:
                    found = str(PurePosixPath(working_dir) / found)
                return found
    return None


LIST_SCRIPT = (
    'for d in {root}/checkpoint-*; do [ -f "$d/manifest.json" ] && basename "$d"; done; true'
)


def complete_checkpoints(helper: NodeFiles, output_dir: str) -> list[str]:
    """Names of the checkpoints of `output_dir` on a node whose manifest says complete."""
    root = shlex.quote(f"{output_dir}/checkpoints")
    names = [n for n in helper.sh(LIST_SCRIPT.format(root=root)).split() if CHECKPOINT_RE.match(n)]
    complete = []
    for name in names:
        data = helper.read(f"{output_dir}/checkpoints/{name}/{MANIFEST}")
        with contextlib.suppress(ValueError, TypeError):
            if data and json.loads(data).get("complete") is True:
                complete.append(name)
    return complete


def choose_checkpoint(views: list[list[str]], wanted: str) -> str:
    """The checkpoint `wanted` names ("latest": the newest one every node has, else any node)."""
    anywhere = set().union(*views)
    if wanted != "latest":
        name = wanted if CHECKPOINT_RE.match(wanted) else f"checkpoint-{wanted}"
        if not CHECKPOINT_RE.match(name):
            raise FglError(f"--checkpoint takes latest, checkpoint-N or N, got {wanted!r}")
        if name not in anywhere:
            raise FglError(f"no node has a complete {name}")
        return name
    if not anywhere:
        raise FglError("no node has a complete checkpoint")
    everywhere = set.intersection(*(set(v) for v in views)) if views else set()
    return max(everywhere or anywhere, key=lambda n: int(CHECKPOINT_RE.match(n).group(1)))


# ---------------------------------------------------------------- fetch


@dataclass
class FetchResult:
    checkpoint: str
    path: Path
    files: int
    bytes: int
    per_node: list[tuple[str, int, int]]


def verify_against_manifest(directory: Path) -> None:
    """FglError naming the first file of the manifest that is missing or differs."""
    manifest = json.loads((directory / MANIFEST).read_text())
    cache: dict[str, str] = {}
    for name, entry in sorted((manifest.get("files") or {}).items()):
        path = directory / name
        if not path.is_file():
            raise FglError(
                f"{name} of {directory.name} is on no node: a node of the run is missing (pass "
                "every node with --nodes) or its disk lost it"
            )
        if entry.get("bytes") is not None and path.stat().st_size != entry["bytes"]:
            raise FglError(
                f"{name}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
            )
        if entry.get("sha256") and file_sha256(path, cache) != entry["sha256"]:
            raise FglError(f"{name}: sha256 differs from the manifest")


def fetch(
    nodes: list[Node],
    image: str,
    volumes: dict[str, dict[str, str]],
    run_id: str,
    output_dir: str,
    wanted: str,
    dest: Path,
    say: Any = print,
) -> FetchResult:
    """Collect checkpoint `wanted` of `output_dir` from every node into `dest/<name>`."""
    helpers: list[NodeFiles] = []
    try:
        started = parallel(lambda n: NodeFiles(n, image, volumes, run_id), nodes)
        helpers = [h for h in started if isinstance(h, NodeFiles)]
        failed = [h for h in started if isinstance(h, BaseException)]
        if failed:
            raise failed[0]
        views = parallel(lambda h: complete_checkpoints(h, output_dir), helpers)
        errors = [v for v in views if isinstance(v, BaseException)]
        if errors:
            raise errors[0]
        name = choose_checkpoint([v for v in views if isinstance(v, list)], wanted)
        final = dest / name
        if final.exists():
            raise FglError(f"{final} exists; remove it or pass another --to")
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".fgl-fetch-{name}-", dir=dest))
        try:
            per_node = []
            for helper in helpers:  # one node at a time: files the first node sent are skipped
                t0 = time.monotonic()
                files, size = _extract_missing(
                    helper.stream(f"{output_dir}/checkpoints/{name}"), staging
                )
                per_node.append((helper.node.name, files, size))
                say(
                    f"{helper.node.name}: {files} file(s), {human_bytes(size)} "
                    f"in {time.monotonic() - t0:.1f} s"
                )
            if not (staging / MANIFEST).is_file():
                raise FglError(f"{name} has no {MANIFEST} on any node")
            verify_against_manifest(staging)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        total_files = sum(f for _, f, _ in per_node)
        total_bytes = sum(b for _, _, b in per_node)
        return FetchResult(name, final, total_files, total_bytes, per_node)
    finally:
        for helper in helpers:
            helper.close()


# ---------------------------------------------------------------- push


def _checkpoint_archive(checkpoint: Path, top: str) -> tempfile.SpooledTemporaryFile:
    """A tar of the checkpoint's files under `top/`, owned by this user, the manifest last."""
    spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - the caller closes it
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST)
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = {PurePosixPath(top)}
        for path in files:
            for parent in PurePosixPath(path.relative_to(checkpoint).as_posix()).parents:
                directories.add(PurePosixPath(top) / parent)
        for directory in sorted(directories, key=lambda d: len(d.parts)):
            info = tarfile.TarInfo(str(directory))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            info.uid, info.gid = os.getuid(), os.getgid()
            tar.addfile(info)
        for path in [*files, checkpoint / MANIFEST]:
            info = tar.gettarinfo(
                str(path), arcname=f"{top}/{path.relative_to(checkpoint).as_posix()}"
            )
            info.uid, info.gid, info.mode = os.getuid(), os.getgid(), 0o644
            info.uname = info.gname = ""
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    spool.seek(0)
    return spool


def check_local_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint directory of this machine (FglError otherwise)."""
    if not CHECKPOINT_RE.match(checkpoint.name):
        raise FglError(f"{checkpoint}: a checkpoint directory is named checkpoint-<step>")
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except FileNotFoundError:
        raise FglError(f"{checkpoint}: no {MANIFEST} (not a checkpoint)") from None
    except (OSError, ValueError) as exc:
        raise FglError(f"{checkpoint / MANIFEST}: unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        raise FglError(f"{checkpoint}: the manifest does not say complete")
    verify_against_manifest(checkpoint)
    return manifest


def push_to_node(helper: NodeFiles, checkpoint: Path, manifest_text: bytes, output_dir: str) -> str:
    """Copy `checkpoint` into `output_dir/checkpoints/` on one node: "present" or "copied"."""
    parent = f"{output_dir}/checkpoints"
    final = f"{parent}/{checkpoint.name}"
    existing = helper.read(f"{final}/{MANIFEST}")
    if existing is not None:
        if existing == manifest_text:
            return "present"
        raise helper.node.fail(
            f"{final} exists and differs from {checkpoint}; nothing was copied (remove it first)"
        )
    helper.sh(f"mkdir -p {shlex.quote(parent)}")
    staging = f".fgl-push-{checkpoint.name}-{uuid.uuid4().hex[:8]}"
    with _checkpoint_archive(checkpoint, staging) as archive:
        helper.put(parent, archive)
    helper.sh(
        f"cd {shlex.quote(parent)} && mv {shlex.quote(staging)} {shlex.quote(checkpoint.name)}"
    )
    return "copied"


def push(
    nodes: list[Node],
    image: str,
    volumes: dict[str, dict[str, str]],
    run_id: str,
    checkpoint: Path,
    output_dir: str,
) -> list[tuple[Node, str | BaseException]]:
    """Copy a local checkpoint to `output_dir/checkpoints/` on every node; per node the outcome."""
    check_local_checkpoint(checkpoint)
    manifest_text = (checkpoint / MANIFEST).read_bytes()

    def one(node: Node) -> str:
        helper = NodeFiles(node, image, volumes, run_id)
        try:
            return push_to_node(helper, checkpoint, manifest_text, output_dir)
        finally:
            helper.close()

    return list(zip(nodes, parallel(one, nodes), strict=True))
