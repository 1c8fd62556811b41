"""The pre-flight probe: run with ``python3 -c`` on each node's host (over SSH) or, where that python3
is missing or does not see what containers see, in a host-network container (stdlib only, Python 3.8+).

Usage: ``python3 -c SOURCE '{"target": "10.0.0.1", "ports": [29500, 29501]}'``. Prints one line
``FGL-PROBE {json}`` with what this node sees: its hostname and what that resolves to, its IPv4
interfaces, the interface and source address that route to ``target`` (node 0; on node 0 itself the route
goes through ``lo``, so the interface holding the address is taken), which of ``ports`` are free to bind,
the size of /dev/shm and the clock.

This file is shipped as text; it never imports anything outside the standard library.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

MARKER = "FGL-PROBE "


def ipv4_interfaces():
    """Map interface name -> list of IPv4 addresses (``ip`` when present, else the SIOCGIFCONF ioctl)."""
    found = {}
    if shutil.which("ip"):
        try:
            out = subprocess.run(
                ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=5
            ).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "inet":
                    found.setdefault(parts[1].split("@")[0], []).append(parts[3].split("/")[0])
            if found:
                return found
        except Exception:
            pass
    import array
    import fcntl

    size = 40
    buf = array.array("B", b"\0" * 4096)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        addr, _ = buf.buffer_info()
        out = fcntl.ioctl(s.fileno(), 0x8912, struct.pack("iL", len(buf), addr))
        length = struct.unpack("iL", out)[0]
        data = buf.tobytes()[:length]
        for i in range(0, length, size):
            name = data[i : i + 16].split(b"\0", 1)[0].decode()
            ip = socket.inet_ntoa(data[i + 20 : i + 24])
            found.setdefault(name.split(":")[0], []).append(ip)
    finally:
        s.close()
    return found


def holder_of(address, interfaces):
    """The interface holding ``address``, or None."""
    for name, addrs in interfaces.items():
        if address in addrs:
            return name
    return None


def route_to(target, interfaces):
    """(interface, source address) this node uses to reach ``target``."""
    if shutil.which("ip"):
        try:
            out = subprocess.run(
                ["ip", "-o", "route", "get", target], capture_output=True, text=True, timeout=5
            ).stdout.split()
            dev = out[out.index("dev") + 1] if "dev" in out else None
            src = out[out.index("src") + 1] if "src" in out else None
            if dev and src:
                return dev, src
        except Exception:
            pass
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((target, 9))
        src = s.getsockname()[0]
    finally:
        s.close()
    return holder_of(src, interfaces), src


def free_ports(ports):
    """The ports among ``ports`` that nothing listens on (bind test on all addresses)."""
    free = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
            )  # TIME_WAIT leftovers do not block torch
            s.bind(("0.0.0.0", int(port)))
            free.append(int(port))
        except OSError:
            pass
        finally:
            s.close()
    return free


def probe(target=None, ports=()):
    """Everything the launcher needs to know about this node's network, shm and clock."""
    facts = {"hostname": socket.gethostname(), "time_ns": time.time_ns()}
    try:
        facts["hostname_resolves_to"] = sorted(
            {a[4][0] for a in socket.getaddrinfo(facts["hostname"], None, socket.AF_INET)}
        )
    except OSError:
        facts["hostname_resolves_to"] = []
    try:
        interfaces = ipv4_interfaces()
    except Exception as exc:
        interfaces = {}
        facts["interfaces_error"] = str(exc)
    facts["interfaces"] = interfaces
    if target:
        holder = holder_of(target, interfaces)
        if holder:
            facts["interface"], facts["source"] = holder, target
            facts["is_target"] = True
        else:
            try:
                facts["interface"], facts["source"] = route_to(target, interfaces)
            except OSError as exc:
                facts["interface"], facts["source"] = None, None
                facts["route_error"] = f"no route to {target}: {exc.strerror or exc}"
            facts["is_target"] = False
    if ports:
        facts["free_ports"] = free_ports(ports)
    try:
        st = os.statvfs("/dev/shm")
        facts["shm_bytes"] = st.f_frsize * st.f_blocks
    except OSError:
        facts["shm_bytes"] = None
    return facts


def main(argv):
    args = json.loads(argv[1]) if len(argv) > 1 else {}
    facts = probe(args.get("target"), args.get("ports") or ())
    print(MARKER + json.dumps(facts), flush=True)


if __name__ == "__main__":
    main(sys.argv)
