"""``fgl up`` and ``fgl run``: check, plan, start every container at once, stream, wait, tear down."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgl.containers import (
    ContainerSpec,
    container_kwargs,
    docker_run_line,
    mask_command,
    masked,
)
from fgl.engine import Node, parallel, stop_and_remove
from fgl.engine_notes import engine_key, load_notes, refuses_memlock, remember_memlock_refusal
from fgl.errors import FglError, PreflightError
from fgl.inventory import Inventory, NodeSpec, parse_shm_size, read_env_file
from fgl.logs import LogSink
from fgl.output import info, table
from fgl.preflight import Preflight, gather
from fgl.rendezvous import (
    NodeNet,
    RendezvousPlan,
    choose_port,
    new_run_id,
    nproc_for,
    plan_rendezvous,
)
from fgl.run import Run
from fgl.runs import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Interrupted,
    Member,
    MemlockFallback,
    Supervisor,
    create_and_start,
    install_signal_handlers,
    signals_ignored,
)


@dataclass
class Settings:
    """Everything about a run that is the same on every node (inventory merged with flags)."""

    image: str
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    workspace: str | None = None
    working_dir: str | None = None
    shm_size: str | None = None
    memlock: str = "auto"
    gpus_flag: str | None = None
    gpus_default: str | None = None
    nproc: str | None = None
    port: int | None = None
    mode: str = "c10d"


def settings_from(
    inventory: Inventory | None,
    *,
    image: str | None,
    env: dict[str, str],
    env_file: str | None,
    workspace: str | None,
    gpus: str | None = None,
    nproc: str | None = None,
    port: int | None = None,
    mode: str = "c10d",
    shm_size: str | None = None,
    memlock: str | None = None,
    cwd: str | None = None,
) -> Settings:
    """Merge the inventory and the flags (flags win; env: inventory env_file < env < --env-file < -e)."""
    inv = inventory or Inventory()
    chosen_image = image or inv.image
    if not chosen_image:
        raise FglError("no image: pass --image NAME:TAG or set 'image:' in fgl.yaml")
    merged: dict[str, str] = {}
    if inv.env_file:
        merged.update(read_env_file(inv.env_file, f"{inv.source}: env_file"))
    merged.update(inv.env)
    if env_file:
        merged.update(read_env_file(env_file))
    merged.update(env)
    here = cwd or os.getcwd()
    ws = workspace if workspace is not None else (inv.workspace or here)
    ws = str(Path(ws).expanduser().resolve()) if ws else None
    if ws and (ws == "/" or ws == str(Path.home().resolve())):
        from fgl.output import warn

        warn(
            f"the workspace is {ws}: every node's containers see all of it (keys, tokens, other "
            "projects); pass --workspace PROJECT_DIR (or run fgl from the project) to mount less"
        )
    wd = here if ws and (here == ws or here.startswith(ws.rstrip("/") + "/")) else ws
    return Settings(
        image=chosen_image,
        env=merged,
        mounts=list(inv.mounts),
        workspace=ws,
        working_dir=wd,
        shm_size=parse_shm_size(shm_size, "--shm-size") if shm_size else inv.shm_size,
        memlock=memlock or inv.memlock,
        gpus_flag=gpus,
        gpus_default=inv.gpus_per_node,
        nproc=nproc,
        port=port,
        mode=mode,
    )


def container_spec(
    settings: Settings,
    run_id: str,
    rank: int,
    node: str,
    nnodes: int,
    command: list[str],
    gpus: str,
    role: str = "train",
    extra_env: dict[str, str] | None = None,
) -> ContainerSpec:
    """The container of one node (plan env first, the user's env wins)."""
    return ContainerSpec(
        image=settings.image,
        command=command,
        name=f"{run_id}-{rank}",
        run_id=run_id,
        rank=rank,
        role=role,
        node=node,
        nnodes=nnodes,
        env={**(extra_env or {}), **settings.env},
        workspace=settings.workspace,
        working_dir=settings.working_dir,
        mounts=settings.mounts,
        gpus=gpus,
        shm_size=settings.shm_size,
        memlock=settings.memlock != "off",
        uid=os.getuid(),
        gid=os.getgid(),
    )


def preflight_problems(pf: Preflight) -> None:
    """Raise one PreflightError listing every problem found."""
    problems = pf.problems()
    if problems:
        raise PreflightError("pre-flight failed, nothing was started: " + "; ".join(problems))


def make_plan(nodes: list[Node], pf: Preflight, settings: Settings, run_id: str) -> RendezvousPlan:
    """The rendezvous plan from pre-flight facts."""
    port = choose_port(settings.port, pf.free_ports)
    if port is None:
        if settings.port:
            raise PreflightError(
                f"port {settings.port} is in use on node 0 ({nodes[0].name}); free it or pass another --port"
            )
        raise PreflightError(f"no free port from 29500 on node 0 ({nodes[0].name}); pass --port")
    nets = []
    for node, f in zip(nodes, pf.facts, strict=True):
        address = node.spec.address or (pf.endpoint if node.rank == 0 else f.source)
        if not address:
            raise PreflightError(
                f"node {node.name}: its address toward node 0 is unknown; set 'address:'"
            )
        nets.append(NodeNet(node.name, address, f.interface, nproc_for(f.gpus, settings.nproc)))
    return plan_rendezvous(
        run_id, nets, port=port, mode=settings.mode, endpoint_address=pf.endpoint
    )


def print_plan(plan: RendezvousPlan, kwargs_list: list[dict[str, Any]], settings: Settings) -> None:
    """The plan as a table plus the equivalent ``docker run`` of every node (secrets masked)."""
    rows = [
        (p.rank, p.name, p.address, p.interface or "-", " ".join(p.torchrun_args[4:6]))
        for p in plan.nodes
    ]
    table(
        ("rank", "node", "address", "interface", "nproc"),
        rows,
        title=f"{plan.run_id}  endpoint {plan.endpoint} ({plan.mode})",
    )
    for p, kw in zip(plan.nodes, kwargs_list, strict=True):
        print(f"# node-{p.rank} ({p.name})")
        print(docker_run_line(kw, settings.env))


def _start_all(
    nodes: list[Node], kwargs_list: list[dict[str, Any]], memlock: MemlockFallback
) -> list[Member]:
    def start(pair: tuple[Node, dict[str, Any]]) -> Member:
        node, kwargs = pair
        try:
            container = memlock.start(
                node.name, kwargs, lambda kw: create_and_start(node.client, kw)
            )
        except FglError:
            raise
        except Exception as exc:
            raise node.fail(
                f"cannot start the container: {getattr(exc, 'explanation', None) or exc}"
            ) from None
        return Member(rank=node.rank, node=node.name, container=container)

    results = parallel(start, list(zip(nodes, kwargs_list, strict=True)))
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return [r for r in results if isinstance(r, Member)]


def _member_remove(m: Member, grace: float) -> None:
    stop_and_remove(m.container, grace)


def supervise_run(
    run: Run,
    kwargs_list: list[dict[str, Any]],
    memlock: MemlockFallback,
    secrets: dict[str, str],
    record: bool = True,
    prefixed: bool = True,
) -> int:
    """Start every container at once, stream, wait and tear down; returns the run's exit code."""
    restore = install_signal_handlers()
    run_dir = run.dir if record else None
    sink = LogSink(run_dir.path if run_dir else None, secrets=secrets, prefixed=prefixed)
    code, reason, failed = 1, "failed to start", None
    try:
        members = _start_all(run.nodes, kwargs_list, memlock)
        sup = Supervisor(members, sink, _member_remove, on_event=info if len(members) > 1 else None)
        code, failed = sup.supervise()
        reason = sup.reason
    except Interrupted as exc:
        code = EXIT_SIGINT if exc.signum == 2 else 128 + exc.signum
        reason = f"interrupted by {exc}"
        info(f"{reason}; removed every container of {run.id}")
    except KeyboardInterrupt:
        code, reason = EXIT_SIGINT, "interrupted by SIGINT"
    finally:
        with signals_ignored():
            for node, result in run.remove(grace=1.0):
                if isinstance(result, BaseException):
                    info(f"could not clean up on {node.name}: {result}")
            sink.close()
            if run_dir:
                run_dir.write_result(code, reason, failed)
        restore()
    return code


def memlock_fallback(settings: Settings, keys: dict[str, str | None]) -> MemlockFallback:
    """The run's memlock policy, knowing which engines (``keys``: node name → engine key) refused
    the ulimit in earlier runs."""
    notes = load_notes()
    return MemlockFallback(
        settings.memlock,
        remembered=[name for name, key in keys.items() if refuses_memlock(key, notes)],
        on_refused=lambda name: remember_memlock_refusal(keys.get(name)),
    )


@dataclass(frozen=True)
class Elastic:
    """``fgl up --elastic``: restart on the nodes that still answer after a failure."""

    min_nodes: int = 1
    max_restarts: int = 3


# What an elastic run's trainers are told (forgather reads them): copy each checkpoint to every
# node, keep the global batch when the world shrinks, and resume from the latest checkpoint on a
# restart (when there is one).
ELASTIC_ENV = {"FORGATHER_SAVE_ON_EACH_NODE": "1", "FORGATHER_KEEP_GLOBAL_BATCH": "1"}
RESTART_ENV = {"FORGATHER_RESUME": "auto"}


def up(
    specs: list[NodeSpec],
    settings: Settings,
    command: list[str],
    dry_run: bool = False,
    run_id: str | None = None,
    elastic: Elastic | None = None,
) -> int:
    """Pre-flight every node, plan the rendezvous, start ``torchrun … --no-python CMD`` everywhere, wait.

    With ``elastic``, a failed attempt is followed by another on the nodes that answer (at least
    ``min_nodes``), resuming from the latest checkpoint, up to ``max_restarts`` times.
    """
    if not command:
        raise FglError("no command: write it after --, e.g. fgl up --nodes a,b -- forgather train")
    if elastic is None:
        with Run.new("up", specs, run_id) as run:
            return _up_once(run.connect(), settings, command, dry_run)
    if not 1 <= elastic.min_nodes <= len(specs):
        raise FglError(f"--min-nodes must be between 1 and the {len(specs)} node(s) given")
    run_id = run_id or new_run_id()
    attempt = 0
    while True:
        alive = _answering(specs)
        if len(alive) < elastic.min_nodes:
            raise FglError(
                f"elastic run {run_id}: {len(alive)} of {len(specs)} node(s) answer, fewer than "
                f"--min-nodes {elastic.min_nodes}; giving up"
            )
        env = {**ELASTIC_ENV, **(RESTART_ENV if attempt else {}), "FGL_ATTEMPT": str(attempt)}
        with Run.new("up", alive, run_id) as run:
            run.connect()
            # A node that comes back may still hold a container of an earlier attempt.
            for node, result in run.remove(grace=1.0):
                if isinstance(result, list) and result:
                    info(f"{node.name}: removed {', '.join(result)} left from an earlier attempt")
            if attempt:
                info(
                    f"elastic run {run_id}: attempt {attempt + 1} on {len(alive)} node(s) "
                    f"({', '.join(s.name for s in alive)}), resuming from the latest checkpoint"
                )
            code = _up_once(
                run, settings, command, dry_run, extra_env=env, elastic=(elastic, attempt)
            )
        if code == 0 or dry_run or code in (EXIT_SIGINT, EXIT_SIGTERM):
            return code
        if attempt >= elastic.max_restarts:
            info(f"elastic run {run_id}: attempt {attempt + 1} failed; no restarts left")
            return code
        attempt += 1


def _answering(specs: list[NodeSpec]) -> list[NodeSpec]:
    """The nodes whose engine answers now (the others are named on stderr)."""
    nodes = [Node(spec, rank) for rank, spec in enumerate(specs)]
    try:
        results = parallel(Node.connect, nodes)
    finally:
        for node in nodes:
            node.close()
    alive = []
    for spec, result in zip(specs, results, strict=True):
        if isinstance(result, BaseException):
            info(f"{spec.name} does not answer ({result}); left out")
        else:
            alive.append(spec)
    return alive


def _up_once(
    run: Run,
    settings: Settings,
    command: list[str],
    dry_run: bool,
    extra_env: dict[str, str] | None = None,
    elastic: tuple[Elastic, int] | None = None,
) -> int:
    """One attempt of ``fgl up`` on the run's (connected) nodes."""
    nodes = run.nodes
    pf = gather(
        nodes,
        settings.image,
        gpus_flag=settings.gpus_flag,
        gpus_default=settings.gpus_default,
        port=settings.port,
        run_id=run.id,
    )
    preflight_problems(pf)
    plan = make_plan(nodes, pf, settings, run.id)
    kwargs_list = [
        container_kwargs(
            container_spec(
                settings,
                run.id,
                p.rank,
                p.name,
                plan.nnodes,
                p.command(command),
                f.gpus,
                # Checkpoint manifests record which image trained them.
                extra_env={
                    **p.env,
                    **(extra_env or {}),
                    "FORGATHER_IMAGE_DIGEST": pf.image_id or "",
                },
            )
        )
        for p, f in zip(plan.nodes, pf.facts, strict=True)
    ]
    if dry_run:
        print_plan(plan, kwargs_list, settings)
        return 0
    extra: dict[str, Any] = {}
    if elastic is not None:
        policy, attempt = elastic
        extra["elastic"] = {
            "min_nodes": policy.min_nodes,
            "max_restarts": policy.max_restarts,
            "attempt": attempt,
        }
    run.record(
        image=settings.image,
        image_id=pf.image_id,
        command=mask_command(command, settings.env),
        workspace=settings.workspace,
        working_dir=settings.working_dir,
        mounts=settings.mounts,
        endpoint=plan.endpoint,
        mode=plan.mode,
        env=masked(settings.env),
        **extra,
        nodes=[
            {"address": p.address, "interface": p.interface, "torchrun": list(p.torchrun_args)}
            for p in plan.nodes
        ],
    )
    info(
        f"run {run.id}: {plan.nnodes} node(s), endpoint {plan.endpoint}, image {settings.image}; "
        f"logs in {run.dir.path}"
    )
    code = supervise_run(
        run,
        kwargs_list,
        memlock_fallback(settings, {f.name: f.engine_key for f in pf.facts}),
        settings.env,
    )
    info(f"run {run.id} exited {code}")
    return code


def run_one(spec: NodeSpec, settings: Settings, command: list[str]) -> int:
    """``fgl run``: one container on one node, output streamed, exit code returned, container removed."""
    if not command:
        raise FglError("no command: write it after --, e.g. fgl run -- python -c 'print(1)'")
    with Run.new("run", [spec]) as run:
        (node,) = run.connect().nodes
        if node.image_id(settings.image) is None:
            raise PreflightError(
                f"image {settings.image} is missing on {node.name}; build, pull or sync it first "
                f"(fgl sync-image {settings.image} --nodes {node.name})"
            )
        engine = node.info()
        gpus = settings.gpus_flag or spec.gpus or settings.gpus_default or "auto"
        if gpus == "auto":
            gpus = "all" if node.has_gpu_runtime(engine) else "0"
        kwargs = container_kwargs(
            container_spec(settings, run.id, 0, node.name, 1, command, gpus, role="run")
        )
        info(f"{run.id}: {shlex.join(command)} on {node.name}")
        return supervise_run(
            run,
            [kwargs],
            memlock_fallback(settings, {node.name: engine_key(engine)}),
            settings.env,
            record=False,
            prefixed=False,
        )
