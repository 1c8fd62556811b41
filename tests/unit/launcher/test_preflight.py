"""Pre-flight pieces: the probe script (run here for real), its output, engine clocks, image checks."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from fgl.inventory import NodeSpec
from fgl.preflight import (
    effective_gpus,
    gpus_setting,
    image_problems,
    parse_engine_time,
    parse_probe_output,
    probe_source,
)

pytestmark = pytest.mark.unit


def run_probe_here(args):
    out = subprocess.run(
        [sys.executable, "-c", probe_source(), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return parse_probe_output(out.stdout)


def test_probe_on_the_target_itself_takes_the_interface_holding_the_address():
    facts = run_probe_here({"target": "127.0.0.1", "ports": []})
    assert facts["interface"] == "lo" and facts["source"] == "127.0.0.1" and facts["is_target"]
    assert "lo" in facts["interfaces"]
    assert abs(facts["time_ns"] / 1e9 - time.time()) < 30


def test_probe_reports_which_ports_are_free():
    import socket

    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        facts = run_probe_here({"target": None, "ports": [taken]})
    finally:
        busy.close()
    assert facts["free_ports"] == []
    assert facts["shm_bytes"] is None or facts["shm_bytes"] > 0


def test_probe_output_is_found_among_other_lines():
    text = 'entrypoint: hello\nFGL-PROBE {"interface": "eth0"}\n'
    assert parse_probe_output(text) == {"interface": "eth0"}
    with pytest.raises(ValueError, match="printed no result"):
        parse_probe_output("python3: not found\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:10Z", 10.0),
        ("1970-01-01T00:00:10.5Z", 10.5),
        ("1970-01-01T00:00:10.123456789Z", 10.123456789),
        ("1970-01-01T01:00:10+01:00", 10.0),
    ],
)
def test_engine_system_time(text, expected):
    assert parse_engine_time(text) == pytest.approx(expected)


def test_engine_time_rejects_garbage():
    with pytest.raises(ValueError):
        parse_engine_time("yesterday")


def test_missing_image_names_nodes_and_the_fix():
    (msg,) = image_problems("img:1", {"a": "sha256:1", "b": None})
    assert "missing on b" in msg and "fgl sync-image img:1 --nodes b" in msg


def test_differing_images_name_both_ids_and_nodes():
    (msg,) = image_problems("img:1", {"a": "sha256:aaaa", "b": "sha256:bbbb", "c": "sha256:aaaa"})
    assert (
        "a, c have sha256:aaaa" in msg and "b have sha256:bbbb" in msg and "fgl sync-image" in msg
    )


def test_same_image_everywhere_is_fine():
    assert image_problems("img:1", {"a": "sha256:1", "b": "sha256:1"}) == []


def test_gpu_settings():
    node = NodeSpec("n", hostname="n", gpus="2")
    assert gpus_setting("all", node, "0") == "all"
    assert gpus_setting(None, node, "0") == "2"
    assert gpus_setting(None, NodeSpec("n"), None) == "auto"
    assert effective_gpus("auto", True) == "all"
    assert effective_gpus("auto", False) == "0"
    assert effective_gpus("4", False) == "4"
