"""Container specs (pure): what fgl asks each engine to run, as Docker SDK ``containers.create`` kwargs.

Every container gets host networking, a private IPC namespace with a /dev/shm of ``shm_size``
(default 16g; ``shm_size="host"`` shares the host's IPC namespace instead), the stack and
memlock ulimits, an init process, GPUs by device request only where the node has them, fgl labels, the
workspace mounted at the same path on every node, and the invoking user's PUID/PGID.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from docker.types import DeviceRequest, Ulimit

STACK_BYTES = 67108864
# Names whose values are secrets: tokens, keys, passwords (PASSWD, PGPASS, a PASS word),
# credentials, auth, cookies, sessions, personal access tokens (a PAT word: never PATH).
# A private /dev/shm this large unless asked otherwise (tmpfs: only what is written uses memory);
# "host" shares the host's IPC namespace (and its /dev/shm) instead.
DEFAULT_SHM_SIZE = "16g"
HOST_IPC = "host"

SECRET_KEY = re.compile(
    r"TOKEN|SECRET|PASSW(OR)?D|PASSPHRASE|PGPASS|(^|[_.-])PASS($|[_.-])|KEY|CREDENTIAL|AUTH"
    r"|COOKIE|SESSION|PRIVATE|(^|[_.-])PAT($|[_.-])",
    re.IGNORECASE,
)
# The password of a URL's user-info: scheme://user:PASSWORD@host
URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@/\s]+)(@)")
MASK = "******"

LABEL_RUN = "fgl.run"
LABEL_RANK = "fgl.node-rank"
LABEL_ROLE = "fgl.role"
LABEL_NODE = "fgl.node"
LABEL_NNODES = "fgl.nnodes"


def is_secret(key: str) -> bool:
    """Whether an environment variable's value must never be printed."""
    return bool(SECRET_KEY.search(key))


