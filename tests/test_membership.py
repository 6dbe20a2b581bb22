"""The leader's membership policy (swarmnode/node/membership.py): pure functions over the state."""

from __future__ import annotations

from typing import Any

from swarmnode.node import membership
from swarmnode.state import SwarmState

P = "desktop"


class World:
    def __init__(self, max_voters: int = 3, grace: float = 100.0) -> None:
        self.s = SwarmState()
        self.n = 0
        self.do("configure", max_voters=max_voters, voter_grace_s=grace)

    def do(self, op: str, ts: float = 1000.0, **fields: Any) -> dict[str, Any]:
        self.n += 1
        res = self.s.apply({"op": op, "rid": f"r{self.n}", "ts": ts, **fields})
        assert res["ok"], res
        return res

    def node(self, node_id: str, ts: float = 1000.0) -> None:
        self.do("admit_node", ts=ts, node_id=node_id, raft=f"{node_id}:7701",
                url=f"http://{node_id}", cores=4, discovery="mdns")
        self.do("register_node", ts=ts, node_id=node_id, url=f"http://{node_id}", cores=4,
                profiles=[P], raft=f"{node_id}:7701")

    def apply_all(self, cmds: list[membership.Command], ts: float) -> None:
        for op, fields in cmds:
            self.do(op, ts=ts, **fields)


def test_a_voter_keeps_its_vote_while_down_until_the_grace_period_ends() -> None:
    w = World(max_voters=3, grace=100.0)
    for i in range(1, 5):
        w.node(f"n{i}")
    assert [n.node_id for n in w.s.voters()] == ["n1", "n2", "n3"]
    w.do("node_status", ts=1000.0, up=[], down=["n2"])
    assert membership.role_commands(w.s, 1099.0, "n1") == []  # a reboot reshuffles nothing
    cmds = membership.role_commands(w.s, 1100.0, "n1")
    assert [(op, f["node_id"], f["role"]) for op, f in cmds] == [
        ("set_role", "n2", "nonvoter"), ("set_role", "n4", "voter")]
    w.apply_all(cmds, 1100.0)
    assert [n.node_id for n in w.s.voters()] == ["n1", "n3", "n4"]
    assert membership.role_commands(w.s, 1200.0, "n1") == []


def test_the_leader_is_never_demoted_and_down_workers_are_not_promoted() -> None:
    w = World(max_voters=2, grace=0.0)
    for i in range(1, 4):
        w.node(f"n{i}")
    w.do("node_status", up=[], down=["n1", "n3"])
    cmds = membership.role_commands(w.s, 5000.0, leader_id="n1")
    assert cmds == []  # n1 leads (whatever a stale view says); n3, the only worker, is down


def test_free_seats_are_filled_oldest_worker_first() -> None:
    w = World(max_voters=1)
    w.node("n1", ts=1.0)
    w.node("n3", ts=2.0)
    w.node("n2", ts=3.0)
    w.do("set_role", ts=4.0, node_id="n1", role="removed", reason="retired")
    cmds = membership.role_commands(w.s, 5.0, leader_id="n3")
    assert cmds == [("set_role", {"node_id": "n3", "role": "voter",
                                  "reason": "fills a free voter seat (1 voters wanted)"})]


def test_raft_changes_follow_the_roles_one_side_at_a_time() -> None:
    w = World(max_voters=3)
    for i in range(1, 5):
        w.node(f"n{i}")
    members = {"n1:7701": True, "n2:7701": True, "static:7701": False}
    # n3 is a voter by role but not in pysyncobj's set: add it. static:7701 never registered:
    # left alone (a configured peer that has not started yet).
    assert membership.raft_changes(w.s, members, 1000.0) == [("add", "n3:7701")]
    members["n3:7701"] = True
    w.do("set_role", ts=1000.0, node_id="n2", role="nonvoter", reason="operator")
    # Still connected as a voter: wait for it to let go, or for the settle time.
    assert membership.raft_changes(w.s, members, 1001.0) == []
    members["n2:7701"] = False
    assert membership.raft_changes(w.s, members, 1001.0) == [("remove", "n2:7701")]
    members["n2:7701"] = True
    assert membership.raft_changes(w.s, members, 1000.0 + membership.DEMOTION_SETTLE_S) == [
        ("remove", "n2:7701")]


def test_a_voter_the_swarm_dropped_learns_it_only_from_a_peer_in_a_working_quorum() -> None:
    view = membership.PeerView
    me = "n2:7701"
    lost = view(True, "n1:7701", ("n1:7701", "n3:7701", "n6:7701"))
    # Peers without a quorum or a leader prove nothing: the whole swarm may be restarting,
    # and then this node's vote is what makes a majority.
    assert membership.stale_vote(me, [view(False, None, ("n1:7701", "n3:7701"))]) is None
    assert membership.stale_vote(me, [view(True, None, ("n1:7701", "n3:7701"))]) is None
    # A working quorum that still counts us: keep voting (waiting for the leader is normal).
    assert membership.stale_vote(me, [view(True, "n1:7701", ("n1:7701", me))]) is None
    assert membership.stale_vote(me, []) is None
    # One that does not: reopen as a worker with its voters.
    assert membership.stale_vote(me, [view(False, None, ()), lost]) == [
        "n1:7701", "n3:7701", "n6:7701"]
