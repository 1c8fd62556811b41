"""Rendezvous plans: one run id, node 0's endpoint, per-node torchrun flags and socket interfaces."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fgl.inventory import NodeSpec, parse_node
from fgl.preflight import endpoint_address
from fgl.rendezvous import RUN_ID, NodeNet, choose_port, new_run_id, nproc_for, plan_rendezvous

pytestmark = pytest.mark.unit

RUN = "fgl-20260102-030405-beef"


def test_run_id_has_time_and_four_hex():
    assert new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "beef") == RUN
    assert RUN_ID.match(new_run_id())
    assert new_run_id() != new_run_id() or True  # random suffix; format is what matters


def test_single_node_plan():
    plan = plan_rendezvous(RUN, [NodeNet("localhost", "127.0.0.1", "lo")])
    (node,) = plan.nodes
    assert plan.endpoint == "127.0.0.1:29500"
    assert node.command(["python", "-c", "print(1)"]) == [
        "torchrun",
        "--nnodes", "1", "--node-rank", "0", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29500", "--rdzv-id", RUN,
        "--rdzv-conf", "is_host=1",
        "--local-addr", "127.0.0.1",
        "--no-python", "python", "-c", "print(1)",
    ]  # fmt: skip
    assert node.env == {
        "FGL_RUN_ID": RUN,
        "FGL_NODE_RANK": "0",
        "FGL_NNODES": "1",
        "NCCL_SOCKET_IFNAME": "lo",
        "GLOO_SOCKET_IFNAME": "lo",
    }


def test_two_node_plan_only_node0_hosts():
    nets = [NodeNet("a", "10.0.0.1", "eth0", "2"), NodeNet("b", "10.0.0.2", "enp3s0", "2")]
    plan = plan_rendezvous(RUN, nets, port=29600)
    a, b = plan.nodes
    assert "is_host=1" in a.torchrun_args and "--rdzv-conf" not in b.torchrun_args
    for rank, node in enumerate(plan.nodes):
        args = list(node.torchrun_args)
        assert args[args.index("--node-rank") + 1] == str(rank)
        assert args[args.index("--nnodes") + 1] == "2"
        assert args[args.index("--rdzv-endpoint") + 1] == "10.0.0.1:29600"
        assert args[args.index("--rdzv-id") + 1] == RUN
    assert b.torchrun_args[-2:] == ("--local-addr", "10.0.0.2")
    assert b.env["NCCL_SOCKET_IFNAME"] == b.env["GLOO_SOCKET_IFNAME"] == "enp3s0"


def test_four_node_plan_is_consistent():
    nets = [NodeNet(f"n{i}", f"192.168.1.{10 + i}", f"eth{i}", "gpu") for i in range(4)]
    plan = plan_rendezvous(RUN, nets, endpoint_address="192.168.1.10")
    assert plan.nnodes == 4
    assert [n.rank for n in plan.nodes] == [0, 1, 2, 3]
    assert sum("is_host=1" in n.torchrun_args for n in plan.nodes) == 1
    assert {n.torchrun_args[n.torchrun_args.index("--rdzv-endpoint") + 1] for n in plan.nodes} == {
        "192.168.1.10:29500"
    }
    assert [n.torchrun_args[-1] for n in plan.nodes] == [f"192.168.1.{10 + i}" for i in range(4)]
    assert all(n.torchrun_args[5] == "gpu" for n in plan.nodes)
    assert [n.env["FGL_NODE_RANK"] for n in plan.nodes] == ["0", "1", "2", "3"]


def test_static_mode_uses_master_addr_and_port():
    nets = [NodeNet("a", "10.0.0.1"), NodeNet("b", "10.0.0.2")]
    plan = plan_rendezvous(RUN, nets, port=29555, mode="static")
    for node in plan.nodes:
        args = list(node.torchrun_args)
        assert args[args.index("--master-addr") + 1] == "10.0.0.1"
        assert args[args.index("--master-port") + 1] == "29555"
        assert "--rdzv-backend" not in args and "is_host=1" not in args
    assert "NCCL_SOCKET_IFNAME" not in plan.nodes[0].env  # no interface known: torch decides


def test_ipv6_endpoint_is_bracketed():
    plan = plan_rendezvous(RUN, [NodeNet("a", "fd00::1", "eth0")])
    assert plan.endpoint == "[fd00::1]:29500"
    assert "[fd00::1]:29500" in plan.nodes[0].torchrun_args


@pytest.mark.parametrize(("kwargs", "match"), [({"mode": "etcd"}, "mode"), ({"port": 0}, "port")])
def test_bad_plan_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_rendezvous(RUN, [NodeNet("a", "10.0.0.1")], **kwargs)


@pytest.mark.parametrize(
    ("gpus", "explicit", "expected"),
    [("0", None, "1"), ("all", None, "gpu"), ("4", None, "4"), ("4", "2", "2")],
)
def test_nproc_per_node(gpus, explicit, expected):
    assert nproc_for(gpus, explicit) == expected


def test_port_choice():
    assert choose_port(None, [29500, 29501]) == 29500
    assert choose_port(None, [29501, 29502]) == 29501
    assert choose_port(29600, [29600]) == 29600
    assert choose_port(29600, []) is None
    assert choose_port(None, []) is None


def resolver(table):
    return lambda host: table[host]


def test_endpoint_is_the_address_field_first():
    specs = [NodeSpec("gpu0", hostname="gpu0", address="10.9.9.9"), parse_node("gpu1")]
    assert endpoint_address(specs, resolver({})) == "10.9.9.9"


def test_endpoint_is_the_address_fgl_reaches_node0_by():
    specs = [parse_node("gpu0"), parse_node("gpu1")]
    assert endpoint_address(specs, resolver({"gpu0": "10.0.0.5"})) == "10.0.0.5"


def test_local_node0_alone_is_loopback():
    assert endpoint_address([parse_node("localhost")]) == "127.0.0.1"


def test_local_node0_with_peers_uses_this_machines_route_to_node1():
    specs = [parse_node("localhost"), parse_node("gpu1")]
    got = endpoint_address(
        specs, resolver({"gpu1": "10.0.0.7"}), source_towards=lambda peer: f"src-to-{peer}"
    )
    assert got == "src-to-10.0.0.7"
