#!/usr/bin/env python3
"""Build the wheelhouse the images install from with `pip install --no-index` (no network at build).

    images/build_wheelhouse.py [--torch torch==2.13.0] [--python-version 3.11] [--no-dev]
                               [--dest DIR] [--pip-arg=--index-url=URL ...]

Layout of the wheelhouse (printed on stdout when done):

    deps/*.whl                    third-party wheels: torch (pinned), forgather's dependencies, and
                                  (unless --no-dev) pytest, ruff, hypothesis, setuptools, wheel
    deps/requirements.txt         forgather's runtime requirements, torch replaced by the pin
    deps/requirements-dev.txt     the dev tools and the build backend (editable installs)
    forgather/forgather-*.whl     the wheel of this checkout (`pip wheel --no-deps`)
    manifest.json                 versions (forgather, torch, python), git revision, input keys

Dependencies and the forgather wheel are cached separately under
`${FORGATHER_IMAGES_CACHE:-~/.cache/forgather-images}`: `deps-<key>` is keyed by the requirement lists,
the torch pin, the target Python/platform and this script; `forgather-<key>` by the hash of the
package sources. A rerun with unchanged inputs does no network and no build; the wheelhouse itself is
a directory of hard links to those caches. `--dest DIR` puts a copy (hard links where possible) at DIR,
for example `wheelhouse/` in the build context.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TORCH = "torch==2.13.0"
# What a wheel of forgather is built from (setuptools reads these); anything else does not change it.
SOURCE_PATHS = ("pyproject.toml", "README.md", "forgather")
BUILD_TOOLS = ("setuptools>=68", "wheel")
KEEP = 4  # wheelhouses and forgather wheels kept in the cache (oldest removed first)


def log(message: str) -> None:
    print(f"build_wheelhouse: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The cache directory shared by the image helpers."""
    if env := os.environ.get("FORGATHER_IMAGES_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "forgather-images"


def digest(*parts: str | bytes) -> str:
    """sha256 of the parts, each length-prefixed, as hex."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def source_files(repo: Path) -> list[Path]:
    """The files a forgather wheel is built from, sorted."""
    files: list[Path] = []
    for name in SOURCE_PATHS:
        path = repo / name
        if path.is_file():
            files.append(path)
            continue
        for p in path.rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
                files.append(p)
    return sorted(files)


def source_hash(repo: Path) -> str:
    """Hash of the forgather sources (relative paths and contents)."""
    parts: list[str | bytes] = []
    for path in source_files(repo):
        parts += [str(path.relative_to(repo)), path.read_bytes()]
    return digest(*parts)


def project_metadata(repo: Path) -> dict:
    """`[project]` of pyproject.toml."""
    return tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirement_name(requirement: str) -> str:
    """Normalized distribution name of a requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise SystemExit(f"build_wheelhouse: cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirement_lists(project: dict, torch: str, dev: bool) -> tuple[list[str], list[str]]:
    """(runtime requirements with torch replaced by the pin, dev requirements)."""
    runtime = [r for r in project.get("dependencies", []) if requirement_name(r) != "torch"]
    runtime.append(torch)
    dev_reqs = (
        [*project.get("optional-dependencies", {}).get("dev", []), *BUILD_TOOLS] if dev else []
    )
    return runtime, dev_reqs


def git_revision(repo: Path) -> str:
    """HEAD's sha, with `-dirty` when tracked files differ; `unknown` outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def run(command: list[str], **kwargs) -> None:
    log("$ " + " ".join(command))
    subprocess.run(command, check=True, stdout=sys.stderr, **kwargs)


def fill_deps(dest: Path, runtime: list[str], dev: list[str], args: argparse.Namespace) -> None:
    """Download (or build) wheels of every requirement and their dependencies into `dest`."""
    pip = [sys.executable, "-m", "pip"]
    requirements = [*runtime, *dev]
    if args.python_version or args.platform:
        # Another interpreter or platform than this one: binary wheels only, chosen by tags.
        command = [*pip, "download", "--dest", str(dest), "--only-binary=:all:"]
        if args.python_version:
            command += ["--python-version", args.python_version, "--implementation", "cp"]
        for plat in args.platform or [default_platform()]:
            command += ["--platform", plat]
    else:
        # This interpreter: `pip wheel` also turns any sdist-only dependency into a wheel.
        command = [*pip, "wheel", "--wheel-dir", str(dest)]
    run([*command, *args.pip_arg, *requirements])
    leftovers = [p.name for p in dest.iterdir() if not p.name.endswith(".whl")]
    if leftovers:
        raise SystemExit(f"build_wheelhouse: not wheels: {leftovers}")
    (dest / "requirements.txt").write_text("\n".join(runtime) + "\n", encoding="utf-8")
    (dest / "requirements-dev.txt").write_text("\n".join(dev) + "\n", encoding="utf-8")


def default_platform() -> str:
    return f"manylinux_2_28_{platform.machine()}"


def build_forgather_wheel(repo: Path, dest: Path) -> None:
    """`pip wheel --no-deps` of a copy of the sources (the checkout gets no build/ or egg-info)."""
    with tempfile.TemporaryDirectory(prefix="forgather-src-") as tmp:
        src = Path(tmp)
        for path in source_files(repo):
            target = src / path.relative_to(repo)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        env = dict(os.environ, SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", "315532800"))
        run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dest), str(src)],
            env=env,
        )


def cached(directory: Path, fill) -> Path:
    """`directory`, filled by `fill(tmp)` into a sibling temp dir and renamed, unless complete."""
    if (directory / ".complete").exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        fill(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def link_tree(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` with hard links where the filesystem allows (plain copies otherwise)."""
    for path in sorted(src.rglob("*")):
        if path.name == ".complete":
            continue
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def wheel_version(directory: Path, name: str) -> str:
    """Version of the `name` wheel in `directory` (e.g. `2.13.0+cpu`)."""
    for path in directory.glob("*.whl"):
        parts = path.name.split("-")
        if re.sub(r"[-_.]+", "-", parts[0]).lower() == name:
            return parts[1]
    raise SystemExit(f"build_wheelhouse: no {name} wheel in {directory}")


def prune(root: Path, prefix: str, keep: Path) -> None:
    """Remove all but the newest KEEP directories `root/prefix*` (never `keep`)."""
    dirs = sorted(root.glob(prefix + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [d for d in dirs if d != keep][KEEP - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--torch", default=DEFAULT_TORCH, help=f"torch requirement (default {DEFAULT_TORCH})"
    )
    parser.add_argument(
        "--python-version", help="target Python (e.g. 3.12); default: this interpreter"
    )
    parser.add_argument(
        "--platform", action="append", help="wheel platform tag(s) with --python-version"
    )
    parser.add_argument("--no-dev", action="store_true", help="leave out the dev tools")
    parser.add_argument(
        "--dest", type=Path, help="also put the wheelhouse here (replacing its content)"
    )
    parser.add_argument(
        "--pip-arg", action="append", default=[], help="extra pip argument (repeatable)"
    )
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    started = time.monotonic()
    repo = args.repo.resolve()
    root = cache_root()
    project = project_metadata(repo)
    runtime, dev = requirement_lists(project, args.torch, not args.no_dev)
    target_python = args.python_version or "{}.{}".format(*sys.version_info[:2])
    script = Path(__file__).read_bytes()

    deps_key = digest(
        json.dumps([runtime, dev, args.python_version, args.platform, args.pip_arg]), script
    )[:16]
    deps = cached(root / f"deps-{deps_key}", lambda d: fill_deps(d, runtime, dev, args))

    src_key = source_hash(repo)[:16]
    wheel = cached(root / f"forgather-{src_key}", lambda d: build_forgather_wheel(repo, d))

    house = root / f"wheelhouse-{deps_key}-{src_key}"

    def assemble(tmp: Path) -> None:
        link_tree(deps, tmp / "deps")
        link_tree(wheel, tmp / "forgather")
        manifest = {
            "forgather_version": project["version"],
            "torch_version": wheel_version(deps, "torch"),
            "python_version": target_python,
            "torch_requirement": args.torch,
            "revision": git_revision(repo),
            "deps_key": deps_key,
            "source_key": src_key,
            "dev_tools": not args.no_dev,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    cached(house, assemble)
    for prefix, current in (("wheelhouse-", house), ("forgather-", wheel), ("deps-", deps)):
        current.touch()
        prune(root, prefix, current)

    result = house
    if args.dest:
        dest = args.dest.resolve()
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        link_tree(house, dest)
        result = dest
    log(f"done in {time.monotonic() - started:.1f}s")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
