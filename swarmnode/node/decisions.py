"""What a node decides, as pure functions: state + clock + observations in, commands out.

The daemon's loops (worker, maintenance, replicator) are thin I/O shells around these; the
simulator calls the same functions on virtual time. Nothing here reads a clock, the disk or
the network. A returned command is ``(op, fields)``; the caller stamps rid and ts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from swarmnode.state import SwarmState

Command = tuple[str, dict[str, Any]]


# -- the worker: when to claim ----------------------------------------------------------------

@dataclass(frozen=True)
class WorkerView:
    """What a node knows about itself when deciding whether to claim."""

    node_id: str
    cores: int
    max_jobs: int
    running_cores: tuple[int, ...] = ()
    workstation: bool = False  # shared machine: leave room for its own user
    load_1m: float = 0.0       # the OS load average (only used on a workstation)
    reserve_cores: int = 0     # cores a workstation always keeps free for its user


def free_cores(view: WorkerView) -> int:
    """Cores this node may still give to builds.

    On a workstation, load that our builds do not explain is the user's: those cores (rounded
    up) plus a reserve are not ours to take.
    """
    ours = sum(view.running_cores)
    free = view.cores - ours
    if view.workstation:
        foreign = max(0.0, view.load_1m - ours)
        free -= math.ceil(foreign) + view.reserve_cores
    return max(0, free)


def claim_command(state: SwarmState, view: WorkerView, lease_ttl_s: float,
                  ts: float | None = None) -> Command | None:
    """A claim worth proposing now, or None.

    A refused claim still costs a commit, and every commit wakes every worker: when the
    scheduler would answer "wait" (the job finishes sooner elsewhere, cores are kept for a
    bigger build) two idle nodes would otherwise wake each other with refused claims many
    times a second. With ``ts`` (the clock the claim will carry) the state's own
    ``claim_preview`` is asked first, and only a claim it would grant is proposed.
    """
    if len(view.running_cores) >= view.max_jobs:
        return None
    free = free_cores(view)
    if free < 1:
        return None
    node = state.node(view.node_id)
    if node is None or not node.up:
        return None
    if not any(c.profile in node.profiles and c.ready > 0 for c in state.active_cycles()):
        return None
    if ts is not None and state.claim_preview(view.node_id, free, ts)["cpv"] is None:
        return None
    return ("claim", {"node_id": view.node_id, "free_cores": free, "lease_ttl_s": lease_ttl_s})


def tree_check_due(state: SwarmState, node_id: str) -> bool:
    """A cycle pinned to a tree version is running for one of this node's profiles.

    Then the node looks at its repositories again before claiming (rate-limited by the
    caller): someone may have synced or edited them since it last reported, and a node must
    never build a pinned cycle's job from a different tree. Also while none of the cycle's
    jobs is ready (all leased, or waiting for their deps): a drifted node must say so
    (`swarmnode nodes` shows it) rather than go quiet until something is ready, by which time
    another node may have claimed it.
    """
    node = state.node(node_id)
    if node is None:
        return False
    return any(c.profile in node.profiles and c.tree_version for c in state.active_cycles())


def staging_artifacts(cycle: Any, cpv: str) -> list[Any]:
    """Artifacts a job's build installs from: everything the cycle reuses, plus the built
    artifacts of its transitive dependencies (not the whole cycle: a node then fetches only
    what this build needs)."""
    found = dict(cycle.reused)
    for dep in cycle.closure(cycle.jobs[cpv].deps, "deps"):
        if cycle.jobs[dep].artifact is not None:
            found[dep] = cycle.jobs[dep].artifact
    return [found[c] for c in sorted(found)]


# -- the leader: maintenance ------------------------------------------------------------------

@dataclass
class LivenessTracker:
    """The leader's view of which nodes are reachable, from Raft connectivity.

    mDNS or HTTP would only hint; Raft connections are what carries the cluster, so a node the
    leader cannot reach for ``down_after_s`` is down (its leases are revoked at once), and one
    it reaches again is up.
    """

    down_after_s: float = 3.0
    since: dict[str, float] = field(default_factory=dict)  # node id → first seen unreachable

    def observe(self, reachable: dict[str, bool], now: float) -> dict[str, bool]:
        """Feed one observation (node id → connected); returns node id → should be up."""
        verdict: dict[str, bool] = {}
        for node_id, ok in sorted(reachable.items()):
            if ok:
                self.since.pop(node_id, None)
                verdict[node_id] = True
            else:
                first = self.since.setdefault(node_id, now)
                verdict[node_id] = now - first < self.down_after_s
        return verdict

    def reset(self) -> None:
        """Forget history (on gaining leadership: give every node a fresh grace period)."""
        self.since.clear()


def maintenance_commands(state: SwarmState, now: float,
                         should_be_up: dict[str, bool]) -> list[Command]:
    """The leader's periodic duties: mark nodes up/down, expire leases, cool breakers."""
    out: list[Command] = []
    up = sorted(n for n, ok in should_be_up.items()
                if ok and (node := state.node(n)) is not None and not node.up)
    down = sorted(n for n, ok in should_be_up.items()
                  if not ok and (node := state.node(n)) is not None and node.up)
    if up or down:
        out.append(("node_status", {"up": up, "down": down}))
    if state.needs_maintenance(now):
        out.append(("expire", {}))
    return out


