"""Nodes and run settings: from ``--nodes a,b,c`` or an ``fgl.yaml`` inventory, with ~/.ssh/config honoured.

A node is written ``[user@]host[:port]``. The bare names ``localhost`` and ``local`` mean the engine of this
machine, reached through its socket; with a user or a port they mean SSH to this machine like any host.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fgl.errors import InventoryError

LOCAL_NAMES = frozenset({"localhost", "local"})
DEFAULT_INVENTORY = "fgl.yaml"
DEFAULT_SSH_CONFIG = "~/.ssh/config"

# user names of letters, digits and ._- only; a host name never starts with "-" (it would reach ssh
# or docker as an option)
_SPEC = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.][A-Za-z0-9_.\-]*)(?::(?P<port>[0-9]+))?$"
)
_SIZE = re.compile(r"^[0-9]+(?:[bkmgBKMG])?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

NODE_KEYS = ("host", "address", "gpus", "ssh_user", "ssh_key", "ssh_port")
TOP_KEYS = (
    "nodes",
    "image",
    "mounts",
    "env",
    "env_file",
    "gpus_per_node",
    "workspace",
    "shm_size",
    "memlock",
)


@dataclass(frozen=True)
class NodeSpec:
    """One node: how to reach its engine and what it offers.

    ``name`` is the node as written; ``hostname``/``user``/``port``/``keys`` are the SSH target after
    ~/.ssh/config (empty for the local engine); ``address`` is the LAN address the other nodes use.
    """

    name: str
    local: bool = False
    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    keys: tuple[str, ...] = ()
    proxy_command: str | None = None
    address: str | None = None
    gpus: str | None = None
    origin: str = "--nodes"

    @property
    def target(self) -> str:
        """Where the engine is: ``local socket`` or ``ssh://user@host:port``."""
        if self.local:
            return "unix:///var/run/docker.sock"
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.hostname}]" if self.hostname and ":" in self.hostname else self.hostname
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{host}{port}"


@dataclass
class Inventory:
    """The nodes of a run and the settings shared by every node."""

    nodes: list[NodeSpec] = field(default_factory=list)
    image: str | None = None
    mounts: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    env_file: str | None = None
    gpus_per_node: str | None = None
    workspace: str | None = None
    shm_size: str | None = None
    memlock: str = "auto"
    source: str | None = None


# ---------------------------------------------------------------- node specs


def parse_node(text: str, origin: str = "--nodes") -> NodeSpec:
    """Parse ``[user@]host[:port]``; ``localhost``/``local`` alone mean the local engine."""
    raw = text.strip()
    if raw in LOCAL_NAMES:
        return NodeSpec(name=raw, local=True, origin=origin)
    m = _SPEC.match(raw)
    if not m:
        raise InventoryError(
            f"{origin}: bad node {text!r}: write it as [user@]host[:port], e.g. 'alice@gpu1:22' or "
            "'localhost' (user names of letters, digits and ._- only; no host starting with -)"
        )
    port = None
    if m["port"] is not None:
        port = int(m["port"])
        if not 0 < port < 65536:
            raise InventoryError(f"{origin}: bad node {text!r}: port {port} is not in 1..65535")
    host = m["host"].strip("[]")
    return NodeSpec(name=raw, hostname=host, user=m["user"], port=port, origin=origin)


def parse_node_list(text: str, origin: str = "--nodes") -> list[NodeSpec]:
    """Parse ``a,b,c`` (commas or spaces) into node specs."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not items:
        raise InventoryError(
            f"{origin}: no nodes given (write e.g. --nodes localhost or --nodes gpu1,gpu2)"
        )
    return [parse_node(t, origin) for t in items]


def parse_gpus(value: Any, origin: str) -> str:
    """Normalise a GPU count: ``all``, ``auto`` or a non-negative integer, as text."""
    text = str(value).strip().lower()
    if text in ("all", "auto") or (text.isdigit() and int(text) >= 0):
        return str(int(text)) if text.isdigit() else text
    raise InventoryError(f"{origin}: gpus must be a number, 'all', 'auto' or 0, got {value!r}")


def parse_memlock(value: Any, origin: str) -> str:
    """Normalise the memlock setting: ``auto`` (try, fall back), ``on`` (required) or ``off``."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    text = str(value).strip().lower()
    if text in ("auto", "on", "off"):
        return text
    raise InventoryError(f"{origin}: memlock must be auto, on or off, got {value!r}")


def parse_shm_size(value: Any, origin: str) -> str:
    """A container's /dev/shm size ("16g", "512m", lower-cased) or "host" (the host's IPC)."""
    size = str(value).strip()
    if not _SIZE.match(size) and size != "host":
        raise InventoryError(f"{origin}: shm_size must look like 16g (or be host), got {size!r}")
    return size.lower()


