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

Nodes = Annotated[
    str | None,
    typer.Option(
        "--nodes", "-n", help="Nodes as [user@]host[:port],… (localhost = this machine's engine)."
    ),
]
InventoryOpt = Annotated[
    str | None,
    typer.Option("--inventory", "-i", help="Inventory file (default: ./fgl.yaml if present)."),
]
SshKey = Annotated[
    str | None, typer.Option("--ssh-key", help="SSH private key (the SSH agent is used too).")
]
SshConfig = Annotated[
    str, typer.Option("--ssh-config", help="OpenSSH client config whose Host aliases apply.")
]
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


def _inventory(path: str | None):
    from fgl.inventory import find_inventory, load_inventory

    found = find_inventory(path)
    return load_inventory(found) if found else None


def _specs(
    nodes: str | None, inventory, ssh_key: str | None, ssh_config: str, default_local: bool = False
):
    from fgl.inventory import parse_node_list, resolve_nodes, select_nodes

    if not nodes and default_local and not (inventory and inventory.nodes):
        specs = parse_node_list("localhost")
    else:
        specs = select_nodes(nodes, inventory)
    return resolve_nodes(specs, ssh_config, ssh_key)


def _env(items: list[str] | None):
    from fgl.inventory import parse_env_pairs

    return parse_env_pairs(items or [], "--env")


# ---------------------------------------------------------------- nodes


