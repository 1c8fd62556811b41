"""Nodes from --nodes and fgl.yaml, ~/.ssh/config aliases, and errors that name file:line or the flag."""

from __future__ import annotations

import textwrap

import pytest
from fgl.errors import InventoryError
from fgl.inventory import (
    load_inventory,
    parse_node,
    parse_node_list,
    read_env_file,
    resolve_nodes,
    resolve_ssh,
    select_nodes,
)

pytestmark = pytest.mark.unit


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", ["localhost", "local"])
def test_bare_localhost_is_the_local_engine(name):
    spec = parse_node(name)
    assert spec.local and spec.target == "unix:///var/run/docker.sock"


def test_user_host_port_is_parsed():
    spec = parse_node("alice@gpu1.lan:2222")
    assert (spec.user, spec.hostname, spec.port, spec.local) == ("alice", "gpu1.lan", 2222, False)
    assert spec.target == "ssh://alice@gpu1.lan:2222"


def test_localhost_with_a_port_means_ssh_to_this_machine():
    spec = parse_node("root@localhost:2222")
    assert not spec.local and spec.target == "ssh://root@localhost:2222"


def test_bracketed_ipv6_host():
    spec = parse_node("[fe80::1]:22")
    assert spec.hostname == "fe80::1" and spec.port == 22
    assert spec.target == "ssh://[fe80::1]:22"


@pytest.mark.parametrize(
    "bad",
    [
        "a@@b",
        "host:port",
        "host:0",
        "host:70000",
        "a b",
        "user@",
        ":22",
        # what would reach ssh or a shell as an option or code
        "-oProxyCommand=x",
        "alice@-evil",
        "a;b@host",
        "$(id)@host",
        "-p@host",
    ],  # fmt: skip
)
def test_bad_node_names_the_flag(bad):
    with pytest.raises(InventoryError, match=r"^--nodes: bad node"):
        parse_node(bad)


def test_node_list_accepts_commas_and_spaces():
    names = [s.name for s in parse_node_list("localhost, a@b:22,c  d")]
    assert names == ["localhost", "a@b:22", "c", "d"]


def test_empty_node_list_is_an_error():
    with pytest.raises(InventoryError, match="no nodes"):
        parse_node_list(" , ")


FULL = """\
image: forgather:runtime
gpus_per_node: all
workspace: /data/work
shm_size: 16G
memlock: false
env:
  HF_HOME: /data/hf
  RETRIES: 3
env_file: secrets.env
mounts:
  - /data:/data
  - models:/models:ro
nodes:
  - host: gpu0
    address: 10.0.0.10
    gpus: 8
    ssh_user: ubuntu
    ssh_key: keys/id_ed25519
    ssh_port: 2200
  - bob@gpu1
  - localhost
"""


def test_full_inventory(tmp_path):
    inv = load_inventory(write(tmp_path / "fgl.yaml", FULL))
    assert inv.image == "forgather:runtime"
    assert inv.gpus_per_node == "all"
    assert inv.workspace == "/data/work"
    assert inv.shm_size == "16g"
    assert inv.memlock == "off"
    assert inv.env == {"HF_HOME": "/data/hf", "RETRIES": "3"}
    assert inv.env_file == str(tmp_path / "secrets.env")
    assert inv.mounts == ["/data:/data", f"{tmp_path}/models:/models:ro"]
    gpu0, gpu1, local = inv.nodes
    assert (gpu0.hostname, gpu0.user, gpu0.port, gpu0.address, gpu0.gpus) == (
        "gpu0",
        "ubuntu",
        2200,
        "10.0.0.10",
        "8",
    )
    assert gpu0.keys == (str(tmp_path / "keys/id_ed25519"),)
    assert gpu0.origin == f"{tmp_path / 'fgl.yaml'}:14"
    assert (gpu1.user, gpu1.hostname) == ("bob", "gpu1")
    assert local.local


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("imgae: x\n", 1, "unknown key 'imgae'"),
        ("nodes:\n  - host: a\n    gpu: 2\n", 3, "unknown node key 'gpu'"),
        ("nodes:\n  - host: a\n    gpus: lots\n", 3, "gpus must be"),
        ("nodes:\n  - a\n  - host: b\n    ssh_port: http\n", 4, "ssh_port must be a port number"),
        ("nodes:\n  - a\n  - 'x y'\n", 3, "bad node 'x y'"),
        ("nodes:\n  - address: 10.0.0.1\n", 2, "has no 'host'"),
        ("shm_size: huge\n", 1, "shm_size must look like 16g"),
        ("memlock: maybe\n", 1, "memlock must be auto, on or off"),
        ("mounts:\n  - /a:/b\n  - relative\n", 3, "bad mount 'relative'"),
        ("nodes: [a\n", 2, "not valid YAML"),
        (
            "nodes:\n  - host: localhost\n    ssh_user: me\n",
            3,
            "the local engine takes no ssh_user",
        ),
    ],
)
def test_inventory_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "fgl.yaml", text)
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    assert str(err.value).startswith(f"{path}:{line}:"), str(err.value)
    assert message in str(err.value)


