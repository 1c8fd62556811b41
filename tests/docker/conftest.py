"""Docker fixtures: a real engine, the offline base image, the wheelhouse and both images.

The session harness
- installs docker.io, debootstrap, docker-compose, openssh-server, iproute2 and iptables with apt when any is missing (root only);
- reuses an engine that answers `docker info`, else starts `dockerd` in the background (log in a tmp
  file) and leaves it running for later sessions;
- builds, through the scripts users run, the debootstrap base (images/build_base.sh), the wheelhouse
  (images/build_wheelhouse.py) and the runtime and dev images (images/build_image.py, BuildKit,
  `--network none`). Images are tagged `forgather-test:<kind>-<key of their inputs>` and reused while
  the inputs are unchanged (FORGATHER_DOCKER_REBUILD=1 forces a build); the build log is kept next
  to the caches so a reused image still shows how it was built;
- prunes the BuildKit cache (`docker builder prune -af`, GBs) after a session that built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKER = "/usr/bin/docker"  # Debian's docker.io client: has BuildKit (the first `docker` on PATH may not)
APT_PACKAGES = {
    "docker.io": "/usr/sbin/dockerd",
    "debootstrap": "/usr/sbin/debootstrap",
    # the Debian archive's keys: build_base.sh checks every package's signature with them
    "debian-archive-keyring": "/usr/share/keyrings/debian-archive-keyring.gpg",
    "docker-compose": "/usr/bin/docker-compose",
    "openssh-server": "/usr/sbin/sshd",
    "openssh-client": "/usr/bin/ssh-keyscan",
    "iproute2": "/usr/sbin/ip",
    "iptables": "/usr/sbin/iptables",
}
SMALL_MODEL = [
    "+model.hidden_size=64",
    "+model.intermediate_size=192",
    "+model.num_hidden_layers=2",
    "trainer_args.per_device_train_batch_size=8",
]
OFFLINE_ENV = ["-e", "HF_HUB_OFFLINE=1", "-e", "HF_DATASETS_OFFLINE=1"]
TINY_LLAMA = "/opt/forgather/examples/tiny_experiments/tiny_llama"

sys.path.insert(0, str(IMAGES))
import build_image  # noqa: E402, F401  (tests use its tag helpers)
import build_wheelhouse  # noqa: E402


@dataclass
class Report:
    """What the session measured, printed in the terminal summary."""

    lines: list[str] = field(default_factory=list)
    built: bool = False

    def add(self, line: str) -> None:
        self.lines.append(line)


REPORT = Report()


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT.lines:
        terminalreporter.section("forgather images")
        for line in REPORT.lines:
            terminalreporter.write_line(line)


def docker(
    *args: str, timeout: float = 600, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    """Run the docker client; text output captured; raises with the output when `check` fails."""
    done = subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"$ docker {' '.join(args)}\nexit {done.returncode}\n--- stdout ---\n{done.stdout[-4000:]}\n"
            f"--- stderr ---\n{done.stderr[-4000:]}"
        )
    return done


def engine_answers() -> bool:
    if not Path(DOCKER).exists():
        return False
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_packages() -> None:
    missing = [pkg for pkg, path in APT_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install as root)")
    subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", *missing],
        check=True,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        capture_output=True,
    )


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> str:
    """A Docker engine that answers; returns the client path."""
    ensure_packages()
    if engine_answers():
        return DOCKER
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers and starting dockerd needs root")
    log = Path(tmp_path_factory.mktemp("dockerd")) / "dockerd.log"
    with open(log, "wb") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if engine_answers():
            REPORT.add(f"started dockerd (log {log}); it keeps running")
            return DOCKER
        time.sleep(1)
    pytest.fail(f"dockerd did not answer within 90 s; log:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def base_image(engine) -> str:
    """The offline Debian base (images/build_base.sh; cached)."""
    started = time.monotonic()
    done = subprocess.run(
        [str(IMAGES / "build_base.sh")], capture_output=True, text=True, timeout=1200, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    tag = done.stdout.strip().splitlines()[-1]
    REPORT.add(f"base image {tag}: {time.monotonic() - started:.1f}s")
    return tag


@pytest.fixture(scope="session")
def wheelhouse(engine) -> Path:
    """The wheelhouse (images/build_wheelhouse.py; cached)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(IMAGES / "build_wheelhouse.py")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    REPORT.add(f"wheelhouse {path}: {time.monotonic() - started:.1f}s")
    return path


