#!/usr/bin/env python3
"""Build the runtime or dev image with its tag and labels filled in from the wheelhouse.

    images/build_image.py runtime|dev [--base IMAGE] [--wheelhouse DIR] [--tag NAME:TAG]
                          [--cuda 12.8|cpu] [--uid N --gid N] [--network none]
                          [--build-arg K=V ...] [--no-alias] [--dry-run]

Without --wheelhouse it runs images/build_wheelhouse.py (cached). The build context is a temporary
directory holding this checkout's Dockerfiles, images/, examples/, the package sources and the
wheelhouse (hard links), so nothing is written into the checkout. The image is tagged

    forgather:<version>-py<python>-<cu12.8|cpu>-torch<torch>[-dev]

plus forgather:latest (runtime) or forgather:dev (dev) unless --no-alias. Prints the tag on stdout.
Uses BuildKit (DOCKER_BUILDKIT=1) and the docker client in $DOCKER, else /usr/bin/docker, else docker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import build_wheelhouse  # noqa: E402

DEFAULT_BASES = {
    "runtime": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
    "dev": "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04",
}
# What the Dockerfiles COPY or mount from the context (the wheelhouse is added as wheelhouse/);
# the dev image also copies the package sources.
CONTEXT_PATHS = (
    ".dockerignore",
    "Dockerfile.runtime",
    "Dockerfile.dev",
    "images",
    "examples",
    "pyproject.toml",
    "README.md",
    "forgather",
)
IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", "output_models", "runs", ".pytest_cache", ".hypothesis"
)


def docker_binary() -> str:
    """The docker client to use: $DOCKER, else Debian's /usr/bin/docker (has BuildKit), else docker."""
    if env := os.environ.get("DOCKER"):
        return env
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def cuda_flavor(
    base: str, torch_version: str, requested: str | None, wheels: Iterable[str] = ()
) -> str:
    """`12.8`-style CUDA version of the image, or `cpu`.

    In order: `requested`; torch's local version (`+cpu`, `+cu128`); the CUDA runtime wheel among
    `wheels` (PyPI's plain `torch` carries CUDA as `nvidia-cuda-runtime[-cuXX]` wheels); the base.
    """
    if requested:
        return requested
    local = torch_version.partition("+")[2]
    if local == "cpu":
        return "cpu"
    if m := re.fullmatch(r"cu(\d+)(\d)", local):
        return f"{m.group(1)}.{m.group(2)}"
    for name in wheels:
        if m := re.match(r"nvidia_cuda_runtime(?:_cu\d+)?-(\d+)\.(\d+)\.", Path(name).name):
            return f"{m.group(1)}.{m.group(2)}"
    if m := re.search(r"cuda:(\d+)\.(\d+)", base):
        return f"{m.group(1)}.{m.group(2)}"
    return "cpu"


def image_tag(target: str, manifest: dict, cuda: str) -> str:
    """forgather:<version>-py<X>-<cuY|cpu>-torch<Z>[-dev]."""
    torch = manifest["torch_version"].partition("+")[0]
    flavor = "cpu" if cuda == "cpu" else f"cu{cuda}"
    suffix = "-dev" if target == "dev" else ""
    return f"forgather:{manifest['forgather_version']}-py{manifest['python_version']}-{flavor}-torch{torch}{suffix}"


def make_context(wheelhouse: Path, parent: Path) -> Path:
    """A fresh build context directory under `parent` (sources copied, wheels hard-linked)."""
    parent.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(prefix="context-", dir=parent))
    for name in CONTEXT_PATHS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=IGNORED)
        elif src.is_file():
            shutil.copy2(src, context / name)
    build_wheelhouse.link_tree(wheelhouse, context / "wheelhouse")
    return context


def git_remote(repo: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", choices=("runtime", "dev"))
    parser.add_argument("--base", help="BASE_IMAGE (default: the Dockerfile's CUDA image)")
    parser.add_argument("--wheelhouse", type=Path, help="a built wheelhouse (default: build one)")
    parser.add_argument(
        "--torch", default=build_wheelhouse.DEFAULT_TORCH, help="torch pin for the wheelhouse"
    )
    parser.add_argument("--tag", help="image tag (default: the versioned forgather tag)")
    parser.add_argument(
        "--cuda", help="CUDA version for the tag and label, or cpu (default: guessed)"
    )
    parser.add_argument("--uid", type=int, help="UID build argument (default 1000)")
    parser.add_argument("--gid", type=int, help="GID build argument (default 1000)")
    parser.add_argument(
        "--network", help="docker build --network (none: prove the build is offline)"
    )
    parser.add_argument("--build-arg", action="append", default=[], help="extra KEY=VALUE")
    parser.add_argument(
        "--no-alias", action="store_true", help="no forgather:latest / forgather:dev tag"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the docker build command only"
    )
    args = parser.parse_args(argv)

    wheelhouse = args.wheelhouse
    if wheelhouse is None:
        out = subprocess.run(
            [sys.executable, str(HERE / "build_wheelhouse.py"), "--torch", args.torch],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        wheelhouse = Path(out.strip().splitlines()[-1])
    manifest = json.loads((wheelhouse / "manifest.json").read_text(encoding="utf-8"))
    if args.target == "dev" and not manifest.get("dev_tools"):
        parser.error(f"{wheelhouse} was built with --no-dev; the dev image needs the dev tools")

    base = args.base or DEFAULT_BASES[args.target]
    wheels = [p.name for p in (wheelhouse / "deps").glob("*.whl")]
    cuda = cuda_flavor(base, manifest["torch_version"], args.cuda, wheels)
    tag = args.tag or image_tag(args.target, manifest, cuda)
    build_args = {
        "BASE_IMAGE": base,
        "WHEELHOUSE": "wheelhouse",
        "FORGATHER_VERSION": manifest["forgather_version"],
        "TORCH_VERSION": manifest["torch_version"],
        "CUDA": cuda,
        "PYTHON_VERSION": manifest["python_version"],
        "BUILD_DATE": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "VCS_REF": manifest["revision"],
        "SOURCE_URL": git_remote(REPO),
    }
    if args.uid is not None:
        build_args["UID"] = str(args.uid)
    if args.gid is not None:
        build_args["GID"] = str(args.gid)
    for item in args.build_arg:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--build-arg {item!r}: write KEY=VALUE")
        build_args[key] = value

    tags = [tag]
    if not args.no_alias and not args.tag:
        tags.append("forgather:latest" if args.target == "runtime" else "forgather:dev")
    command = [docker_binary(), "build", "-f", f"Dockerfile.{args.target}"]
    for t in tags:
        command += ["-t", t]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    if args.network:
        command += ["--network", args.network]
    if args.dry_run:
        print(" ".join([*command, "<context>"]))
        return 0

    context = make_context(wheelhouse, build_wheelhouse.cache_root() / "contexts")
    try:
        print("build_image: " + " ".join([*command, str(context)]), file=sys.stderr, flush=True)
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        done = subprocess.run([*command, str(context)], cwd=context, env=env, stdout=sys.stderr)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    if done.returncode != 0:
        print(f"build_image: docker build failed (exit {done.returncode})", file=sys.stderr)
        return done.returncode
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
