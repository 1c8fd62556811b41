"""Command-line entry point of fgl (console script ``fgl = fgl.cli:main``)."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fgl import __version__
from fgl.errors import FglError
from fgl.node_options import Targets, node_options
from fgl.output import error, info, table, warn

HELP = f"""fgl {__version__}: launch forgather across the machines of a LAN.

fgl starts the same forgather container image on every node of a LAN and gives
torchrun on each node a matched rendezvous (one endpoint, one run id, the node
count and each node's rank), so a multi-node job starts from a single command.

Nodes are [user@]host[:port] (SSH to the node's Docker engine) or localhost (this
machine's engine), from --nodes a,b,c or an fgl.yaml inventory.
"""

app = typer.Typer(
    name="fgl",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fgl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the fgl version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    pass


def docker_engine_version(timeout: float = 3.0) -> str | None:
    """The version of the Docker engine the Docker SDK reaches, or None if none answers."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return client.version().get("Version")
        finally:
            client.close()
    except Exception:  # no SDK, no socket, refused, timed out: all mean "no engine"
        return None


@app.command("version")
def version_command() -> None:
    """Print the fgl version and, when a Docker engine is reachable, the engine's version."""
    typer.echo(f"fgl {__version__}")
    engine = docker_engine_version()
    if engine:
        typer.echo(f"docker engine {engine}")


# ---------------------------------------------------------------- shared options

Image = Annotated[
    str | None, typer.Option("--image", help="Image to run (default: 'image:' in fgl.yaml).")
]
Env = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="KEY=VALUE for every container (repeatable)."),
]
EnvFile = Annotated[
    str | None, typer.Option("--env-file", help="File of KEY=VALUE lines for every container.")
]
Workspace = Annotated[
    str | None,
    typer.Option(
        "--workspace", help="Directory mounted at the same path on every node (default: cwd)."
    ),
]
Gpus = Annotated[
    str | None, typer.Option("--gpus-per-node", help="GPUs per node: N, all, 0 or auto.")
]
Command = Annotated[
    list[str] | None, typer.Argument(metavar="-- CMD...", help="The command, after --.")
]

ARGS_AFTER_DASHDASH = {"allow_interspersed_args": False}


