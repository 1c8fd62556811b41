"""The restart policy of `fgl up --elastic`, with the engines left out: which nodes each attempt gets,
what the trainers are told, and when fgl gives up. The real run (a node losing power mid-training,
the survivor finishing) is tests/docker/test_fgl_lan.py::test_elastic_run_loses_a_node_and_finishes_on_the_survivor.
"""

from __future__ import annotations

import fgl.launch as launch
import pytest
from fgl.errors import FglError
from fgl.inventory import parse_node_list
from fgl.launch import Elastic, Settings, up
from fgl.run import Run

SPECS = parse_node_list("gpu0,gpu1,gpu2")


@pytest.fixture
def attempts(monkeypatch):
    """Plays a script: each attempt sees the nodes `answering[i]` and exits `codes[i]`."""
    script = {"answering": [], "codes": [], "seen": []}

    def answering(specs):
        return [s for s in specs if s.name in script["answering"][len(script["seen"])]]

    def up_once(run, settings, command, dry_run, extra_env=None, elastic=None):
        script["seen"].append(([n.spec.name for n in run.nodes], dict(extra_env or {}), run.id))
        return script["codes"][len(script["seen"]) - 1]

    monkeypatch.setattr(launch, "_answering", answering)
    monkeypatch.setattr(launch, "_up_once", up_once)
    monkeypatch.setattr(Run, "connect", lambda self: self)
    monkeypatch.setattr(Run, "remove", lambda self, grace=5.0: [])
    return script


def elastic_up(policy: Elastic) -> int:
    return up(SPECS, Settings(image="img"), ["forgather", "train"], elastic=policy)


def test_a_failed_attempt_restarts_on_the_nodes_that_answer_resuming(attempts):
    attempts["answering"] = [{"gpu0", "gpu1", "gpu2"}, {"gpu0", "gpu2"}]
    attempts["codes"] = [255, 0]
    assert elastic_up(Elastic(min_nodes=2)) == 0
    (first_nodes, first_env, run_a), (second_nodes, second_env, run_b) = attempts["seen"]
    assert first_nodes == ["gpu0", "gpu1", "gpu2"] and second_nodes == ["gpu0", "gpu2"]
    assert run_a == run_b  # one run id: fgl down/status/logs see every attempt
    assert first_env["FORGATHER_SAVE_ON_EACH_NODE"] == "1"
    assert first_env["FORGATHER_KEEP_GLOBAL_BATCH"] == "1"
    assert "FORGATHER_RESUME" not in first_env  # the first attempt starts as asked
    assert second_env["FORGATHER_RESUME"] == "auto" and second_env["FGL_ATTEMPT"] == "1"


def test_a_node_that_answers_again_joins_the_next_attempt(attempts):
    attempts["answering"] = [{"gpu0", "gpu1"}, {"gpu0"}, {"gpu0", "gpu1", "gpu2"}]
    attempts["codes"] = [1, 1, 0]
    assert elastic_up(Elastic(min_nodes=1)) == 0
    assert [nodes for nodes, _, _ in attempts["seen"]] == [
        ["gpu0", "gpu1"],
        ["gpu0"],
        ["gpu0", "gpu1", "gpu2"],
    ]


def test_fewer_nodes_than_min_nodes_gives_up_with_one_clear_error(attempts):
    attempts["answering"] = [{"gpu0", "gpu1", "gpu2"}, {"gpu0"}]
    attempts["codes"] = [255]
    with pytest.raises(FglError, match="1 of 3 node\\(s\\) answer, fewer than --min-nodes 2"):
        elastic_up(Elastic(min_nodes=2))


def test_restarts_stop_at_max_restarts_and_on_an_interrupt(attempts):
    attempts["answering"] = [{"gpu0", "gpu1", "gpu2"}] * 5
    attempts["codes"] = [3, 3, 3, 3, 3]
    assert elastic_up(Elastic(min_nodes=1, max_restarts=2)) == 3
    assert len(attempts["seen"]) == 3  # the first attempt and two restarts

    attempts["seen"].clear()
    attempts["codes"] = [130]  # Ctrl-C: no restart
    assert elastic_up(Elastic(min_nodes=1)) == 130
    assert len(attempts["seen"]) == 1


def test_min_nodes_must_fit_the_nodes_given():
    with pytest.raises(FglError, match="--min-nodes must be between 1 and the 3 node"):
        elastic_up(Elastic(min_nodes=4))
