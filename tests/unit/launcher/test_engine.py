"""Engine connections fail fast with a line that names the node and the fix."""

from __future__ import annotations

import socket
import time

import paramiko
import pytest
from fgl.engine import Node, explain_ssh_error, parallel, raise_first
from fgl.errors import FglError, NodeError
from fgl.inventory import parse_node

pytestmark = pytest.mark.unit

SPEC = parse_node("alice@10.1.2.3:2222")


def test_unknown_host_key_says_how_to_trust_it():
    exc = paramiko.SSHException("Server '[10.1.2.3]:2222' not found in known_hosts")
    msg = explain_ssh_error(SPEC, exc)
    assert "is unknown" in msg and "ssh-keyscan -p 2222 10.1.2.3 >> ~/.ssh/known_hosts" in msg


def test_changed_host_key_is_called_out():
    key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    if key is None:
        key = paramiko.RSAKey.generate(1024)
    msg = explain_ssh_error(SPEC, paramiko.BadHostKeyException("10.1.2.3", key, key))
    assert "does not match" in msg and "ssh-keygen -R" in msg


def test_auth_failure_names_the_keys_and_the_fix():
    msg = explain_ssh_error(parse_node("h"), paramiko.AuthenticationException("no"))
    assert "authentication failed" in msg and "--ssh-key" in msg


def test_no_key_at_all_says_how_to_give_one():
    msg = explain_ssh_error(
        parse_node("h"), paramiko.SSHException("No authentication methods available")
    )
    assert (
        msg.startswith("no SSH key to log in to h:22") and "--ssh-key" in msg and "ssh-add" in msg
    )


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (TimeoutError("timed out"), "no SSH answer"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve host"),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
    ],
)
def test_network_failures(exc, text):
    assert text in explain_ssh_error(SPEC, exc)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_ssh_port_fails_fast_naming_the_node():
    spec = parse_node(f"nobody@127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(NodeError) as err:
        Node(spec).connect()
    assert time.monotonic() - t0 < 5
    assert str(err.value).startswith(f"node {spec.name}: cannot reach")


def test_silent_ssh_server_times_out_within_the_bound(monkeypatch):
    import fgl.engine

    monkeypatch.setattr(fgl.engine, "CONNECT_TIMEOUT", 0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts TCP but never says a banner
    spec = parse_node(f"nobody@127.0.0.1:{listener.getsockname()[1]}")
    t0 = time.monotonic()
    try:
        with pytest.raises(NodeError, match="node nobody@127.0.0.1"):
            Node(spec).connect()
    finally:
        listener.close()
    assert time.monotonic() - t0 < 5


def test_parallel_collects_errors_per_item():
    def f(x):
        if x == 2:
            raise NodeError("b", "down")
        return x * 10

    results = parallel(f, [1, 2, 3])
    assert results[0] == 10 and isinstance(results[1], NodeError) and results[2] == 30
    with pytest.raises(FglError, match="node b: down"):
        raise_first(results)