# -- replication: which artifacts this node should copy ---------------------------------------

@dataclass(frozen=True)
class Fetch:
    """Copy one store object from any of ``sources`` (node ids, best first)."""

    sha256: str
    size: int
    cpv: str
    sources: tuple[str, ...]


def _rank(sha256: str, node_id: str) -> str:
    """Rendezvous hashing: every node computes the same preference order per artifact."""
    return hashlib.sha256(f"{sha256}:{node_id}".encode()).hexdigest()


def replication_fetches(state: SwarmState, me: str) -> list[Fetch]:
    """Under-replicated artifacts this node is chosen to copy (and does not hold yet).

    For each artifact short of its target, the up nodes that lack it are ranked by rendezvous
    hash and the first ``missing`` are chosen — all nodes agree without talking, and a node
    going down only moves its own share.
    """
    node = state.node(me)
    if node is None or not node.up:
        return []
    up_nodes = [n.node_id for n in state.nodes() if n.up]
    out: list[Fetch] = []
    for entry in state.under_replicated():
        holders = entry["holders"]
        if not holders:
            continue  # no live copy anywhere: nothing to fetch from until a holder returns
        candidates = sorted((n for n in up_nodes if n not in holders),
                            key=lambda n: _rank(entry["sha256"], n))
        chosen = candidates[: entry["missing"]]
        if me in chosen:
            out.append(Fetch(entry["sha256"], entry["size"], entry["cpv"], tuple(holders)))
    return out


@dataclass
class FetchBackoff:
    """Failed copies wait 1 s, 2 s, … up to ``max_s`` before the next try — per object and
    set of holders, so a new holder is tried at once."""

    max_s: float = 30.0
    retry: dict[tuple[str, tuple[str, ...]], tuple[float, float]] = field(default_factory=dict)

    def due(self, chosen: list[Fetch], now: float) -> list[Fetch]:
        live = {(f.sha256, f.sources) for f in chosen}
        self.retry = {k: v for k, v in self.retry.items() if k in live}
        return [f for f in chosen if self.retry.get((f.sha256, f.sources), (0.0, 0.0))[0] <= now]

    def record(self, tried: list[Fetch], got: set[str], now: float) -> None:
        for f in tried:
            key = (f.sha256, f.sources)
            if f.sha256 in got:
                self.retry.pop(key, None)
            else:
                delay = min(self.max_s, max(1.0, self.retry.get(key, (0.0, 0.5))[1] * 2))
                self.retry[key] = (now + delay, delay)


def missing_for(state: SwarmState, artifacts: list[Any], have: set[str]) -> list[Fetch]:
    """Fetches that give this node every artifact in ``artifacts`` (e.g. a release it serves)."""
    out: dict[str, Fetch] = {}
    for art in artifacts:
        if art.sha256 in have or art.sha256 in out:
            continue
        live = state.live_holders(art)
        rest = [h for h in art.holders if h not in live]
        out[art.sha256] = Fetch(art.sha256, art.size, art.cpv, tuple(live + rest))
    return [out[k] for k in sorted(out)]


def stored_commands(me: str, fetched: list[str]) -> list[Command]:
    """Tell the swarm this node now holds these objects."""
    return [("artifact_stored", {"node_id": me, "sha256": sha}) for sha in sorted(fetched)]