def mask_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` masked."""
    return URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)


def masked(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the values of secret-looking keys replaced by a mask (and URL passwords)."""
    return {k: (MASK if is_secret(k) else mask_urls(v)) for k, v in env.items()}


def mask_text(text: str, env: dict[str, str]) -> str:
    """``text`` with every secret value of ``env``, and every URL password, replaced by the mask."""
    for key, value in env.items():
        if is_secret(key) and value and len(value) >= 3:
            text = text.replace(value, MASK)
    return mask_urls(text)


def mask_command(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """A command line safe to print or record: secret values of ``env``, URL passwords, and the
    values of secret-looking options (``--api-key X``, ``--token=X``, ``hub_token=X``) masked."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if eq and is_secret(name):
            out.append(f"{name}={MASK}")
            continue
        if arg.startswith("-") and not eq and is_secret(arg.lstrip("-")):
            hide_next = True
        out.append(mask_text(arg, env or {}))
    return out


@dataclass
class ContainerSpec:
    """One container of a run, engine-independent."""

    image: str
    command: list[str]
    name: str
    run_id: str
    rank: int = 0
    role: str = "train"
    node: str = "localhost"
    nnodes: int = 1
    env: dict[str, str] = field(default_factory=dict)
    workspace: str | None = None
    working_dir: str | None = None
    mounts: list[str] = field(default_factory=list)
    gpus: str = "0"
    shm_size: str | None = None
    memlock: bool = True
    entrypoint: list[str] | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_RUN: self.run_id,
            LABEL_RANK: str(self.rank),
            LABEL_ROLE: self.role,
            LABEL_NODE: self.node,
            LABEL_NNODES: str(self.nnodes),
        }

    @property
    def environment(self) -> dict[str, str]:
        env = dict(self.env)
        if self.uid is not None:
            env.setdefault("PUID", str(self.uid))
        if self.gid is not None:
            env.setdefault("PGID", str(self.gid))
        return env


def device_requests(gpus: str) -> list[DeviceRequest]:
    """GPU device requests for ``gpus`` (``all``, a count, or ``0`` for none)."""
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if gpus.isdigit() and int(gpus) > 0:
        return [DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]
    return []


def volumes(spec: ContainerSpec) -> dict[str, dict[str, str]]:
    """Bind mounts: the workspace at its own path, then ``SRC:DST[:mode]`` mounts."""
    vols: dict[str, dict[str, str]] = {}
    if spec.workspace:
        vols[spec.workspace] = {"bind": spec.workspace, "mode": "rw"}
    for m in spec.mounts:
        parts = m.split(":")
        vols[parts[0]] = {"bind": parts[1], "mode": parts[2] if len(parts) > 2 else "rw"}
    return vols


def container_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """``client.containers.create(**kwargs)`` arguments for a spec."""
    ulimits = [Ulimit(name="stack", soft=STACK_BYTES, hard=STACK_BYTES)]
    if spec.memlock:
        ulimits.append(Ulimit(name="memlock", soft=-1, hard=-1))
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "labels": spec.labels,
        "environment": spec.environment,
        "network_mode": "host",
        "init": True,
        "ulimits": ulimits,
        "detach": True,
        "stdin_open": False,
        "tty": False,
    }
    size = spec.shm_size or DEFAULT_SHM_SIZE
    if size == HOST_IPC:
        kwargs["ipc_mode"] = "host"
    else:
        kwargs["ipc_mode"] = "private"
        kwargs["shm_size"] = size
    vols = volumes(spec)
    if vols:
        kwargs["volumes"] = vols
    wd = spec.working_dir or spec.workspace
    if wd:
        kwargs["working_dir"] = wd
    requests = device_requests(spec.gpus)
    if requests:
        kwargs["device_requests"] = requests
    if spec.entrypoint is not None:
        kwargs["entrypoint"] = list(spec.entrypoint)
    return kwargs


def without_memlock(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The same kwargs without the memlock ulimit."""
    out = dict(kwargs)
    out["ulimits"] = [u for u in kwargs.get("ulimits", []) if u["Name"] != "memlock"]
    return out


def is_memlock_refusal(exc: BaseException) -> bool:
    """Whether an engine error is the runtime refusing the memlock ulimit (rlimit type 8)."""
    text = str(getattr(exc, "explanation", None) or exc).lower()
    return "rlimit" in text and ("type 8" in text or "memlock" in text)


def docker_run_line(kwargs: dict[str, Any], env_for_masking: dict[str, str] | None = None) -> str:
    """The ``docker run`` command line equivalent to ``kwargs``, secrets masked (for --dry-run and logs)."""
    args = ["docker", "run", "-d", "--name", kwargs["name"], f"--network={kwargs['network_mode']}"]
    args.append(f"--ipc={kwargs['ipc_mode']}")
    if kwargs.get("shm_size"):
        args.append(f"--shm-size={kwargs['shm_size']}")
    if kwargs.get("init"):
        args.append("--init")
    for u in kwargs.get("ulimits", []):
        soft, hard = u["Soft"], u["Hard"]
        args.append(f"--ulimit={u['Name']}={soft}" + ("" if soft == hard else f":{hard}"))
    for req in kwargs.get("device_requests", []):
        args.append("--gpus=all" if req["Count"] == -1 else f"--gpus={req['Count']}")
    for key, value in sorted(kwargs.get("labels", {}).items()):
        args.append(f"--label={key}={value}")
    env = kwargs.get("environment", {})
    for key, value in masked(env).items():
        args.append(f"-e={key}={value}")
    for src, bind in kwargs.get("volumes", {}).items():
        args.append(f"-v={src}:{bind['bind']}:{bind['mode']}")
    if kwargs.get("working_dir"):
        args.append(f"-w={kwargs['working_dir']}")
    if kwargs.get("entrypoint") is not None:
        args.append(f"--entrypoint={shlex.join(kwargs['entrypoint'])}")
    args.append(kwargs["image"])
    secrets = {**env, **(env_for_masking or {})}
    args += mask_command(kwargs.get("command", []), secrets)
    return mask_text(shlex.join(args), secrets)
