"""A simulated LAN on one machine: a Linux bridge and one network namespace per node, each node with
its own address, Docker engine and sshd (shared/DESIGN.md §6 records why it is built this way).

    with Lan(2, root) as lan:           # root needs space for each node's image store
        lan.nodes[0].address            # "10.77.0.10"
        lan.nodes[0].spec               # "root@10.77.0.10" for fgl --nodes
        lan.trust(home)                 # their host keys into HOME/.ssh/known_hosts
        lan.nodes[1].client()           # Docker SDK client of node 1's engine (by its socket)

Nodes share this machine's file system (like an NFS-mounted workspace on a real LAN), except
``LOCAL_DISK``: each node's engine sees its own directory there (``node.local_dir`` on this machine),
as nodes with local disks see different files at one path. They do not share the network: a ``--network host`` container on a node's engine sees only that node's address. The host
itself is 10.77.0.1 on the bridge, so fgl reaches each node over SSH like a workstation on the LAN.
The nodes have no default route (no DNS server, no internet), so a name lookup fails at once instead
of waiting for resolver timeouts (torchrun's c10d rendezvous looks up its peers' names).
Everything (engines, sshd, namespaces, links, the one iptables rule) is removed by ``close()``.

Used by tests/docker/test_fgl_lan.py and benchmarks/launch_overhead.py; needs root, iproute2,
nsenter, dockerd, sshd and ssh-keygen.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
LOCAL_DISK = Path("/var/tmp/fgl-lan-local")
"""A path whose contents differ per node: each engine runs in a mount namespace of its own in which
its node's ``local_dir`` is mounted here."""