def handles_errors(fn: F) -> F:
    """Print an FglError as one red line and exit with its code (tracebacks are for bugs only)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FglError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _env(items: list[str] | None):
    from fgl.inventory import parse_env_pairs

    return parse_env_pairs(items or [], "--env")


# ---------------------------------------------------------------- nodes


@app.command("nodes")
@handles_errors
@node_options()
def nodes_command(targets: Targets) -> None:
    """Print the resolved nodes: rank, engine target (after ~/.ssh/config), key, address, GPUs."""
    inv = targets.inventory
    specs = targets.specs()
    rows = [
        (
            rank,
            s.name,
            s.target,
            ", ".join(s.keys) or ("-" if s.local else "agent/default"),
            s.address or "-",
            s.gpus or (inv.gpus_per_node if inv and inv.gpus_per_node else "auto"),
            s.origin,
        )
        for rank, s in enumerate(specs)
    ]
    table(("rank", "node", "engine", "ssh key", "address", "gpus", "from"), rows)


# ---------------------------------------------------------------- run / up


@app.command("run", context_settings=ARGS_AFTER_DASHDASH)
@handles_errors
@node_options(single=True)
def run_command(
    targets: Targets,
    command: Command = None,
    image: Image = None,
    env: Env = None,
    env_file: EnvFile = None,
    workspace: Workspace = None,
    gpus: Gpus = None,
) -> None:
    """Run one container on one node: output streamed, exit code propagated, container removed."""
    from fgl.launch import run_one, settings_from

    spec = targets.one()
    settings = settings_from(
        targets.inventory,
        image=image,
        env=_env(env),
        env_file=env_file,
        workspace=workspace,
        gpus=gpus,
    )
    raise typer.Exit(run_one(spec, settings, list(command or [])))


@app.command("up", context_settings=ARGS_AFTER_DASHDASH)
@handles_errors
@node_options()
def up_command(
    targets: Targets,
    command: Command = None,
    image: Image = None,
    gpus: Gpus = None,
    nproc: Annotated[
        str | None,
        typer.Option("--nproc-per-node", help="Processes per node (default: one per GPU, or 1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", help="Rendezvous port on node 0 (default: 29500, or the next free)."
        ),
    ] = None,
    rdzv: Annotated[
        str, typer.Option("--rdzv", help="Rendezvous: c10d (default) or static (--master-addr).")
    ] = "c10d",
    env: Env = None,
    env_file: EnvFile = None,
    workspace: Workspace = None,
    shm_size: Annotated[
        str | None,
        typer.Option(
            "--shm-size",
            help="Size of each container's private /dev/shm (default 16g), or 'host' to share "
            "the host's IPC namespace instead.",
        ),
    ] = None,
    memlock: Annotated[
        str | None, typer.Option("--memlock", help="memlock=-1 ulimit: auto (fall back), on, off.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run pre-flight, print the plan, start nothing.")
    ] = False,
    elastic: Annotated[
        bool,
        typer.Option(
            "--elastic",
            help="When a node or container fails, restart on the nodes that still answer, "
            "resuming from the latest checkpoint (forgather copies every checkpoint to every "
            "node and keeps the global batch).",
        ),
    ] = False,
    min_nodes: Annotated[
        int | None,
        typer.Option("--min-nodes", help="--elastic: fewest nodes to go on with (default 1)."),
    ] = None,
    max_restarts: Annotated[
        int, typer.Option("--max-restarts", help="--elastic: restarts before giving up.")
    ] = 3,
) -> None:
    """Start CMD under one torchrun per node on every node, with a matched rendezvous; wait; clean up.

    With --elastic, a failed attempt is followed by another on the nodes that answer (at least
    --min-nodes), which resumes from the latest checkpoint; a node that answers again joins the
    next restart.
    """
    from fgl.inventory import parse_gpus, parse_memlock
    from fgl.launch import Elastic, settings_from, up

    if min_nodes is not None and not elastic:
        raise FglError("--min-nodes needs --elastic")
    if max_restarts < 0:
        raise FglError("--max-restarts must be >= 0")

    if rdzv not in ("c10d", "static"):
        raise FglError(f"--rdzv must be c10d or static, got {rdzv!r}")
    specs = targets.specs()
    settings = settings_from(
        targets.inventory,
        image=image,
        env=_env(env),
        env_file=env_file,
        workspace=workspace,
        gpus=parse_gpus(gpus, "--gpus-per-node") if gpus else None,
        nproc=nproc,
        port=port,
        mode=rdzv,
        shm_size=shm_size,
        memlock=parse_memlock(memlock, "--memlock") if memlock else None,
    )
    policy = Elastic(min_nodes or 1, max_restarts) if elastic else None
    raise typer.Exit(up(specs, settings, list(command or []), dry_run=dry_run, elastic=policy))


# ---------------------------------------------------------------- down / ps / status / logs


@app.command("down")
@handles_errors
@node_options()
def down_command(
    targets: Targets,
    run_id: Annotated[str, typer.Argument(help="The run id (fgl status lists them).")],
) -> None:
    """Stop and remove every container of a run on every node (idempotent)."""
    with targets.run(run_id) as run:
        results = run.remove(grace=5.0)
    failed = False
    for node, removed in results:
        if isinstance(removed, BaseException):
            failed = True
            error(str(removed) if isinstance(removed, FglError) else f"node {node.name}: {removed}")
        elif removed:
            info(f"{node.name}: removed {', '.join(removed)}")
    if not failed and not any(r for _, r in results):
        info(f"nothing of {run_id} is left on {', '.join(n.name for n, _ in results)}")
    raise typer.Exit(1 if failed else 0)


CONTAINER_COLUMNS = ("node", "run", "rank", "role", "name", "status", "image")


def _container_rows(node_name: str, containers: list) -> list[tuple]:
    rows = []
    for c in containers:
        labels = c.labels or {}
        rows.append(
            (
                node_name,
                labels.get("fgl.run", ""),
                labels.get("fgl.node-rank", ""),
                labels.get("fgl.role", ""),
                c.name,
                c.status,
                c.attrs.get("Config", {}).get("Image", ""),
            )
        )
    return rows


@app.command("ps")
@handles_errors
@node_options()
def ps_command(
    targets: Targets,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's containers.")] = None,
) -> None:
    """List containers carrying fgl labels on the nodes (default: the inventory's, else localhost)."""
    from fgl.run import containers_on

    rows: list[tuple] = []
    failed = False
    for node, found in containers_on(targets.specs(default_local=True), run_id):
        if isinstance(found, BaseException):
            failed = True
            error(str(found) if isinstance(found, FglError) else f"node {node.name}: {found}")
        else:
            rows += _container_rows(node.name, found)
    table(CONTAINER_COLUMNS, rows)
    if failed:
        raise typer.Exit(1)


@app.command("status")
@handles_errors
@node_options()
def status_command(
    targets: Targets,
    run_id: Annotated[
        str | None, typer.Argument(help="A run id; without it, list recorded runs.")
    ] = None,
) -> None:
    """List recorded runs, or show one run: its nodes, their containers now, and its result."""
    from fgl.runs import list_runs, runs_root

    if run_id is None:
        rows = []
        for r in list_runs()[:50]:
            rec, res = r.record(), r.result()
            state = f"exited {res['exit_code']}" if res else "running (or fgl was killed)"
            rows.append(
                (
                    r.run_id,
                    rec.get("kind", "up"),
                    rec.get("created", ""),
                    len(rec.get("nodes", [])),
                    rec.get("image", ""),
                    state,
                )
            )
        if not rows:
            info(f"no runs recorded in {runs_root()}")
            return
        table(("run", "kind", "created", "nodes", "image", "state"), rows)
        return
    with targets.run(run_id) as run:
        rec = run.dir.record() if run.dir.exists() else {}
        if rec:
            print(f"run {run_id}: {rec.get('kind', 'up')} of {shlex.join(rec.get('command', []))}")
            where = rec.get("url") or f"endpoint {rec.get('endpoint', '-')}"
            print(f"image {rec.get('image')} ({(rec.get('image_id') or '?')[:19]}), {where}")
            print(f"logs {run.dir.path}")
            res = run.dir.result()
            print(
                f"result: exited {res['exit_code']} ({res['reason']})"
                if res
                else "result: none yet (running, or fgl was killed)"
            )
        rows: list[tuple] = []
        for node, found in run.containers():
            if isinstance(found, BaseException):
                rows.append((node.name, "", "", "", "", f"unreachable: {found}", ""))
            else:
                rows += _container_rows(node.name, found) or [
                    (node.name, run_id, node.rank, "", "-", "no container", "")
                ]
    table(CONTAINER_COLUMNS, rows)


@app.command("logs")
@handles_errors
@node_options()
def logs_command(
    targets: Targets,
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Stream live from the engines while the run lives."),
    ] = False,
    node: Annotated[int | None, typer.Option("--node", help="Only node i (its rank).")] = None,
) -> None:
    """Print a run's logs (copies in its run dir), or follow them live from the engines with -f."""
    from fgl.logs import LogSink
    from fgl.runs import RunDir

    run_dir = RunDir(run_id)
    if follow:
        with targets.run(run_id) as run:
            live = [(n, c) for n, c in run.workers() if node is None or n.rank == node]
            if live:
                sink = LogSink(None)
                threads = [
                    threading.Thread(
                        target=sink.pump,
                        args=(n.label, n.rank, c.logs(stream=True, follow=True)),
                        daemon=True,
                    )
                    for n, c in live
                ]
                for t in threads:
                    t.start()
                try:
                    while any(t.is_alive() for t in threads):
                        time.sleep(0.2)
                except KeyboardInterrupt:
                    pass
                return
        info(f"no live container of {run_id}; printing the copies in {run_dir.path}")
    files = run_dir.logs()
    if node is not None:
        files = [f for f in files if f.stem == f"node-{node}"]
    if not files:
        raise FglError(f"no logs of {run_id} in {run_dir.path}")
    for f in files:
        sys.stdout.write(f.read_text(encoding="utf-8", errors="replace"))
    sys.stdout.flush()


