"""Images: copy one to nodes without a registry (``docker save`` | ``images.load``), pull, build."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from fgl.engine import Node, parallel, raise_first
from fgl.errors import FglError, NodeError
from fgl.inventory import NodeSpec

TARGETS = ("dev", "runtime")


@dataclass(frozen=True)
class ImageRef:
    """An image name as users write it (``name``, ``name:tag``, ``registry/name:tag``, or an id)."""

    ref: str

    @property
    def tagged(self) -> str:
        """The ref with ``:latest`` added when it has no tag (ids and digests unchanged)."""
        if self.ref.startswith("sha256:") or "@" in self.ref:
            return self.ref
        last = self.ref.rsplit("/", 1)[-1]
        return self.ref if ":" in last else f"{self.ref}:latest"

    @property
    def repository(self) -> str:
        return (
            self.tagged.rsplit(":", 1)[0] if ":" in self.tagged.rsplit("/", 1)[-1] else self.tagged
        )

    @property
    def tag(self) -> str | None:
        last = self.tagged.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else None

    def id_on(self, node: Node) -> str | None:
        """The image's id on ``node`` (None when missing)."""
        return node.image_id(self.ref)


@dataclass
class SyncResult:
    node: str
    action: str
    image_id: str | None
    seconds: float = 0.0


def transfer(source: Node, target: Node, ref: ImageRef, expected_id: str) -> SyncResult:
    """Stream ``ref`` from ``source``'s engine into ``target``'s and check the id that arrived."""
    t0 = time.monotonic()
    image = source.client.images.get(ref.ref)
    named = ref.tagged if ref.tagged in image.tags else True
    stream = image.save(named=named)
    try:
        target.client.images.load(stream)
    except docker.errors.APIError as exc:
        raise target.fail(f"loading {ref.ref} failed: {exc.explanation or exc}") from None
    got = target.image_id(ref.ref)
    if got != expected_id:
        raise target.fail(f"after loading, {ref.ref} has id {got} instead of {expected_id}")
    return SyncResult(target.name, "copied", got, time.monotonic() - t0)


def sync_image(
    ref: ImageRef,
    specs: list[NodeSpec],
    source_spec: NodeSpec,
    on_start: Callable[[str], None] = lambda name: None,
) -> list[SyncResult]:
    """Copy the image to every node whose id differs from the source's (in parallel); skip the others."""
    source = Node(source_spec, timeout=None)
    try:
        expected = source.image_id(ref.ref)
        if expected is None:
            raise FglError(
                f"image {ref.ref} is not on the source engine ({source_spec.name}); build or pull it there first"
            )
        targets = [Node(s, rank, timeout=None) for rank, s in enumerate(specs)]
        current = parallel(lambda n: n.image_id(ref.ref), targets)

        def one(pair: tuple[Node, str | None | BaseException]) -> SyncResult:
            node, have = pair
            if isinstance(have, BaseException):
                raise have
            if have == expected:
                return SyncResult(node.name, "present", have)
            if node.spec.target == source_spec.target:
                return SyncResult(node.name, "present", have)
            on_start(node.name)
            return transfer(source, node, ref, expected)

        results = parallel(one, list(zip(targets, current, strict=True)))
        for n in targets:
            n.close()
        raise_first(results)
        return [r for r in results if isinstance(r, SyncResult)]
    finally:
        source.close()


def explain_pull_error(node: str, ref: str, exc: BaseException) -> NodeError:
    """A pull failure as one line; no registry reachable is the common case on a LAN."""
    text = str(getattr(exc, "explanation", None) or exc)
    lowered = text.lower()
    if any(
        s in lowered
        for s in (
            "no such host",
            "dial tcp",
            "lookup",
            "i/o timeout",
            "connection refused",
            "network is unreachable",
        )
    ):
        return NodeError(
            node,
            f"no registry reachable to pull {ref} ({text.splitlines()[0][:160]}); on a LAN without a "
            f"registry copy it from here instead: fgl sync-image {ref} --nodes {node}",
        )
    if "not found" in lowered or "manifest unknown" in lowered or "denied" in lowered:
        return NodeError(node, f"the registry has no {ref} (or needs a login): {text[:200]}")
    return NodeError(node, f"pull {ref} failed: {text[:200]}")


def pull_image(ref: ImageRef, specs: list[NodeSpec]) -> list[SyncResult]:
    """``images.pull`` on every node in parallel."""
    nodes = [Node(s, rank, timeout=None) for rank, s in enumerate(specs)]

    def one(node: Node) -> SyncResult:
        t0 = time.monotonic()
        try:
            image = node.client.images.pull(ref.repository, tag=ref.tag)
        except NodeError:
            raise
        except Exception as exc:
            raise explain_pull_error(node.name, ref.ref, exc) from None
        return SyncResult(node.name, "pulled", image.id, time.monotonic() - t0)

    try:
        results = parallel(one, nodes)
    finally:
        for n in nodes:
            n.close()
    raise_first(results)
    return [r for r in results if isinstance(r, SyncResult)]


# ---------------------------------------------------------------- build


def find_repo_root(start: Path | None = None) -> Path:
    """The forgather checkout holding ``Dockerfile.runtime`` (searching upward from ``start``)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "Dockerfile.runtime").exists() or (d / "Dockerfile.dev").exists():
            return d
    raise FglError(
        f"no Dockerfile.runtime or Dockerfile.dev in {here} or above; run fgl build inside a forgather "
        "checkout (or pass --context)"
    )


def docker_binary() -> str:
    """The docker CLI to build with: ``$FGL_DOCKER``, else /usr/bin/docker (has BuildKit), else PATH."""
    if os.environ.get("FGL_DOCKER"):
        return os.environ["FGL_DOCKER"]
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return shutil.which("docker") or "docker"


def build_command(
    target: str,
    context: Path,
    *,
    tag: str | None = None,
    base_image: str | None = None,
    wheelhouse: str | None = None,
    build_args: list[str] | None = None,
    docker: str = "docker",
) -> list[str]:
    """The ``docker build`` command for ``Dockerfile.<target>`` (``BASE_IMAGE``/``WHEELHOUSE`` build args)."""
    if target not in TARGETS:
        raise FglError(f"build target must be one of {', '.join(TARGETS)}, got {target!r}")
    cmd = [
        docker,
        "build",
        "-f",
        str(context / f"Dockerfile.{target}"),
        "-t",
        tag or f"forgather:{target}",
    ]
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if wheelhouse:
        wh = Path(wheelhouse).expanduser().resolve()
        try:
            rel = wh.relative_to(context.resolve())
        except ValueError:
            raise FglError(
                f"--wheelhouse {wheelhouse} must be inside the build context {context} (docker sends only the context)"
            ) from None
        cmd += ["--build-arg", f"WHEELHOUSE={rel}"]
    for arg in build_args or []:
        if "=" not in arg:
            raise FglError(f"--build-arg {arg!r}: write KEY=VALUE")
        cmd += ["--build-arg", arg]
    cmd.append(str(context))
    return cmd
