"""The simulator's invariants (``simulation/sim/invariants.py``) over what a real run recorded.

What an outside observer cannot see is not checked here: the log entry at each index
(``replicas-apply-the-same-entries``) and each completion's fencing check at apply time
(``no-stale-completion-accepted``) happen inside the processes. Everything else is the same
function the simulator runs, fed with polled samples and the final states; an acknowledged
operator command is checked by its effect (its cycle or release is in the final state), as
request ids are not visible through the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from simulation.sim import invariants as inv

from .client import FinalState

#: log lines that mean a node hit a bug (as tests/test_cluster_chaos.py checks)
BAD_LOG_LINES = ("unexpected error", "raft tick failed")


@dataclass(frozen=True)
class OperatorAck:
    """An operator command a node answered as done: ``fresh`` (a cycle) or ``finalize``."""

    op: str
    node: str
    ref: str  # the cycle id or the release id


def ack_problems(acks: Iterable[OperatorAck], state_of: FinalState) -> list[str]:
    """Every acknowledged command's effect is in the final state."""
    state = state_of.state
    out = []
    for ack in acks:
        if ack.op == "fresh" and state.cycle(ack.ref) is None:
            out.append(f"fresh was acknowledged by {ack.node} (cycle {ack.ref}) but the cycle "
                       f"is not in {state_of.node}'s final state")
        if ack.op == "finalize" and state.release(ack.ref) is None:
            out.append(f"finalize was acknowledged by {ack.node} (release {ack.ref}) but the "
                       f"release is not in {state_of.node}'s final state")
    return out


def artifact_shas(state: FinalState) -> list[str]:
    """Every artifact of every cycle (what ``release_problems`` looks up in the stores)."""
    st = state.state
    return sorted({a.sha256 for cid in st.cycle_order for a in st.cycles[cid].artifacts()})


def final_violations(*, leaders: Mapping[int, Iterable[str]],
                     replicas: Iterable[tuple[str, int, str]], acks: Iterable[OperatorAck],
                     states: list[FinalState], stores: Mapping[str, set[str]],
                     cycle_ids: Iterable[str], replicas_wanted: int, now_ts: float,
                     logs: Mapping[str, str]) -> list[tuple[str, str]]:
    """(invariant, message) for everything that did not hold; empty: all held."""
    out: list[tuple[str, str]] = []
    out += [(inv.ONE_LEADER, m) for m in inv.leader_conflicts(leaders)]
    finals = [(s.node, s.applied_index, s.digest) for s in states]
    out += [(inv.SAME_DIGEST, m) for m in inv.digest_conflicts(set(replicas) | set(finals))]
    for s in states:
        computed = s.state.digest()
        if computed != s.digest:
            out.append((inv.SAME_DIGEST, f"{s.node} served a state whose digest is "
                                         f"{computed[:12]}, but said {s.digest[:12]}"))
        out += [(inv.ONE_LEASE, f"on {s.node}: {m}") for m in inv.lease_problems(s.state, now_ts)]
    if not states:
        return out
    ref = max(states, key=lambda s: s.applied_index)  # the most caught-up replica
    out += [(inv.ACKED_KEPT, m) for m in ack_problems(acks, ref)]
    out += [(inv.CYCLES_END, m) for m in inv.unfinished_jobs(ref.state, cycle_ids)]
    out += [(inv.RELEASES, m) for m in inv.release_problems(ref.state, stores, replicas_wanted)]
    for node, text in sorted(logs.items()):
        for bad in BAD_LOG_LINES:
            lines = [line for line in text.splitlines() if bad in line]
            if lines:
                out.append((inv.NO_ERRORS, f"{node} logged {bad!r} {len(lines)} times, first: "
                                           f"{lines[0][:200]}"))
    return out
