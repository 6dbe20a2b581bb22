"""The leader's membership policy, as pure functions (state + clock + observations in).

Two layers, so the policy never races Raft itself:

* :func:`role_commands` decides *roles* in the replicated state: a bounded set of voters
  (``max_voters``, default 5) and non-voting workers beyond it. A voter that has been down for
  ``voter_grace_s`` is demoted and an up worker promoted in its place; a voter that is merely
  down keeps its vote (a reboot must not reshuffle the quorum).
* :func:`raft_changes` moves pysyncobj's actual voter set towards those roles, one change at a
  time (pysyncobj allows one uncommitted change).

And one on every node, :func:`stale_vote`: a node that still votes after the swarm dropped it
(demoted while it was down) finds out from its peers and reopens as a worker.

Why bounded: every voter is in every commit's majority and every election, so 50 voters would
make each commit wait for 26 acknowledgements. Workers replicate the log all the same
(pysyncobj read-only nodes) and forward commands, so they build exactly like voters do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from swarmnode.state import SwarmState
from swarmnode.state.records import NONVOTER, REMOVED, VOTER

Command = tuple[str, dict[str, object]]

#: A demoted voter that still holds its Raft connection is removed from the voter set after
#: this long anyway (it normally drops the connection itself when it switches to worker).
DEMOTION_SETTLE_S = 10.0


def role_commands(state: SwarmState, now: float, leader_id: str | None) -> list[Command]:
    """Demote voters down longer than the grace period, then fill free voter seats with up
    workers (oldest admitted first, so the choice is stable)."""
    cfg = state.config
    out: list[Command] = []
    voters = state.voters()
    for node in voters:
        if (not node.up and node.down_since is not None and node.node_id != leader_id
                and now - node.down_since >= cfg["voter_grace_s"]):
            out.append(("set_role", {"node_id": node.node_id, "role": NONVOTER,
                                     "reason": f"down for {now - node.down_since:.0f}s "
                                               f"(cluster.voter_grace_s is "
                                               f"{cfg['voter_grace_s']:.0f})"}))
    seats = cfg["max_voters"] - (len(voters) - len(out))
    workers = sorted((n for n in state.nodes()
                      if n.role == NONVOTER and n.up and n.raft and n.profiles),
                     key=lambda n: (n.role_ts, n.node_id))
    for node in workers[:max(0, seats)]:
        out.append(("set_role", {"node_id": node.node_id, "role": VOTER,
                                 "reason": f"fills a free voter seat ({cfg['max_voters']} "
                                           "voters wanted)"}))
    return out


def raft_changes(state: SwarmState, members: dict[str, bool], now: float) -> list[tuple[str, str]]:
    """(action, raft address) that bring pysyncobj's voters in line with the roles.

    ``members`` is the leader's view: voter address → connected. Additions come first (a
    promoted worker restarts as a voter once it sees itself added); a demoted or removed node
    is dropped once it has let go of its Raft connection (or died), or after
    :data:`DEMOTION_SETTLE_S`. Addresses no node has registered (a static peer that has not
    started yet) are left alone.
    """
    wanted = {n.raft for n in state.voters() if n.raft}
    out: list[tuple[str, str]] = [("add", a) for a in sorted(wanted - set(members))]
    by_address = {n.raft: n for n in state.nodes() if n.raft}
    for address in sorted(set(members) - wanted):
        node = by_address.get(address)
        if node is None or node.role not in (NONVOTER, REMOVED):
            continue
        if not members[address] or now - node.role_ts >= DEMOTION_SETTLE_S:
            out.append(("remove", address))
    return out


# -- on every node: a vote the swarm no longer counts --------------------------------------------

#: A voter without a leader for this long asks its peers whether it still is one.
STALE_VOTE_AFTER_S = 5.0


@dataclass(frozen=True)
class PeerView:
    """What a peer's API says of its replica (GET /api/v1/status, ``cluster``)."""

    has_quorum: bool
    leader: str | None  # the leader's Raft address, as that peer sees it
    voters: tuple[str, ...]  # pysyncobj's voter set there


def stale_vote(me_raft: str, views: Iterable[PeerView]) -> list[str] | None:
    """The voters to reopen with as a worker, if this replica votes but the swarm dropped it.

    A voter demoted while it was down (``voter_grace_s``; its seat went to a worker) restarts
    from its saved membership as a voter, and pysyncobj then drops every connection it makes:
    its address is not in anyone's voter set. It would never hear of its new role. A peer in a
    working quorum whose voter set lacks this node proves the demotion; peers without one prove
    nothing (the whole swarm restarting, where this node's vote is needed): keep voting then.
    As a worker the node catches up and follows its role (promoted again, if a seat is free).
    """
    for view in views:
        if view.has_quorum and view.leader and view.voters and me_raft not in view.voters:
            return sorted(view.voters)
    return None
