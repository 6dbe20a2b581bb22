"""The fault plan both tiers run (simulation/faultplan.py).

What a user relies on: a plan is a pure function of its arguments; it survives JSON (the
``plan.json`` a nemesis run saves, ``--print-plan``'s output) unchanged; a plan written or
edited by hand is refused with a message naming the fault and what is wrong; the nemesis
tier's old ``schedule`` module is the same plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulation import faultplan
from simulation.faultplan import KINDS, Fault, dumps, from_json, plan, read, to_json, validate
from simulation.nemesis import schedule


def test_the_same_arguments_give_the_same_plan_and_the_seed_matters() -> None:
    one = plan(11, 5, KINDS, 60.0)
    assert one == plan(11, 5, list(reversed(KINDS)), 60.0)  # kinds are a set
    assert one != plan(12, 5, KINDS, 60.0)
    assert {f.kind for f in one} == set(KINDS)  # every chosen kind at least once
    assert [f.at for f in one] == sorted(f.at for f in one)
    assert all(0 < f.at < 60.0 and f.at + f.seconds <= 60.0 for f in one)


def test_every_seeded_plan_keeps_its_own_rules() -> None:
    """No two node faults on one node, a leader victim or restart-all alone among node
    faults, nothing past the window: what validate() refuses in a hand-written plan."""
    for seed in range(40):
        for nodes in (2, 3, 5):
            faults = plan(seed, nodes, KINDS, 45.0, max_active=1 + seed % 3)
            assert validate(faults, nodes, 45.0) == faults


def test_a_plan_survives_json_unchanged() -> None:
    faults = plan(3, 4, KINDS, 50.0)
    assert from_json(json.loads(json.dumps(to_json(faults))), 4, 50.0) == faults
    assert from_json(json.loads(dumps(faults)), 4) == faults
    assert json.loads(dumps([])) == []
    # a nemesis result.json carries the plan under "plan"
    assert from_json({"seed": 3, "ok": True, "plan": to_json(faults)}, 4) == faults


def test_a_hand_written_plan_needs_only_what_matters(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([
        {"at": 1, "kind": "partitions", "seconds": 4, "shape": "halves", "nodes": [0]},
        {"at": 2, "kind": "crashes", "seconds": 3, "shape": "leader"},
        {"at": 7, "kind": "slow", "seconds": 2, "shape": "node", "nodes": [2], "delay_ms": 100},
        {"at": 9, "kind": "restart-all"},
    ]))
    assert read(str(path), 3, 20.0) == [
        Fault(1.0, "partitions", 4.0, "halves", (0,)), Fault(2.0, "crashes", 3.0, "leader"),
        Fault(7.0, "slow", 2.0, "node", (2,), 100.0), Fault(9.0, "restart-all", 0.0)]


def _one(**fields: Any) -> dict[str, Any]:
    return {"at": 1.0, "kind": "crashes", "seconds": 3.0, "shape": "node", "nodes": [0],
            **fields}


@pytest.mark.parametrize("faults, message", [
    ([_one(kind="quakes")], "fault 0: unknown kind 'quakes'; choose from partitions"),
    ([_one(nodes=[3])], r"node index 3 out of range: 3 nodes are 0\.\.2"),
    ([_one(nodes=[-1])], "node index -1 out of range"),
    ([_one(at=-0.5)], "at must be a number >= 0"),
    ([_one(seconds=-2)], "seconds must be a number >= 0"),
    ([_one(at="soon")], "'at' must be a number"),
    ([_one(), _one(at=2.0, kind="pauses")],
     r"fault 0 \(crashes at 1s\) and fault 1 \(pauses at 2s\) overlap: node 0 would take two"),
    ([_one(), _one(at=3.5, nodes=[1], shape="node"), _one(at=2.0, shape="leader", nodes=[])],
     "overlap: the leader victim could be any node"),
    ([_one(nodes=[2]), {"at": 0.5, "kind": "restart-all"}], "a restart-all takes every node"),
    ([_one(shape="halves")], "shape 'halves' is not one of 'node', 'leader'"),
    ([_one(kind="partitions", shape="bridge", nodes=[1])],
     "shape 'bridge' takes side A's node indexes and the bridge last"),
    ([_one(kind="slow")], "a slow node needs delay_ms > 0"),
    ([_one(victim=1)], "unknown field 'victim'"),
    ([_one(at=30.0)], "starts after the 20s fault window ends"),
    ({"faults": []}, "a plan is a JSON list of faults"),
])
def test_a_broken_plan_is_refused_with_a_clear_message(faults: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_json(faults, 3, 20.0)


def test_faults_on_one_node_one_after_the_other_are_fine() -> None:
    back_to_back = [_one(), _one(at=4.0, kind="pauses"), _one(at=4.5, nodes=[1])]
    assert len(from_json(back_to_back, 3)) == 3
    # link faults may overlap anything
    assert len(from_json([_one(), {"at": 1.5, "kind": "flaky", "seconds": 3}], 3)) == 2


def test_a_plan_file_error_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "plan.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match=f"{broken}: not JSON"):
        read(str(broken), 3)
    with pytest.raises(ValueError, match="missing.json: No such file"):
        read(str(tmp_path / "missing.json"), 3)


def test_describe_names_the_nodes_each_tier_uses() -> None:
    faults = [Fault(1.5, "partitions", 4.0, "bridge", (0, 2)), Fault(6.0, "pauses", 2.0, "leader"),
              Fault(8.0, "slow", 3.0, "node", (1,), 200.0)]
    assert faultplan.describe(faults, ["n1", "n2", "n3"]) == [
        "  1.50s partitions bridge n1,n3 for 4.00s", "  6.00s pauses the leader for 2.00s",
        "  8.00s slow n2 200ms for 3.00s"]


def test_the_nemesis_schedule_module_is_the_shared_plan() -> None:
    assert schedule.plan is plan and schedule.Fault is Fault and schedule.KINDS == KINDS
    assert schedule.parse_kinds("all") == frozenset(KINDS)