@app.command("nodes")
@handles_errors
def nodes_command(
    nodes: Nodes = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Print the resolved nodes: rank, engine target (after ~/.ssh/config), key, address, GPUs."""
    inv = _inventory(inventory)
    specs = _specs(nodes, inv, ssh_key, ssh_config)
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
def run_command(
    command: Command = None,
    image: Image = None,
    node: Annotated[str, typer.Option("--node", help="The node to run on.")] = "localhost",
    env: Env = None,
    env_file: EnvFile = None,
    workspace: Workspace = None,
    gpus: Gpus = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Run one container on one node: output streamed, exit code propagated, container removed."""
    from fgl.launch import run_one, settings_from

    inv = _inventory(inventory)
    (spec,) = _specs(node, inv, ssh_key, ssh_config)
    settings = settings_from(
        inv, image=image, env=_env(env), env_file=env_file, workspace=workspace, gpus=gpus
    )
    raise typer.Exit(run_one(spec, settings, list(command or [])))


@app.command("up", context_settings=ARGS_AFTER_DASHDASH)
@handles_errors
def up_command(
    command: Command = None,
    nodes: Nodes = None,
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
        str | None, typer.Option("--shm-size", help="Private /dev/shm size instead of host IPC.")
    ] = None,
    memlock: Annotated[
        str | None, typer.Option("--memlock", help="memlock=-1 ulimit: auto (fall back), on, off.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run pre-flight, print the plan, start nothing.")
    ] = False,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Start CMD under one torchrun per node on every node, with a matched rendezvous; wait; clean up."""
    from fgl.inventory import parse_gpus, parse_memlock
    from fgl.launch import settings_from, up

    if rdzv not in ("c10d", "static"):
        raise FglError(f"--rdzv must be c10d or static, got {rdzv!r}")
    inv = _inventory(inventory)
    specs = _specs(nodes, inv, ssh_key, ssh_config)
    settings = settings_from(
        inv,
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
    raise typer.Exit(up(specs, settings, list(command or []), dry_run=dry_run))


# ---------------------------------------------------------------- down / ps / status / logs


def _run_nodes(run_id: str, nodes: str | None, inventory: str | None, ssh_key, ssh_config) -> list:
    from fgl.inventory import resolve_nodes
    from fgl.runs import RunDir

    if nodes:
        return _specs(nodes, _inventory(inventory), ssh_key, ssh_config)
    run_dir = RunDir(run_id)
    if run_dir.exists():
        return resolve_nodes(run_dir.node_specs(), ssh_config, ssh_key)
    inv = _inventory(inventory)
    if inv and inv.nodes:
        return _specs(None, inv, ssh_key, ssh_config)
    raise FglError(f"no record of {run_id} here; pass --nodes to say where its containers are")


@app.command("down")
@handles_errors
def down_command(
    run_id: Annotated[str, typer.Argument(help="The run id (fgl status lists them).")],
    nodes: Nodes = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Stop and remove every container of a run on every node (idempotent)."""
    from fgl.engine import Node, parallel

    specs = _run_nodes(run_id, nodes, inventory, ssh_key, ssh_config)
    targets = [Node(s, rank) for rank, s in enumerate(specs)]
    results = parallel(lambda n: n.remove_run(run_id, grace=5.0), targets)
    failed = False
    for n, r in zip(targets, results, strict=True):
        if isinstance(r, BaseException):
            failed = True
            error(str(r) if isinstance(r, FglError) else f"node {n.name}: {r}")
        elif r:
            info(f"{n.name}: removed {', '.join(r)}")
        n.close()
    if not failed and not any(isinstance(r, list) and r for r in results):
        info(f"nothing of {run_id} is left on {', '.join(n.name for n in targets)}")
    raise typer.Exit(1 if failed else 0)


def _container_rows(node_name: str, containers: list) -> list[tuple]:
    rows = []
    for c in containers:
        labels = c.labels or {}
        tags = c.attrs.get("Config", {}).get("Image", "")
        rows.append(
            (
                node_name,
                labels.get("fgl.run", ""),
                labels.get("fgl.node-rank", ""),
                labels.get("fgl.role", ""),
                c.name,
                c.status,
                tags,
            )
        )
    return rows


@app.command("ps")
@handles_errors
def ps_command(
    nodes: Nodes = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's containers.")] = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """List containers carrying fgl labels on the nodes (default: the inventory's, else localhost)."""
    from fgl.engine import Node, parallel

    specs = _specs(nodes, _inventory(inventory), ssh_key, ssh_config, default_local=True)
    targets = [Node(s, rank) for rank, s in enumerate(specs)]
    results = parallel(lambda n: n.containers(run_id), targets)
    rows: list[tuple] = []
    failed = False
    for n, r in zip(targets, results, strict=True):
        if isinstance(r, BaseException):
            failed = True
            error(str(r) if isinstance(r, FglError) else f"node {n.name}: {r}")
        else:
            rows += _container_rows(n.name, r)
        n.close()
    table(("node", "run", "rank", "role", "name", "status", "image"), rows)
    if failed:
        raise typer.Exit(1)


@app.command("status")
@handles_errors
def status_command(
    run_id: Annotated[
        str | None, typer.Argument(help="A run id; without it, list recorded runs.")
    ] = None,
    nodes: Nodes = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """List recorded runs, or show one run: its nodes, their containers now, and its result."""
    from fgl.engine import Node, parallel
    from fgl.runs import RunDir, list_runs, runs_root

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
    run_dir = RunDir(run_id)
    rec = run_dir.record() if run_dir.exists() else {}
    specs = _run_nodes(run_id, nodes, inventory, ssh_key, ssh_config)
    if rec:
        print(f"run {run_id}: {rec.get('kind', 'up')} of {shlex.join(rec.get('command', []))}")
        print(
            f"image {rec.get('image')} ({(rec.get('image_id') or '?')[:19]}), endpoint {rec.get('endpoint', '-')}"
        )
        print(f"logs {run_dir.path}")
        res = run_dir.result()
        print(
            f"result: exited {res['exit_code']} ({res['reason']})"
            if res
            else "result: none yet (running, or fgl was killed)"
        )
    targets = [Node(s, rank) for rank, s in enumerate(specs)]
    results = parallel(lambda n: n.containers(run_id), targets)
    rows: list[tuple] = []
    for n, r in zip(targets, results, strict=True):
        if isinstance(r, BaseException):
            rows.append((n.name, "", "", "", "", f"unreachable: {r}", ""))
        else:
            rows += _container_rows(n.name, r) or [
                (n.name, run_id, n.rank, "", "-", "no container", "")
            ]
        n.close()
    table(("node", "run", "rank", "role", "name", "status", "image"), rows)


@app.command("logs")
@handles_errors
def logs_command(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Stream live from the engines while the run lives."),
    ] = False,
    node: Annotated[int | None, typer.Option("--node", help="Only node i (its rank).")] = None,
    nodes: Nodes = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Print a run's logs (copies in its run dir), or follow them live from the engines with -f."""
    from fgl.engine import Node, parallel
    from fgl.logs import LogSink
    from fgl.runs import RunDir

    run_dir = RunDir(run_id)
    if follow:
        specs = _run_nodes(run_id, nodes, inventory, ssh_key, ssh_config)
        targets = [Node(s, rank) for rank, s in enumerate(specs) if node is None or rank == node]
        found = parallel(lambda n: n.containers(run_id, role=None), targets)
        live = [
            (n, c)
            for n, cs in zip(targets, found, strict=True)
            if not isinstance(cs, BaseException)
            for c in cs
            if (c.labels or {}).get("fgl.role") in ("train", "run", "serve")
        ]
        if live:
            sink = LogSink(None)
            threads = [
                threading.Thread(
                    target=sink.pump,
                    args=(f"node-{n.rank}", n.rank, c.logs(stream=True, follow=True)),
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


# ---------------------------------------------------------------- images


@app.command("sync-image")
@handles_errors
def sync_image_command(
    image: Annotated[str, typer.Argument(help="Image to copy (name:tag or id).")],
    nodes: Nodes = None,
    source: Annotated[
        str, typer.Option("--from", help="The engine that has the image.")
    ] = "localhost",
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Copy an image to every node lacking it (docker save | load over SSH, in parallel); verify the id."""
    from fgl.images import ImageRef, sync_image

    inv = _inventory(inventory)
    specs = _specs(nodes, inv, ssh_key, ssh_config)
    (src,) = _specs(source, inv, ssh_key, ssh_config)
    results = sync_image(
        ImageRef(image), specs, src, on_start=lambda name: info(f"{name}: copying {image}")
    )
    table(
        ("node", "action", "image id", "seconds"),
        [(r.node, r.action, (r.image_id or "")[:19], f"{r.seconds:.1f}") for r in results],
    )


@app.command("pull")
@handles_errors
def pull_command(
    image: Annotated[str, typer.Argument(help="Image to pull from its registry.")],
    nodes: Nodes = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Pull an image on every node in parallel (needs a registry the nodes can reach)."""
    from fgl.images import ImageRef, pull_image

    specs = _specs(nodes, _inventory(inventory), ssh_key, ssh_config, default_local=True)
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
def doctor_command(
    nodes: Nodes = None,
    image: Image = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Rendezvous port to check on node 0.")
    ] = None,
    gpus: Gpus = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Check every node: SSH, engine, GPU runtime, image id, route to node 0, port, shm, clock."""
    from fgl.doctor import COLUMNS, doctor

    inv = _inventory(inventory)
    specs = _specs(nodes, inv, ssh_key, ssh_config)
    chosen = image or (inv.image if inv else None)
    if not chosen:
        raise FglError("no image: pass --image NAME:TAG or set 'image:' in fgl.yaml")
    rows = doctor(specs, chosen, port=port, gpus=gpus)
    table(COLUMNS, [r.cells() for r in rows])
    for r in rows:
        for w in r.warnings:
            warn(w)
    blocking = [b for r in rows for b in r.blocking]
    for b in dict.fromkeys(blocking):
        error(b)
    raise typer.Exit(1 if blocking else 0)


@app.command("serve", context_settings=ARGS_AFTER_DASHDASH)
@handles_errors
def serve_command(
    command: Annotated[
        list[str] | None, typer.Argument(help="Replace the serve command (after --).")
    ] = None,
    node: Annotated[str, typer.Option("--node", help="The node to serve on.")] = "localhost",
    model: Annotated[
        str | None, typer.Option("--model", help="Model directory on that node.")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port on the node.")] = 8000,
    image: Image = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for GET /health.")
    ] = 300.0,
    env: Env = None,
    env_file: EnvFile = None,
    gpus: Gpus = None,
    inventory: InventoryOpt = None,
    ssh_key: SshKey = None,
    ssh_config: SshConfig = "~/.ssh/config",
) -> None:
    """Start the image's serve mode on one node, wait for GET /health, print the URL."""
    from fgl.launch import settings_from
    from fgl.serve import serve

    if not model:
        raise FglError("--model DIR is required (a model directory on the node)")
    inv = _inventory(inventory)
    (spec,) = _specs(node, inv, ssh_key, ssh_config)
    settings = settings_from(
        inv, image=image, env=_env(env), env_file=env_file, workspace="", gpus=gpus
    )
    run_id, url = serve(
        spec, settings, model, port=port, command=list(command or []) or None, timeout=timeout
    )
    info(f"{run_id}: serving {model} on {spec.name}; stop it with fgl down {run_id}")
    print(url)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