def test_missing_inventory_file_is_named(tmp_path):
    with pytest.raises(InventoryError, match="cannot read inventory"):
        load_inventory(tmp_path / "nope.yaml")


def test_nodes_flag_takes_inventory_details_of_same_named_nodes(tmp_path):
    inv = load_inventory(write(tmp_path / "fgl.yaml", FULL))
    chosen = select_nodes("gpu0,other", inv)
    assert chosen[0].address == "10.0.0.10" and chosen[1].hostname == "other"
    assert [n.name for n in select_nodes(None, inv)] == ["gpu0", "bob@gpu1", "localhost"]


def test_no_nodes_anywhere_is_an_error():
    with pytest.raises(InventoryError, match="pass --nodes"):
        select_nodes(None, None)


def test_env_file_reads_comments_export_and_names_bad_lines(tmp_path):
    path = write(tmp_path / "a.env", "# c\n\nA=1\nexport B=two words\nC=\n")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": ""}
    write(path, "A=1\n1BAD=2\n")
    with pytest.raises(InventoryError, match=rf"{path}:2: bad environment entry"):
        read_env_file(path)


SSH_CONFIG = """\
Host trainer*
    User carol
    IdentityFile ~/.ssh/trainer_key

Host trainer1
    HostName 192.168.7.11
    Port 2201

Host *
    User defaultuser
"""


def test_ssh_config_alias_gives_hostname_user_port_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = write(tmp_path / "config", SSH_CONFIG)
    spec = resolve_ssh(parse_node("trainer1"), cfg)
    assert (spec.hostname, spec.user, spec.port) == ("192.168.7.11", "carol", 2201)
    assert spec.keys == (str(tmp_path / ".ssh/trainer_key"),)
    assert spec.name == "trainer1"


def test_explicit_user_port_and_ssh_key_beat_the_ssh_config(tmp_path):
    cfg = write(tmp_path / "config", SSH_CONFIG)
    spec = resolve_ssh(parse_node("dave@trainer1:22"), cfg, ssh_key="/keys/k")
    assert (spec.hostname, spec.user, spec.port) == ("192.168.7.11", "dave", 22)
    assert spec.keys[0] == "/keys/k"


def test_missing_ssh_config_changes_nothing(tmp_path):
    spec = resolve_ssh(parse_node("h"), tmp_path / "absent")
    assert (spec.hostname, spec.user, spec.port, spec.keys) == ("h", None, None, ())


def test_same_engine_twice_is_refused(tmp_path):
    cfg = write(tmp_path / "config", SSH_CONFIG)
    with pytest.raises(InventoryError, match="same engine"):
        resolve_nodes(parse_node_list("carol@192.168.7.11:2201,trainer1"), cfg)


def test_nodes_command_prints_the_resolved_table(tmp_path, fgl, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = write(tmp_path / "config", SSH_CONFIG)
    inv = write(
        tmp_path / "fgl.yaml", "nodes:\n  - localhost\n  - host: trainer1\n    address: 10.1.1.1\n"
    )
    result = fgl("nodes", "-i", str(inv), "--ssh-config", str(cfg))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["rank", "node", "engine", "ssh", "key", "address", "gpus", "from"]
    assert "unix:///var/run/docker.sock" in lines[1]
    assert "ssh://carol@192.168.7.11:2201" in lines[2] and "10.1.1.1" in lines[2]


def test_nodes_command_reports_a_bad_inventory_as_one_line(tmp_path, fgl):
    inv = write(tmp_path / "fgl.yaml", "nodes:\n  - host: a\n    gpus: many\n")
    result = fgl("nodes", "-i", str(inv))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {inv}:3: gpus must be a number, 'all', 'auto' or 0, got 'many'"
    ]