def inputs_key(kind: str, base: str, wheelhouse: Path, extra: list[str]) -> str:
    """Digest of what an image is built from: its Dockerfile, images/, examples/, the wheelhouse's
    keys (dependencies, forgather sources), the base image id and the extra build arguments."""
    h = hashlib.sha256()
    base_id = docker("image", "inspect", "-f", "{{.Id}}", base).stdout.strip()
    manifest = json.loads((wheelhouse / "manifest.json").read_text())
    h.update(
        json.dumps([kind, base_id, manifest["deps_key"], manifest["source_key"], extra]).encode()
    )
    for name in (".dockerignore", f"Dockerfile.{kind}", "images", "examples"):
        root = REPO / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            parts = set(path.relative_to(REPO).parts)
            if parts & {"__pycache__", "output_models", "runs"} or path.suffix == ".pyc":
                continue
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def build_log_path(tag: str) -> Path:
    return build_wheelhouse.cache_root() / "test-builds" / (tag.replace(":", "_") + ".log")


def build(kind: str, base: str, wheelhouse: Path, extra: list[str]) -> str:
    """`forgather-test:<kind>-<key>`, built offline with images/build_image.py unless it exists."""
    tag = f"forgather-test:{kind}-{inputs_key(kind, base, wheelhouse, extra)}"
    log = build_log_path(tag)
    exists = docker("image", "inspect", tag, check=False).returncode == 0
    if exists and log.exists() and os.environ.get("FORGATHER_DOCKER_REBUILD") != "1":
        REPORT.add(f"{kind} image {tag}: reused (built earlier with --network none; log {log})")
        return tag
    command = [
        sys.executable, str(IMAGES / "build_image.py"), kind,
        "--base", base, "--wheelhouse", str(wheelhouse), "--tag", tag, "--network", "none", *extra,
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(command)}\n{done.stderr}", encoding="utf-8")
    assert done.returncode == 0, f"{kind} image build failed (log {log}):\n{done.stderr[-6000:]}"
    REPORT.built = True
    REPORT.add(f"{kind} image {tag}: built in {time.monotonic() - started:.1f}s (log {log})")
    remove_stale_images(kind, keep=tag)
    return tag


def remove_stale_images(kind: str, keep: str) -> None:
    """Remove earlier `forgather-test:<kind>-*` images (each holds its own GB-sized venv layer)."""
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "forgather-test", check=False)
    for tag in listed.stdout.split():
        stale = tag.startswith(f"forgather-test:{kind}-") and tag != keep
        # an image a container still uses elsewhere stays (rmi fails)
        if stale and docker("rmi", tag, check=False).returncode == 0:
            build_log_path(tag).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def runtime_image(base_image, wheelhouse):
    """The runtime image on the offline base (CPU torch)."""
    tag = build("runtime", base_image, wheelhouse, [])
    yield tag
    prune_build_cache()


@pytest.fixture(scope="session")
def dev_image(base_image, wheelhouse):
    """The dev image on the offline base (no extra apt packages, so no network)."""
    tag = build("dev", base_image, wheelhouse, ["--build-arg", "DEV_APT_PACKAGES="])
    yield tag
    prune_build_cache()


def prune_build_cache() -> None:
    if REPORT.built:
        REPORT.built = False
        started = time.monotonic()
        out = docker("builder", "prune", "-af", check=False).stdout.strip().splitlines()
        REPORT.add(
            f"docker builder prune -af: {out[-1] if out else ''} ({time.monotonic() - started:.1f}s)"
        )


