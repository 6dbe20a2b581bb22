"""Pure decision helpers of the node (swarmnode/node/decisions.py)."""

from __future__ import annotations

from swarmnode.node.decisions import Fetch, FetchBackoff, LivenessTracker, tree_check_due
from test_state_machine import P, Swarm


def test_a_failed_copy_backs_off_until_its_holders_change() -> None:
    """The replicator wakes on every commit; a dead holder is asked 1 s, 2 s, 4 s … apart."""
    art = Fetch("ab" * 32, 10, "a/b-1", ("n4",))
    b = FetchBackoff(max_s=4.0)
    assert b.due([art], 0.0) == [art]
    b.record([art], set(), 0.0)
    assert b.due([art], 0.5) == [] and b.due([art], 1.0) == [art]
    b.record([art], set(), 1.0)
    assert b.due([art], 2.9) == [] and b.due([art], 3.0) == [art]
    b.record([art], set(), 3.0)
    b.record([art], set(), 7.0)
    assert b.retry[(art.sha256, art.sources)][1] == 4.0  # capped
    moved = Fetch(art.sha256, 10, "a/b-1", ("n2", "n4"))  # a new holder: try it at once
    assert b.due([moved], 7.1) == [moved]
    b.record([moved], {art.sha256}, 7.1)
    assert b.retry == {}


def test_liveness_needs_down_after_s_of_silence_and_forgets_on_reset() -> None:
    t = LivenessTracker(down_after_s=3.0)
    assert t.observe({"a": False, "b": True}, 10.0) == {"a": True, "b": True}
    assert t.observe({"a": False}, 12.9) == {"a": True}
    assert t.observe({"a": False}, 13.0) == {"a": False}
    t.reset()
    assert t.observe({"a": False}, 14.0) == {"a": True}
    assert t.observe({"a": True}, 15.0) == {"a": True}


def test_a_pinned_cycle_has_nodes_check_their_tree_until_it_ends() -> None:
    w = Swarm()
    w.node("n1", tree_versions={P: "t1"})
    w.node("other", profiles=("server",))
    assert not tree_check_due(w.s, "n1")                               # no cycle
    w.cycle("c1", {"a/x-1": [], "a/y-1": ["a/x-1"]}, tree_version="t1")
    assert tree_check_due(w.s, "n1") and not tree_check_due(w.s, "other")
    claim = w.claim("n1")                                              # nothing ready now
    assert w.s.cycle("c1").ready == 0 and tree_check_due(w.s, "n1")
    w.finish("n1", claim)
    w.build("n1")
    assert w.s.cycle("c1").finished and not tree_check_due(w.s, "n1")
    w.cycle("c2", {"a/z-1": []})                                       # not pinned
    assert not tree_check_due(w.s, "n1")