# ---------------------------------------------------------------- checkpoints on nodes' disks


@app.command("fetch")
@handles_errors
@node_options()
def fetch_command(
    targets: Targets,
    run_id: Annotated[str, typer.Argument(help="The run id (fgl status lists them).")],
    checkpoint: Annotated[
        str,
        typer.Option("--checkpoint", "-c", help="latest (default), checkpoint-N or N."),
    ] = "latest",
    to: Annotated[
        Path, typer.Option("--to", help="Directory here that receives checkpoint-N/.")
    ] = Path("."),
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir",
            help="The run's output directory on the nodes (default: the `output dir` the "
            "trainer printed in the run's logs).",
        ),
    ] = None,
    image: Image = None,
    workspace: Workspace = None,
) -> None:
    """Collect a run's checkpoint from every node onto this machine (verified against its manifest).

    For nodes without a shared filesystem, where each node keeps the shards its ranks wrote:
    `fgl fetch RUN` writes ./checkpoint-N with every node's files, ready for `forgather checkpoint
    consolidate`, `forgather generate`, `forgather train --resume PATH` or `fgl push`.
    """
    from fgl.transfer import fetch, output_dir_from_logs

    with targets.run(run_id) as run:
        record = run.dir.record() if run.dir.exists() else {}
        image = image or record.get("image")
        if not image:
            raise FglError(f"no record of {run_id}'s image here: pass --image")
        volumes = _transfer_volumes(record, workspace)
        out = output_dir or output_dir_from_logs(run.dir.logs(), record.get("working_dir"))
        if not out:
            raise FglError(
                f"the logs of {run_id} name no output dir (the trainer prints it at start): "
                "pass --output-dir"
            )
        _check_visible(out, volumes, "--output-dir")
        run.connect()
        result = fetch(run.nodes, image, volumes, run_id, out, checkpoint, to, say=info)
    info(
        f"fetched {result.checkpoint} of {run_id}: {result.files} file(s), "
        f"{result.bytes / 1e6:.1f} MB from {len(result.per_node)} node(s)"
    )
    print(result.path)


