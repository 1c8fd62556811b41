"""Engines: a ``Node`` wraps the Docker SDK client of one node (local socket, or ``ssh://`` over paramiko).

SSH connections check ~/.ssh/known_hosts (an unknown host key is refused, with the command that trusts
it), use ``--ssh-key``/``ssh_key``/IdentityFile and the SSH agent, and every step is bounded by a timeout
so an unreachable node fails within seconds instead of hanging. An open connection sends SSH
keepalives and gives up when the node acknowledges nothing for ``SILENCE_LIMIT`` seconds, so a node
that loses power or its network mid-run ends the streams and waits on it instead of blocking them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
from docker.models.containers import Container

from fgl.errors import FglError, NodeError
from fgl.inventory import NodeSpec

CONNECT_TIMEOUT = 10.0
"""Seconds allowed for one SSH connect, handshake, authentication or engine request."""

KEEPALIVE_INTERVAL = 5
"""Seconds between SSH keepalives on an open connection to a node."""

SILENCE_LIMIT = 20.0
"""Seconds a node may leave sent data unacknowledged before its connection counts as lost (a node
that lost power or its link never answers: without this, a stream from it waits forever)."""

LOCAL_SOCKET = "unix:///var/run/docker.sock"
SSH_POOLS = 5
"""Idle SSH session channels kept per node (sshd's MaxSessions is 10 by default)."""

T = TypeVar("T")
R = TypeVar("R")


def local_socket() -> str:
    """The local engine's socket: ``DOCKER_HOST`` when it names a unix socket, else /var/run/docker.sock."""
    host = os.environ.get("DOCKER_HOST", "")
    return host if host.startswith("unix://") else LOCAL_SOCKET


def keyscan_hint(hostname: str, port: int | None) -> str:
    """The command that adds a host's key to ~/.ssh/known_hosts."""
    return f"ssh-keyscan -p {port or 22} {hostname} >> ~/.ssh/known_hosts"


def explain_ssh_error(spec: NodeSpec, exc: BaseException, timeout: float = CONNECT_TIMEOUT) -> str:
    """One line that says why SSH to a node failed and what to do."""
    import paramiko

    where = f"{spec.user + '@' if spec.user else ''}{spec.hostname}:{spec.port or 22}"
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"the host key of {where} does not match ~/.ssh/known_hosts (host reinstalled, or someone in "
            f"the middle); if expected: ssh-keygen -R '[{spec.hostname}]:{spec.port or 22}' then "
            f"{keyscan_hint(spec.hostname or '', spec.port)}"
        )
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return (
            f"the host key of {where} is unknown (not in ~/.ssh/known_hosts); after checking it, trust it "
            f"with: {keyscan_hint(spec.hostname or '', spec.port)}"
        )
    if isinstance(exc, paramiko.SSHException) and "no authentication methods" in str(exc).lower():
        return (
            f"no SSH key to log in to {where}: none given, no default key in ~/.ssh and no SSH agent "
            "(SSH_AUTH_SOCK); pass --ssh-key FILE, set ssh_key in fgl.yaml, or ssh-add the key"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        keys = ", ".join(spec.keys) if spec.keys else "default keys"
        return (
            f"SSH authentication failed for {where} (tried {keys} and the SSH agent); "
            "pass --ssh-key FILE or set ssh_key/ssh_user in fgl.yaml"
        )
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"no SSH answer from {where} within {timeout:g} s (host down, or a firewall drops port {spec.port or 22})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {spec.hostname!r} (check the name, /etc/hosts or ~/.ssh/config HostName)"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"cannot reach {where}: {reason}"
    if isinstance(exc, paramiko.SSHException):
        return f"SSH to {where} failed: {exc}"
    return f"cannot reach {where}: {exc}"


def explain_engine_error(spec: NodeSpec, exc: BaseException) -> str:
    """One line that says why a node's engine did not answer."""
    text = str(exc)
    if spec.local:
        sock = local_socket()[len("unix://") :]
        if "Permission denied" in text or isinstance(exc, PermissionError):
            return (
                f"permission denied on {sock} (add your user to the docker group, or run as root)"
            )
        if "No such file" in text or "Connection refused" in text or "ConnectionRefused" in text:
            return f"no Docker engine answers on {sock} (is dockerd running? e.g. sudo systemctl start docker)"
        return f"the local Docker engine did not answer: {text}"
    if "Read timed out" in text or "timed out" in text:
        return f"the engine on {spec.hostname} did not answer within {CONNECT_TIMEOUT:g} s"
    return (
        f"SSH works but the engine on {spec.hostname} did not answer ({text.splitlines()[0][:200]}); "
        f"is the docker CLI installed there and usable by {spec.user or 'this user'}?"
    )


def notice_silence(transport: Any) -> None:
    """Make a paramiko transport fail when its node falls silent: keepalives every
    ``KEEPALIVE_INTERVAL`` seconds, and (on a TCP socket) the kernel aborts the connection once data
    stays unacknowledged for ``SILENCE_LIMIT`` seconds (TCP_USER_TIMEOUT, Linux), its reads then
    end and every request on it fails."""
    if transport is None:
        return
    transport.set_keepalive(KEEPALIVE_INTERVAL)
    sock = transport.sock
    if not isinstance(sock, socket.socket):  # a ProxyCommand: the proxy's own timeouts apply
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = {
        "TCP_USER_TIMEOUT": int(SILENCE_LIMIT * 1000),
        "TCP_KEEPIDLE": KEEPALIVE_INTERVAL,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": 3,
    }
    for name, value in options.items():
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _ssh_adapter_class():
    from docker.transport.sshconn import SSHHTTPAdapter

    class FglSSHAdapter(SSHHTTPAdapter):
        """docker-py's paramiko adapter, connecting with fgl's keys, known_hosts and timeouts."""

        def __init__(
            self, spec: NodeSpec, timeout: float, connect_timeout: float, max_pool_size: int
        ):
            self._spec = spec
            self._connect_timeout = connect_timeout
            # docker-py keeps one pool (one SSH session channel) per request URL; sshd allows 10 sessions
            # per connection (MaxSessions), and a run holds two streams (logs, wait) besides the pools.
            super().__init__(
                spec.target,
                timeout=timeout,
                pool_connections=SSH_POOLS,
                max_pool_size=max_pool_size,
            )

        def _create_paramiko_client(self, base_url):
            import paramiko

            spec = self._spec
            client = paramiko.SSHClient()
            client.load_system_host_keys()
            system_known = Path("/etc/ssh/ssh_known_hosts")
            if system_known.exists():
                client.load_system_host_keys(str(system_known))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            t = self._connect_timeout
            self.ssh_client = client
            self.ssh_params = {
                "hostname": spec.hostname,
                "port": spec.port or 22,
                "username": spec.user,
                "timeout": t,
                "banner_timeout": t,
                "auth_timeout": t,
                "channel_timeout": t,
                "allow_agent": True,
            }
            if spec.keys:
                self.ssh_params["key_filename"] = list(spec.keys)
            if spec.proxy_command:
                self.ssh_params["sock"] = paramiko.ProxyCommand(spec.proxy_command)

        def _connect(self):
            super()._connect()
            notice_silence(self.ssh_client.get_transport())

    return FglSSHAdapter


def open_client(spec: NodeSpec, timeout: float | None = CONNECT_TIMEOUT) -> docker.DockerClient:
    """A Docker SDK client for a node's engine; raises NodeError naming the node when it cannot be reached."""
    request_timeout = timeout if timeout is not None else 24 * 3600
    if spec.local:
        try:
            client = docker.DockerClient(
                base_url=local_socket(), timeout=request_timeout, version="auto"
            )
        except docker.errors.DockerException as exc:
            raise NodeError(spec.name, explain_engine_error(spec, exc)) from None
        return client
    adapter_cls = _ssh_adapter_class()
    try:
        adapter = adapter_cls(spec, request_timeout, CONNECT_TIMEOUT, max_pool_size=2)
    except Exception as exc:  # paramiko and socket raise many kinds; all mean "not reachable"
        raise NodeError(spec.name, explain_ssh_error(spec, exc)) from None
    # Let docker-py build an ssh:// client that has not connected yet (shell-out mode connects lazily),
    # then swap in the paramiko adapter above and negotiate the API version over it.
    api = docker.APIClient(
        base_url=spec.target, version="1.41", timeout=request_timeout, use_ssh_client=True
    )
    api._custom_adapter = adapter
    api.mount("http+docker://ssh", adapter)
    try:
        api._version = api._retrieve_server_version()
    except Exception as exc:
        adapter.close()
        raise NodeError(spec.name, explain_engine_error(spec, exc)) from None
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client


class Node:
    """One node of a run: its spec, its rank and a lazily opened engine client."""

    def __init__(self, spec: NodeSpec, rank: int = 0, timeout: float | None = CONNECT_TIMEOUT):
        self.spec = spec
        self.rank = rank
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Node {self.rank} {self.spec.name}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        """The log prefix of this node: ``node-<rank>``."""
        return f"node-{self.rank}"

    @property
    def client(self) -> docker.DockerClient:
        """The engine client, connected on first use."""
        with self._lock:
            if self._client is None:
                self._client = open_client(self.spec, self.timeout)
            return self._client

    def connect(self) -> Node:
        """Open the engine client now (errors name the node)."""
        _ = self.client
        return self

    def run_on_host(self, argv: list[str], timeout: float = 15.0) -> tuple[int, str]:
        """Run ``argv`` on the node's host itself (a subprocess here for the local engine, else an
        exec on the node's SSH connection); returns (exit status, stdout and stderr)."""
        if self.spec.local:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
            return done.returncode, done.stdout + done.stderr
        ssh = self.client.api._custom_adapter.ssh_client  # fgl's own adapter (open_client)
        _, stdout, stderr = ssh.exec_command(shlex.join(argv), timeout=timeout)
        out = stdout.read().decode("utf-8", "replace") + stderr.read().decode("utf-8", "replace")
        return stdout.channel.recv_exit_status(), out

    def fail(self, message: str) -> NodeError:
        """A NodeError naming this node."""
        return NodeError(self.name, message)

    def info(self) -> dict[str, Any]:
        """The engine's ``docker info``."""
        return self._call("docker info", lambda c: c.info())

    def engine_version(self) -> str:
        """The engine's version string."""
        return self._call("docker version", lambda c: c.version().get("Version", "?"))

    def has_gpu_runtime(self, info: dict[str, Any] | None = None) -> bool:
        """Whether the engine has the nvidia runtime (GPU device requests work there)."""
        runtimes = (info or self.info()).get("Runtimes") or {}
        return "nvidia" in runtimes

    def image_id(self, ref: str) -> str | None:
        """The id of image ``ref`` on this node, or None when the node lacks it."""

        def get(c: docker.DockerClient) -> str | None:
            try:
                return c.images.get(ref).id
            except docker.errors.ImageNotFound:
                return None

        return self._call(f"image {ref}", get)

    def containers(self, run: str | None = None, role: str | None = None) -> list[Container]:
        """Containers on this node carrying fgl labels (all states), optionally of one run/role."""
        labels = [f"fgl.run={run}" if run else "fgl.run"]
        if role:
            labels.append(f"fgl.role={role}")
        return self._call(
            "list containers", lambda c: c.containers.list(all=True, filters={"label": labels})
        )

    def remove_run(self, run: str, grace: float = 5.0) -> list[str]:
        """Stop (SIGTERM, then SIGKILL after ``grace`` s) and remove this node's containers of ``run``."""
        removed = []
        for container in self.containers(run):
            stop_and_remove(container, grace)
            removed.append(container.name)
        return removed

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None

    def _call(self, what: str, fn: Callable[[docker.DockerClient], T]) -> T:
        client = self.client
        try:
            return fn(client)
        except docker.errors.APIError as exc:
            raise self.fail(f"{what}: {exc.explanation or exc}") from None
        except (docker.errors.DockerException, OSError) as exc:
            raise self.fail(f"{what}: {explain_engine_error(self.spec, exc)}") from None
        except Exception as exc:
            if "timed out" in str(exc) or "Connection" in type(exc).__name__:
                raise self.fail(f"{what}: {explain_engine_error(self.spec, exc)}") from None
            raise


def stop_and_remove(container: Container, grace: float = 5.0) -> None:
    """SIGTERM, SIGKILL after ``grace`` s, then remove; a container already gone is fine."""
    try:
        container.stop(timeout=max(0, int(grace)))
    except docker.errors.NotFound:
        return
    except docker.errors.APIError:
        pass  # already stopped, or being removed: removal below settles it
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            raise


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R | BaseException]:
    """Run ``fn`` on every item concurrently; each result is the value or the exception raised."""
    items = list(items)
    if not items:
        return []

    def guarded(item: T) -> R | BaseException:
        try:
            return fn(item)
        except BaseException as exc:  # collected and reported per node by the caller
            return exc

    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        return list(pool.map(guarded, items))


def raise_first(results: Iterable[object], what: str = "") -> None:
    """Raise one FglError listing every failure among ``parallel`` results."""
    errors = [r for r in results if isinstance(r, BaseException)]
    if not errors:
        return
    for e in errors:
        if not isinstance(e, FglError):
            raise e
    if len(errors) == 1:
        raise errors[0]
    lines = "; ".join(str(e) for e in errors)
    raise FglError(f"{what}{len(errors)} nodes failed: {lines}" if what else lines)


def connect_all(specs: list[NodeSpec], timeout: float | None = CONNECT_TIMEOUT) -> list[Node]:
    """Nodes for ``specs`` (ranked in order), all connected in parallel; one error lists every unreachable node."""
    nodes = [Node(spec, rank, timeout) for rank, spec in enumerate(specs)]
    raise_first(parallel(Node.connect, nodes))
    return nodes