@pytest.fixture(scope="session")
def run_image():
    """`run_image(image, *args, docker_args=[...])`: `docker run --rm` and its completed process.

    Containers get no network (`--network none`) unless docker_args names one: nothing here needs
    it, and it keeps the tests independent of the engine's default bridge.
    """

    def run(image: str, *args: str, docker_args=(), timeout: float = 300, check=True):
        network = (
            [] if any(a.startswith("--network") for a in docker_args) else ["--network", "none"]
        )
        return docker(
            "run", "--rm", *network, *docker_args, image, *args, timeout=timeout, check=check
        )

    return run


def host_dir(path: Path, uid: int, gid: int) -> Path:
    """`path`, created and owned by uid:gid (a host user's directory)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    return path


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cache directory shared by the training containers (tokenizer, datasets), owned by uid 1234."""
    return host_dir(tmp_path_factory.mktemp("container_cache"), 1234, 1234)


@pytest.fixture(scope="session")
def trained(
    runtime_image, tmp_path_factory, session_cache
) -> tuple[Path, subprocess.CompletedProcess, float]:
    """A 3-step tiny_llama run in the runtime image as PUID/PGID 1234 into a host bind mount."""
    out = host_dir(tmp_path_factory.mktemp("train_out"), 1234, 1234)
    started = time.monotonic()
    done = docker(
        "run", "--rm", "--network", "none", "-e", "PUID=1234", "-e", "PGID=1234", *OFFLINE_ENV,
        "-v", f"{out}:/workspace/out", "-v", f"{session_cache}:/workspace/.cache",
        runtime_image,
        "forgather", "-p", TINY_LLAMA, "train", "--max-steps", "3", "--output-dir", "/workspace/out/tiny",
        "trainer_args.eval_steps=3", "trainer_args.save_steps=3", *SMALL_MODEL,
        timeout=600,
    )  # fmt: skip
    return out / "tiny", done, time.monotonic() - started


def http_json(url: str, timeout: float = 5) -> tuple[int, dict]:
    """(status, JSON body) of GET url; HTTP errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def image_size(image: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())


def wait_for(predicate, timeout: float, interval: float = 0.5):
    """The first truthy predicate() within timeout, else the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def free_port() -> int:
    """A TCP port free on this host right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def which_compose() -> str:
    return shutil.which("docker-compose") or "/usr/bin/docker-compose"


def fgl(env: dict[str, str], *args: str, timeout: float = 300, cwd=None):
    """Run the real ``fgl`` CLI (this interpreter's) with ``env``; its completed process."""
    return subprocess.run(
        [sys.executable, "-m", "fgl.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


class Background(subprocess.Popen):
    """A background ``fgl`` whose stdout and stderr go to a temporary file, never a pipe: a long run
    that prints more than a pipe holds would block on its own output while the test waits for it
    to exit. ``output()`` is what it printed so far."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self._log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115 (lives as long as the process object)
        super().__init__(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read()


def fgl_bg(env: dict[str, str], *args: str) -> Background:
    """Start ``fgl`` in the background, stdout and stderr together in one file."""
    return Background([sys.executable, "-m", "fgl.cli", *args], env)


def the_run(env: dict[str, str]) -> Path:
    """The one run directory under ``$FGL_RUNS_DIR``."""
    (run,) = [p for p in Path(env["FGL_RUNS_DIR"]).iterdir() if p.is_dir()]
    return run


def fgl_env(home: Path, runs: Path) -> dict[str, str]:
    """The environment of an fgl call: this one's, without DOCKER_HOST, with its own HOME (an
    ``.ssh`` folder, no known hosts unless a test adds them) and runs dir."""
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env.update(FGL_RUNS_DIR=str(runs), HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def image_id(image: str) -> str:
    """The id of ``image`` on this machine's engine."""
    return docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip()


def tiny_image(client, tag: str, content: str) -> str:
    """Import a one-file image (enough to save, load and compare ids) on the engine of the Docker SDK
    ``client`` under ``tag``, replacing what had that tag, and return its id."""
    import contextlib
    import io
    import tarfile

    import docker.errors

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = content.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    repository, tag_name = tag.split(":")
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(tag, force=True)  # else each run leaves the previous one dangling
    client.api.import_image_from_data(buf.getvalue(), repository=repository, tag=tag_name)
    return client.images.get(tag).id