@app.command("push")
@handles_errors
@node_options()
def push_command(
    targets: Targets,
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint directory here (checkpoint-N, with its manifest).")
    ],
    output_dir: Annotated[
        str,
        typer.Argument(help="The run's output directory on the nodes; gets checkpoints/<name>."),
    ],
    image: Image = None,
    workspace: Workspace = None,
) -> None:
    """Copy a checkpoint of this machine to every node (OUTPUT_DIR/checkpoints/checkpoint-N).

    Then `fgl up -- forgather ... train --resume latest` resumes from it on those nodes. A node that
    already has the same checkpoint is skipped; one with a different checkpoint of that name is an
    error, and nothing is overwritten.
    """
    from fgl.engine import connect_all
    from fgl.launch import settings_from
    from fgl.rendezvous import new_run_id
    from fgl.transfer import push

    settings = settings_from(
        targets.inventory, image=image, env={}, env_file=None, workspace=workspace
    )
    record = {"workspace": settings.workspace, "mounts": settings.mounts}
    volumes = _transfer_volumes(record, None)
    _check_visible(output_dir, volumes, "OUTPUT_DIR")
    nodes = connect_all(targets.specs())
    try:
        results = push(
            nodes, settings.image, volumes, new_run_id(), checkpoint.resolve(), output_dir
        )
    finally:
        for node in nodes:
            node.close()
    failed = False
    for node, outcome in results:
        if isinstance(outcome, BaseException):
            failed = True
            error(str(outcome))
        else:
            info(f"{node.name}: {checkpoint.name} {outcome}")
    raise typer.Exit(1 if failed else 0)


def _transfer_volumes(record: dict[str, Any], workspace: str | None) -> dict[str, dict[str, str]]:
    """The bind mounts of a run's containers (its workspace and mounts), for a helper container."""
    from fgl.containers import ContainerSpec, volumes

    ws = workspace or record.get("workspace")
    if ws:
        ws = str(Path(ws).expanduser().resolve())
    spec = ContainerSpec(
        image="", command=[], name="", run_id="", workspace=ws, mounts=record.get("mounts") or []
    )
    found = volumes(spec)
    if not found:
        raise FglError("no workspace is known for this run: pass --workspace")
    return found


def _check_visible(path: str, volumes: dict[str, dict[str, str]], flag: str) -> None:
    """FglError unless `path` lies inside one of the helper's mounts."""
    inside = [v["bind"] for v in volumes.values()]
    if not path.startswith("/") or not any(
        path == b or path.startswith(b.rstrip("/") + "/") for b in inside
    ):
        raise FglError(
            f"{flag} {path} is not an absolute path inside the workspace or a mount "
            f"({', '.join(inside)})"
        )


# ---------------------------------------------------------------- images


@app.command("sync-image")
@handles_errors
@node_options()
def sync_image_command(
    targets: Targets,
    image: Annotated[str, typer.Argument(help="Image to copy (name:tag or id).")],
    source: Annotated[
        str, typer.Option("--from", help="The engine that has the image.")
    ] = "localhost",
) -> None:
    """Copy an image to every node lacking it (docker save | load over SSH, in parallel); verify the id."""
    from fgl.images import ImageRef, sync_image

    specs = targets.specs()
    src = targets.node(source, "--from")
    results = sync_image(
        ImageRef(image), specs, src, on_start=lambda name: info(f"{name}: copying {image}")
    )
    table(
        ("node", "action", "image id", "seconds"),
        [(r.node, r.action, (r.image_id or "")[:19], f"{r.seconds:.1f}") for r in results],
    )