def parse_env_pairs(items: list[str], origin: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` items (a bare ``KEY`` takes this process's value of KEY)."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not _ENV_KEY.match(key):
            raise InventoryError(f"{origin}: bad environment entry {item!r}: write KEY=VALUE")
        if not sep:
            if key not in os.environ:
                raise InventoryError(f"{origin}: {key} has no value here; write {key}=VALUE")
            value = os.environ[key]
        env[key] = value
    return env


def read_env_file(path: str | Path, origin: str | None = None) -> dict[str, str]:
    """Read a docker-style env file: ``KEY=VALUE`` lines, ``#`` comments, blank lines."""
    p = Path(path).expanduser()
    where = origin or "--env-file"
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise InventoryError(f"{where}: cannot read env file {p}: {exc.strerror}") from None
    env: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export ") :].strip()
        env.update(parse_env_pairs([text], f"{p}:{lineno}"))
    return env


def validate_mount(text: str, origin: str, base: Path | None = None) -> str:
    """Check ``SRC:DST[:ro|rw]`` (absolute DST) and make SRC absolute."""
    parts = str(text).split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise InventoryError(
            f"{origin}: bad mount {text!r}: write SRC:DST or SRC:DST:ro with an absolute DST"
        )
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise InventoryError(f"{origin}: bad mount {text!r}: the mode must be ro or rw")
    src = Path(parts[0]).expanduser()
    if not src.is_absolute():
        src = (base or Path.cwd()) / src
    return ":".join([str(src), *parts[1:]])


# ---------------------------------------------------------------- the inventory file


class _LineLoader(yaml.SafeLoader):
    """A safe loader whose mappings remember the line of each key."""


class _Lined(dict):
    line: int = 0
    key_lines: dict[str, int]


class _LinedList(list):
    line: int = 0
    item_lines: list[int]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Lined:
    mapping = _Lined(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _LinedList:
    seq = _LinedList(loader.construct_sequence(node, deep=True))
    seq.line = node.start_mark.line + 1
    seq.item_lines = [item.start_mark.line + 1 for item in node.value]
    return seq


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _where(path: Path, mapping: Any, key: str | None = None) -> str:
    line = getattr(mapping, "key_lines", {}).get(key) if key else None
    return f"{path}:{line or getattr(mapping, 'line', 1)}"


def load_inventory(path: str | Path) -> Inventory:
    """Read an ``fgl.yaml`` inventory; every error names the file and line."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise InventoryError(f"{p}: cannot read inventory: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InventoryError(f"{p}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = _Lined()
    if not isinstance(data, dict):
        raise InventoryError(f"{p}:1: an inventory is a mapping with a 'nodes' list")
    base = p.resolve().parent
    for key in data:
        if key not in TOP_KEYS:
            raise InventoryError(
                f"{_where(p, data, key)}: unknown key {key!r} (known: {', '.join(TOP_KEYS)})"
            )
    inv = Inventory(source=str(p))
    nodes = data.get("nodes") or []
    if not isinstance(nodes, list):
        raise InventoryError(f"{_where(p, data, 'nodes')}: 'nodes' must be a list")
    lines = getattr(nodes, "item_lines", [])
    for i, entry in enumerate(nodes):
        origin = f"{p}:{lines[i] if i < len(lines) else getattr(nodes, 'line', 1)}"
        inv.nodes.append(_node_entry(entry, origin, p, base))
    if "image" in data and data["image"] is not None:
        inv.image = str(data["image"])
    if data.get("mounts") is not None:
        mounts = data["mounts"]
        if not isinstance(mounts, list):
            raise InventoryError(
                f"{_where(p, data, 'mounts')}: 'mounts' must be a list of SRC:DST[:ro]"
            )
        mlines = getattr(mounts, "item_lines", [])
        inv.mounts = [
            validate_mount(m, f"{p}:{mlines[i] if i < len(mlines) else 1}", base)
            for i, m in enumerate(mounts)
        ]
    if data.get("env") is not None:
        env = data["env"]
        where = _where(p, data, "env")
        if isinstance(env, dict):
            inv.env = parse_env_pairs(
                [f"{k}={'' if v is None else v}" for k, v in env.items()], where
            )
        elif isinstance(env, list):
            inv.env = parse_env_pairs([str(e) for e in env], where)
        else:
            raise InventoryError(
                f"{where}: 'env' must be a mapping KEY: VALUE or a list of KEY=VALUE"
            )
    if data.get("env_file") is not None:
        ef = Path(str(data["env_file"])).expanduser()
        inv.env_file = str(ef if ef.is_absolute() else base / ef)
    if data.get("gpus_per_node") is not None:
        inv.gpus_per_node = parse_gpus(data["gpus_per_node"], _where(p, data, "gpus_per_node"))
    if data.get("workspace") is not None:
        ws = Path(str(data["workspace"])).expanduser()
        inv.workspace = str(ws if ws.is_absolute() else base / ws)
    if data.get("shm_size") is not None:
        inv.shm_size = parse_shm_size(data["shm_size"], _where(p, data, "shm_size"))
    if "memlock" in data:
        inv.memlock = parse_memlock(data["memlock"], _where(p, data, "memlock"))
    return inv


def _node_entry(entry: Any, origin: str, path: Path, base: Path) -> NodeSpec:
    if isinstance(entry, str):
        return parse_node(entry, origin)
    if not isinstance(entry, dict):
        raise InventoryError(f"{origin}: a node is 'host' or a mapping with 'host:'")
    for key in entry:
        if key not in NODE_KEYS:
            raise InventoryError(
                f"{_where(path, entry, key)}: unknown node key {key!r} (known: {', '.join(NODE_KEYS)})"
            )
    if not entry.get("host"):
        raise InventoryError(f"{origin}: this node has no 'host'")
    spec = parse_node(str(entry["host"]), _where(path, entry, "host"))
    changes: dict[str, Any] = {"origin": origin}
    if entry.get("address") is not None:
        changes["address"] = str(entry["address"])
    if entry.get("gpus") is not None:
        changes["gpus"] = parse_gpus(entry["gpus"], _where(path, entry, "gpus"))
    if entry.get("ssh_user") is not None:
        if spec.local:
            raise InventoryError(
                f"{_where(path, entry, 'ssh_user')}: the local engine takes no ssh_user"
            )
        changes["user"] = spec.user or str(entry["ssh_user"])
    if entry.get("ssh_port") is not None:
        where = _where(path, entry, "ssh_port")
        try:
            port = int(entry["ssh_port"])
        except (TypeError, ValueError):
            port = 0
        if not 0 < port < 65536:
            raise InventoryError(
                f"{where}: ssh_port must be a port number, got {entry['ssh_port']!r}"
            )
        if spec.local:
            raise InventoryError(f"{where}: the local engine takes no ssh_port")
        changes["port"] = spec.port or port
    if entry.get("ssh_key") is not None:
        key = Path(str(entry["ssh_key"])).expanduser()
        changes["keys"] = (str(key if key.is_absolute() else base / key),)
    return replace(spec, **changes)


def find_inventory(explicit: str | None) -> Path | None:
    """The inventory to read: ``--inventory`` if given, else ``./fgl.yaml`` if present."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise InventoryError(f"--inventory: no such file {p}")
        return p
    p = Path(DEFAULT_INVENTORY)
    return p if p.exists() else None


def select_nodes(flag: str | None, inventory: Inventory | None) -> list[NodeSpec]:
    """The nodes of this command: ``--nodes`` (taking inventory details of same-named nodes) or the inventory's."""
    known = {n.name: n for n in (inventory.nodes if inventory else [])}
    if flag:
        return [known.get(spec.name, spec) for spec in parse_node_list(flag)]
    if inventory and inventory.nodes:
        return list(inventory.nodes)
    where = f" and {inventory.source} lists none" if inventory and inventory.source else ""
    raise InventoryError(
        f"no nodes: pass --nodes host1,host2 or write an fgl.yaml inventory{where}"
    )


# ---------------------------------------------------------------- ~/.ssh/config


def resolve_ssh(
    spec: NodeSpec, ssh_config: str | Path | None = DEFAULT_SSH_CONFIG, ssh_key: str | None = None
) -> NodeSpec:
    """Apply ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyCommand) and ``--ssh-key`` to a node.

    Explicit values win: ``user@``/``:port`` in the spec, then inventory fields, then the ssh config.
    """
    if spec.local:
        return spec
    import paramiko  # imported here: parsing inventories needs no SSH library

    hostname, user, port = spec.hostname, spec.user, spec.port
    keys = list(spec.keys)
    proxy = spec.proxy_command
    path = Path(ssh_config).expanduser() if ssh_config else None
    if path and path.exists():
        conf = paramiko.SSHConfig()
        try:
            with path.open() as f:
                conf.parse(f)
            entry = conf.lookup(spec.hostname or spec.name)
        except Exception as exc:  # paramiko raises several kinds for malformed files
            raise InventoryError(f"{path}: cannot read ssh config: {exc}") from None
        hostname = entry.get("hostname", hostname)
        user = user or entry.get("user")
        if port is None and entry.get("port"):
            try:
                port = int(entry["port"])
            except ValueError:
                raise InventoryError(
                    f"{path}: Host {spec.hostname}: Port {entry['port']!r} is not a number"
                ) from None
        if not keys:
            keys = [str(Path(k).expanduser()) for k in entry.get("identityfile", [])]
        proxy = proxy or entry.get("proxycommand")
    if ssh_key:
        keys = [str(Path(ssh_key).expanduser()), *[k for k in keys if k != ssh_key]]
    return replace(
        spec, hostname=hostname, user=user, port=port, keys=tuple(keys), proxy_command=proxy
    )


def resolve_nodes(
    specs: list[NodeSpec],
    ssh_config: str | Path | None = DEFAULT_SSH_CONFIG,
    ssh_key: str | None = None,
) -> list[NodeSpec]:
    """Resolve every node through the ssh config; a node listed twice is an error."""
    resolved = [resolve_ssh(s, ssh_config, ssh_key) for s in specs]
    seen: dict[str, NodeSpec] = {}
    for s in resolved:
        key = s.target
        if key in seen:
            raise InventoryError(
                f"{s.origin}: node {s.name!r} is the same engine as {seen[key].name!r} ({key}); list it once"
            )
        seen[key] = s
    return resolved
