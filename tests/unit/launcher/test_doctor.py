"""Doctor rows from pre-flight facts: what blocks a run, what only warns."""

from __future__ import annotations

import pytest
from fgl.doctor import rows_from
from fgl.errors import NodeError
from fgl.inventory import parse_node
from fgl.preflight import NodeFacts, Preflight

pytestmark = pytest.mark.unit


def facts(rank, name, **kw):
    probe = kw.pop(
        "probe",
        {
            "interface": "eth0",
            "source": f"10.0.0.{rank + 1}",
            "shm_bytes": 8 << 30,
            "hostname_resolves_to": ["10.0.0.1"],
        },
    )
    return NodeFacts(
        rank=rank,
        name=name,
        engine_version="27.0",
        image_id=kw.pop("image_id", "sha256:" + "a" * 64),
        probe=probe,
        clock_skew=kw.pop("skew", 0.01),
        **kw,
    )


def test_healthy_nodes_are_ok():
    specs = [parse_node("a"), parse_node("b")]
    f0 = facts(
        0,
        "a",
        probe={
            "interface": "eth0",
            "source": "10.0.0.1",
            "free_ports": [29500],
            "shm_bytes": 8 << 30,
        },
    )
    pf = Preflight("img", "10.0.0.1", [f0, facts(1, "b")], [29500])
    rows = rows_from(specs, [None, None], pf, None)
    assert [r.verdict for r in rows] == ["ok", "ok"]
    assert rows[0].port == "29500 free" and rows[1].route == "eth0 (10.0.0.2)"
    assert rows[0].image == "a" * 12


def test_unreachable_busy_port_and_differing_image_block():
    specs = [parse_node("a"), parse_node("b"), parse_node("c")]
    f0 = facts(
        0,
        "a",
        probe={"interface": "eth0", "source": "10.0.0.1", "free_ports": [], "shm_bytes": 8 << 30},
    )
    f1 = facts(1, "b", image_id="sha256:" + "b" * 64)
    pf = Preflight("img", "10.0.0.1", [f0, f1], [])
    rows = rows_from(
        specs, [None, None, NodeError("c", "cannot reach c:22: Connection refused")], pf, None
    )
    assert rows[0].verdict == "FAIL" and "port 29500 is in use" in rows[0].blocking[0]
    assert rows[1].image.endswith("(differs)") and rows[1].verdict == "FAIL"
    assert rows[2].ssh == "FAIL" and "Connection refused" in rows[2].blocking[0]


def test_small_shm_loopback_hostname_and_clock_skew_only_warn():
    specs = [parse_node("a")]
    probe = {
        "interface": "lo",
        "source": "127.0.0.1",
        "free_ports": [29500],
        "shm_bytes": 64 << 20,
        "hostname": "a",
        "hostname_resolves_to": ["127.0.1.1"],
    }
    pf = Preflight("img", "127.0.0.1", [facts(0, "a", probe=probe, skew=12.0)], [29500])
    (row,) = rows_from(specs, [None], pf, None, host_ipc=True)
    assert row.verdict == "warn" and not row.blocking
    assert len(row.warnings) == 3 and row.clock == "+12.00s" and row.shm == "64.0M"
    assert "containers share it (shm_size: host)" in row.warnings[0]
    # containers with their own /dev/shm (the default) do not care about the host's
    (row,) = rows_from(specs, [None], pf, None)
    assert len(row.warnings) == 2 and row.shm == "64.0M"


def test_a_missing_image_fails_every_node_lacking_it():
    specs = [parse_node("a"), parse_node("b")]
    f0 = facts(0, "a", image_id=None, probe={})
    f1 = facts(1, "b", image_id=None, probe={})
    pf = Preflight("img", "10.0.0.1", [f0, f1], [])
    rows = rows_from(specs, [None, None], pf, None)
    assert [r.image for r in rows] == ["missing", "missing"]
    assert [r.verdict for r in rows] == ["FAIL", "FAIL"]