@app.command("pull")
@handles_errors
@node_options()
def pull_command(
    targets: Targets,
    image: Annotated[str, typer.Argument(help="Image to pull from its registry.")],
) -> None:
    """Pull an image on every node in parallel (needs a registry the nodes can reach)."""
    from fgl.images import ImageRef, pull_image

    specs = targets.specs(default_local=True)
    results = pull_image(ImageRef(image), specs)
    table(
        ("node", "action", "image id", "seconds"),
        [(r.node, r.action, (r.image_id or "")[:19], f"{r.seconds:.1f}") for r in results],
    )
    if len({r.image_id for r in results}) > 1:
        warn(
            f"{image} resolved to different ids on different nodes; pin a digest or use fgl sync-image"
        )


@app.command("build")
@handles_errors
def build_command(
    target: Annotated[str, typer.Argument(help="dev or runtime.")] = "runtime",
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Image tag (default forgather:<target>).")
    ] = None,
    base_image: Annotated[
        str | None, typer.Option("--base-image", help="BASE_IMAGE build argument.")
    ] = None,
    wheelhouse: Annotated[
        str | None, typer.Option("--wheelhouse", help="Local wheel directory (inside the context).")
    ] = None,
    build_arg: Annotated[
        list[str] | None, typer.Option("--build-arg", help="Extra KEY=VALUE build argument.")
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="Checkout holding the Dockerfiles.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the docker build command only.")
    ] = False,
) -> None:
    """Build the dev or runtime image from this checkout's Dockerfiles (docker build)."""
    from fgl import images

    root = Path(context).resolve() if context else images.find_repo_root()
    cmd = images.build_command(
        target,
        root,
        tag=tag,
        base_image=base_image,
        wheelhouse=wheelhouse,
        build_args=build_arg,
        docker=images.docker_binary(),
    )
    print(shlex.join(cmd))
    if dry_run:
        return
    env = {**os.environ, "DOCKER_BUILDKIT": os.environ.get("DOCKER_BUILDKIT", "1")}
    raise typer.Exit(subprocess.call(cmd, env=env))


# ---------------------------------------------------------------- doctor / serve


@app.command("doctor")
@handles_errors
@node_options()
def doctor_command(
    targets: Targets,
    image: Image = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Rendezvous port to check on node 0.")
    ] = None,
    gpus: Gpus = None,
) -> None:
    """Check every node: SSH, engine, GPU runtime, image id, route to node 0, port, shm, clock."""
    from fgl.doctor import COLUMNS, doctor

    inv = targets.inventory
    specs = targets.specs()
    chosen = image or (inv.image if inv else None)
    if not chosen:
        raise FglError("no image: pass --image NAME:TAG or set 'image:' in fgl.yaml")
    host_ipc = bool(inv and inv.shm_size == "host")
    rows = doctor(specs, chosen, port=port, gpus=gpus, host_ipc=host_ipc)
    table(COLUMNS, [r.cells() for r in rows])
    for r in rows:
        for w in r.warnings:
            warn(w)
    blocking = [b for r in rows for b in r.blocking]
    for b in dict.fromkeys(blocking):
        error(b)
    raise typer.Exit(1 if blocking else 0)


@app.command("serve")
@handles_errors
@node_options(single=True)
def serve_command(
    targets: Targets,
    model: Annotated[
        str,
        typer.Argument(
            help="Model directory (or a checkpoint of one) on this machine; copied to the node "
            "when the node lacks it."
        ),
    ],
    serve_args: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- FLAGS...", help="More `forgather serve` flags, after --."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port on the node.")] = 8000,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="The model id clients use (default: the model directory's name)."),
    ] = None,
    image: Image = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for GET /health.")
    ] = 300.0,
    env: Env = None,
    env_file: EnvFile = None,
    gpus: Gpus = None,
) -> None:
    """Serve a model on one node: copy it there if needed, start the image's `forgather serve`,
    wait for GET /health and print the URL (stop it with fgl down RUN)."""
    from fgl.launch import settings_from
    from fgl.serve import serve

    spec = targets.one()
    settings = settings_from(
        targets.inventory, image=image, env=_env(env), env_file=env_file, workspace="", gpus=gpus
    )
    run_id, url = serve(
        spec,
        settings,
        model,
        port=port,
        name=served_model_name,
        extra=list(serve_args or []),
        timeout=timeout,
    )
    info(f"{run_id}: serving {model} on {spec.name}; stop it with fgl down {run_id}")
    print(url)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