class LanError(RuntimeError):
    """The simulated LAN could not be set up (the message says which step and why)."""


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise LanError(f"$ {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def in_netns(netns: str, *args: str) -> list[str]:
    """A command line that runs ``args`` in the network namespace ``netns`` (not ``ip netns exec``:
    that remounts /sys and loses the cgroup mounts dockerd needs)."""
    return ["nsenter", f"--net=/var/run/netns/{netns}", *args]


def missing_tools() -> list[str]:
    """What this machine lacks to build a LAN (empty when it can)."""
    needed = ["ip", "nsenter", "dockerd", "ssh-keygen", "iptables"]
    missing = [tool for tool in needed if not shutil.which(tool)]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("/usr/sbin/sshd")
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def wait_until(predicate, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LanError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


@dataclass
class LanNode:
    """One simulated machine: a network namespace with an address, a Docker engine and an sshd."""

    index: int
    netns: str
    address: str
    dir: Path
    run_dir: Path
    client_key: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def local_dir(self) -> Path:
        """This node's "local disk" (what its containers see at LOCAL_DISK), on this machine."""
        return self.dir / "local"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.run_dir}/docker.sock"

    @property
    def spec(self) -> str:
        """How fgl names this node (``--nodes``)."""
        return f"root@{self.address}"

    def client(self, timeout: int = 60):
        """A Docker SDK client of this node's engine, through its socket."""
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)

    def docker(self, *args: str, timeout: float = 600, check: bool = True):
        """The docker CLI against this node's engine."""
        done = subprocess.run(
            ["/usr/bin/docker", "-H", self.docker_host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise LanError(f"docker {' '.join(args)} on {self.netns}: {done.stderr.strip()}")
        return done

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command run in this node's network namespace."""
        return sh(*in_netns(self.netns, *args), timeout=timeout)


class Lan:
    """``count`` nodes on a bridge; a context manager (``close()`` removes everything).

    ``root`` holds each node's engine data (images loaded onto a node live there: keep it across
    runs to keep them, as a benchmark does); sockets and pid files go to a short /run path.
    """

    def __init__(
        self,
        count: int,
        root: Path,
        *,
        name: str = "fgl",
        subnet: str = "10.77.0",
        start_timeout: float = 90,
    ) -> None:
        if not 1 <= count <= 200:
            raise ValueError("count must be between 1 and 200")
        self.count = count
        self.root = Path(root)
        self.name = name
        self.subnet = subnet
        self.bridge = f"{name}br0"
        self.host_address = f"{subnet}.1"
        self.start_timeout = start_timeout
        self.nodes: list[LanNode] = []
        self._forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Lan:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        missing = missing_tools()
        if missing:
            raise LanError(f"a simulated LAN needs {', '.join(missing)}")
        self._remove_leftovers()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        # Docker's FORWARD policy is DROP and bridged frames pass iptables (br_netfilter): let the
        # nodes talk to each other.
        sh("iptables", "-I", *self._forward_rule)
        Path("/run/sshd").mkdir(exist_ok=True)
        key = self.root / "client_key"
        if not key.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        for index in range(self.count):
            self.nodes.append(self._add_node(index, key))
        for node in self.nodes:
            self._start_dockerd(node)
            self._start_sshd(node)
        for node in self.nodes:
            wait_until(
                lambda n=node: n.docker("info", "-f", "{{.ID}}", check=False).returncode == 0,
                self.start_timeout,
                f"the Docker engine of {node.netns} (log {node.dir / 'dockerd.log'})",
                step=0.3,
            )
            wait_until(
                lambda n=node: _port_open(n.address, 22),
                30,
                f"sshd of {node.netns} on {node.address}:22",
            )

    def close(self) -> None:
        """Stop every engine and sshd, then remove namespaces, links and the iptables rule."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            self._remove_containers(node)
        for node in self.nodes:
            for proc in node.processes:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            for proc in node.processes:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._remove_leftovers()

    # ------------------------------------------------------------------ helpers for tests

    def trust(self, home: Path) -> None:
        """Append every node's host key to ``home``/.ssh/known_hosts."""
        ssh = Path(home) / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        lines = []
        for node in self.nodes:
            key = (node.dir / "host_key.pub").read_text().split()
            lines.append(f"{node.address} {key[0]} {key[1]}\n")
        with open(ssh / "known_hosts", "a") as out:
            out.writelines(lines)

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    def crash(self, node: LanNode) -> None:
        """A machine losing power: its link down first, so that no peer hears a goodbye (no FIN or
        RST from the dying sockets reaches anyone: peers notice only by silence), then every
        process of the node (engine, containers, sshd and its sessions) killed at once."""
        node.run("ip", "link", "set", "eth0", "down")
        for pid in sh("ip", "netns", "pids", node.netns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for proc in node.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        node.processes.clear()

    def revive(self, node: LanNode) -> None:
        """Bring a crashed node back: its link up, a fresh engine (its containers stopped) and sshd."""
        node.run("ip", "link", "set", "eth0", "up")
        for stale in ("docker.pid", "sshd.pid", "docker.sock"):
            (node.run_dir / stale).unlink(missing_ok=True)
        self._start_dockerd(node)
        self._start_sshd(node)
        wait_until(
            lambda: node.docker("info", "-f", "{{.ID}}", check=False).returncode == 0,
            self.start_timeout,
            f"the Docker engine of {node.netns} (log {node.dir / 'dockerd.log'})",
            step=0.3,
        )
        wait_until(lambda: _port_open(node.address, 22), 30, f"sshd of {node.netns}")

    # ------------------------------------------------------------------ internals

    def _add_node(self, index: int, client_key: Path) -> LanNode:
        netns = f"{self.name}n{index}"
        address = f"{self.subnet}.{10 + index}"
        node_dir = self.root / netns
        node_dir.mkdir(parents=True, exist_ok=True)
        run_dir = Path("/run") / f"{self.name}-lan" / netns
        run_dir.mkdir(parents=True, exist_ok=True)
        node = LanNode(index, netns, address, node_dir, run_dir, client_key)
        host_end = f"{self.name}v{index}"
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "link", "set", host_end, "master", self.bridge, "up")
        node.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
        node.run("ip", "link", "set", "lo", "up")
        node.run("ip", "link", "set", "eth0", "up")
        return node

    def _start_dockerd(self, node: LanNode) -> None:
        log = open(node.dir / "dockerd.log", "ab")  # noqa: SIM115  (the daemon owns it)
        node.local_dir.mkdir(parents=True, exist_ok=True)
        LOCAL_DISK.mkdir(parents=True, exist_ok=True)
        # its own mount namespace (host mounts still propagate in) with its local disk at LOCAL_DISK
        private_disk = [
            "unshare", "--mount", "--propagation", "slave", "sh", "-c",
            f'mount --bind "{node.local_dir}" "{LOCAL_DISK}" && exec "$0" "$@"',
        ]  # fmt: skip
        node.processes.append(
            subprocess.Popen(
                in_netns(
                    node.netns,
                    *private_disk,
                    "dockerd",
                    "--data-root",
                    str(node.dir / "docker"),
                    "--exec-root",
                    str(node.run_dir / "exec"),
                    "--pidfile",
                    str(node.run_dir / "docker.pid"),
                    "-H",
                    node.docker_host,
                    "--bridge",
                    "none",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                ),  # fmt: skip
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        log.close()

    def _start_sshd(self, node: LanNode) -> None:
        host_key = node.dir / "host_key"
        if not host_key.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        authorized = node.dir / "authorized_keys"
        shutil.copy(f"{node.client_key}.pub", authorized)
        authorized.chmod(0o600)
        config = node.dir / "sshd_config"
        config.write_text(
            f"ListenAddress {node.address}\nPort 22\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {node.run_dir / 'sshd.pid'}\nMaxSessions 64\nMaxStartups 64\n"
            f"SetEnv {PATH_ENV} DOCKER_HOST={node.docker_host}\n"
        )
        log = open(node.dir / "sshd.log", "ab")  # noqa: SIM115
        node.processes.append(
            subprocess.Popen(
                in_netns(node.netns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        log.close()

    def _remove_containers(self, node: LanNode) -> None:
        with contextlib.suppress(Exception):
            ids = node.docker("ps", "-aq", timeout=20, check=False).stdout.split()
            if ids:
                node.docker("rm", "-f", *ids, timeout=60, check=False)

    def _remove_leftovers(self) -> None:
        """Remove what a LAN of this name may have left (also after a crashed run)."""
        lan_run = Path("/run") / f"{self.name}-lan"
        for pidfile in list(lan_run.glob("*/docker.pid")) + list(lan_run.glob("*/sshd.pid")):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda p=pid: not _alive(p), 30, f"pid {pid} to exit", step=0.2)
        # dockerd bind-mounts its namespace at <exec-root>/netns/default and leaves it mounted: that
        # mount (or a crashed engine's overlays) would keep the namespace, and its veth, alive
        for mount in reversed(_mounts_under(lan_run, self.root)):
            sh("umount", "-l", mount, check=False)
        listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
        for line in listed:
            netns = line.split(" ")[0]
            if netns.startswith(f"{self.name}n") and netns[len(self.name) + 1 :].isdigit():
                sh("ip", "netns", "delete", netns, check=False)
        for link in Path("/sys/class/net").glob(f"{self.name}v*"):
            if link.name[len(self.name) + 1 :].isdigit():
                sh("ip", "link", "delete", link.name, check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            sh("ip", "link", "delete", self.bridge, check=False)
        while sh("iptables", "-C", *self._forward_rule, check=False).returncode == 0:
            sh("iptables", "-D", *self._forward_rule, check=False)
        shutil.rmtree(lan_run, ignore_errors=True)


def _mounts_under(*roots: Path) -> list[str]:
    """Mount points below any of ``roots``, in /proc/mounts order (parents first)."""
    prefixes = [str(root).rstrip("/") + "/" for root in roots]
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point.startswith(prefix) for prefix in prefixes):
            points.append(point)
    return points


def _port_open(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True
