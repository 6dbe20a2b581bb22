"""The invariants every run is checked against, each a small function over recorded facts.

Each returns a list of messages (empty: it held), so a test can hand it a deliberately broken
history or state and see it complain. :class:`Checker` feeds them as the run goes (leaders,
applied entries, lease states, completions) and at the end (replicas, acknowledged commands,
cycles, releases); liveness (convergence and progress after the faults stop) is timed by the
simulation itself.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmnode.state import SwarmState
from swarmnode.state.machine import DEDUP_LIMIT
from swarmnode.state.records import BLOCKED, BUILT, FAILED, LEASED
from swarmnode.state.scheduling import package_key

from .history import Violation

# -- names, as printed ------------------------------------------------------------------------
ONE_LEADER = "one-leader-per-term"
SAME_ENTRIES = "replicas-apply-the-same-entries"
SAME_DIGEST = "same-index-same-digest"
KEEPS_ACKED = "followers-keep-acknowledged-entries"
VOTERS_KEPT = "a-restart-keeps-the-voter-set"
ACKED_KEPT = "no-acknowledged-command-lost"
ONE_LEASE = "one-live-lease-per-job"
FENCED = "no-stale-completion-accepted"
CYCLES_END = "every-job-ends-built-failed-or-blocked"
RELEASES = "releases-complete-and-replicated"
LIVENESS = "converges-and-progresses-after-faults"
NO_ERRORS = "no-exceptions-in-replicas"

ALL = (ONE_LEADER, SAME_ENTRIES, SAME_DIGEST, KEEPS_ACKED, VOTERS_KEPT, ACKED_KEPT, ONE_LEASE, FENCED, CYCLES_END,
       RELEASES, LIVENESS, NO_ERRORS)


@dataclass(frozen=True)
class Applied:
    """What a replica applied at one log index (the first replica to apply it sets the record)."""

    digest: str  # sha256 of the command bytes
    rid: str
    node: str


@dataclass(frozen=True)
class Ack:
    """A submit that returned a result: the proposer was told its command committed."""

    node: str
    rid: str
    op: str
    index: int   # where the proposer's replica applied it (and then answered)
    changed: bool  # the command changed the state, so its rid is remembered


# -- the checks (pure) ------------------------------------------------------------------------

def leader_conflicts(leaders: Mapping[int, Iterable[str]]) -> list[str]:
    """At most one leader per term."""
    return [f"term {term} had leaders {', '.join(sorted(set(nodes)))}"
            for term, nodes in sorted(leaders.items()) if len(set(nodes)) > 1]


def entry_conflict(known: Applied | None, index: int, new: Applied) -> str | None:
    """Replicas apply the same command at the same index (Raft's state-machine safety)."""
    if known is None or known.digest == new.digest:
        return None
    return (f"index {index}: {new.node} applied rid {new.rid} but {known.node} applied rid "
            f"{known.rid} there")


def dropped_acknowledged(node: str, acked: tuple[int, int], term: int, last: int) -> str | None:
    """Within a term a follower's log never ends before an entry it acknowledged to the
    leader (who may have counted it towards a commit): Raft truncates only on a conflict,
    which takes a newer leader."""
    acked_term, acked_index = acked
    if acked_term and acked_term == term and last < acked_index:
        return (f"{node} acknowledged entries up to {acked_index} in term {term}, then its log "
                f"ended at {last} (same term)")
    return None


def voters_changed(node: str, before: set[str], after: set[str]) -> str | None:
    """A replica's voter set is the latest configuration in its log, and the log is durable:
    a node restarted from its disk starts with the voter set it had when it stopped (else it
    counts votes and acknowledgements against a configuration the others have left)."""
    if before == after:
        return None
    lost, gained = sorted(before - after), sorted(after - before)
    return (f"{node} restarted with voters {sorted(after)}; before the crash its log said "
            f"{sorted(before)} (forgot {lost or 'nothing'}, added {gained or 'nothing'})")


def digest_conflicts(replicas: Iterable[tuple[str, int, str]]) -> list[str]:
    """Replicas at the same applied index hold the same state (``SwarmState.digest``)."""
    by_index: dict[int, dict[str, list[str]]] = {}
    for node, index, digest in sorted(replicas):
        by_index.setdefault(index, {}).setdefault(digest, []).append(node)
    return [f"applied index {index}: " + "; ".join(f"{','.join(nodes)} have {d[:12]}"
                                                   for d, nodes in sorted(groups.items()))
            for index, groups in sorted(by_index.items()) if len(groups) > 1]


def lost_acks(acks: Iterable[Ack], entries: Mapping[int, Applied],
              final_applied: OrderedDict[str, Any], rid_index: Mapping[str, int]) -> list[str]:
    """Every acknowledged command is in the committed log where its proposer applied it, and
    one that changed the state still has its effect (its rid is in the final state's dedup
    table — unless that table has since forgotten it, being full of newer rids).

    A command that changed nothing (an error, "nothing to claim", a barrier) has no effect to
    look for: for it, being in the committed log is the whole promise.
    """
    oldest = next(iter(final_applied), None)
    horizon = rid_index.get(oldest, 0) if (oldest is not None
                                            and len(final_applied) >= DEDUP_LIMIT) else 0
    out: list[str] = []
    for ack in acks:
        entry = entries.get(ack.index)
        if entry is None or entry.rid != ack.rid:
            there = "nothing" if entry is None else f"rid {entry.rid}"
            out.append(f"{ack.op} {ack.rid} was acknowledged to {ack.node} at index "
                       f"{ack.index}, but the log holds {there} there")
        elif ack.changed and ack.rid not in final_applied and ack.index > horizon:
            out.append(f"{ack.op} {ack.rid} was acknowledged to {ack.node} (index {ack.index}) "
                       "but its effect is not in the final state")
    return out


def lease_problems(state: SwarmState, ts: float) -> list[str]:
    """No job has two live leases, and every live lease is its job's current one."""
    out: list[str] = []
    holder: dict[tuple[str, str], int] = {}
    for fence in sorted(state.leases):
        lease = state.leases[fence]
        if not lease.live(ts):
            continue
        key = (lease.cycle_id, lease.cpv)
        if key in holder:
            out.append(f"job {lease.cpv} of {lease.cycle_id} has live leases {holder[key]} "
                       f"and {fence}")
        holder[key] = fence
        cycle = state.cycles.get(lease.cycle_id)
        job = cycle.jobs.get(lease.cpv) if cycle is not None else None
        if job is None or job.lease != fence or job.state != LEASED:
            out.append(f"lease {fence} on {lease.cpv} is live but its job does not hold it")
    return out


def lease_is_live(state: SwarmState, cmd: Mapping[str, Any]) -> bool:
    """Independently of the state machine: is ``cmd``'s fence the live lease of its job,
    held by its node, at its ``ts``?"""
    try:
        fence, ts = int(cmd["fence"]), float(cmd["ts"])
    except (KeyError, TypeError, ValueError):
        return False
    lease = state.leases.get(fence)
    if lease is None or lease.node_id != cmd.get("node_id") or lease.expires_at < ts:
        return False
    if lease.cycle_id != cmd.get("cycle_id") or lease.cpv != cmd.get("cpv"):
        return False
    cycle = state.cycles.get(lease.cycle_id)
    job = cycle.jobs.get(lease.cpv) if cycle is not None else None
    return job is not None and job.lease == fence and job.state == LEASED


def stale_completion(cmd: Mapping[str, Any], was_live: bool, result: Mapping[str, Any]) -> str | None:
    """A ``complete`` is accepted only from the job's live lease."""
    accepted = bool(result.get("ok")) and not result.get("stale")
    if accepted and not was_live:
        return (f"complete of {cmd.get('cpv')} from {cmd.get('node_id')} with fence "
                f"{cmd.get('fence')} was accepted although that lease was not live")
    return None


def unfinished_jobs(state: SwarmState, cycle_ids: Iterable[str]) -> list[str]:
    """Every job of every cycle the operator started ends built, failed or blocked."""
    out: list[str] = []
    for cycle_id in cycle_ids:
        cycle = state.cycles.get(cycle_id)
        if cycle is None:
            out.append(f"cycle {cycle_id} is missing from the final state")
            continue
        stuck = sorted(c for c, j in cycle.jobs.items() if j.state not in (BUILT, FAILED, BLOCKED))
        if stuck:
            out.append(f"cycle {cycle_id}: {len(stuck)} jobs ended "
                       f"{cycle.jobs[stuck[0]].state} (e.g. {stuck[0]})")
    return out


def release_problems(state: SwarmState, stores: Mapping[str, set[str]], replicas: int) -> list[str]:
    """A release names each package once, and every artifact it names is really held (in
    the simulated stores) by at least ``replicas`` nodes; no artifact claims a holder that
    does not have its bytes."""
    out: list[str] = []
    want = min(replicas, len(stores))
    for release_id in state.release_order:
        release = state.release(release_id)
        if release is None:
            continue
        seen: dict[tuple[str, str], str] = {}
        shas: dict[str, str] = {}
        for cpv in sorted(release.packages):
            art = release.packages[cpv]
            key = (package_key(cpv), art.slot)
            if key in seen:
                out.append(f"release {release_id} has {key[0]} slot {key[1]} twice "
                           f"({seen[key]}, {cpv})")
            seen[key] = cpv
            if art.sha256 in shas:
                out.append(f"release {release_id} names artifact {art.sha256[:12]} for both "
                           f"{shas[art.sha256]} and {cpv}")
            shas[art.sha256] = cpv
            held = sorted(n for n, store in stores.items() if art.sha256 in store)
            if len(held) < want:
                out.append(f"release {release_id}: {cpv} is stored on {len(held)} nodes "
                           f"({', '.join(held) or 'none'}), fewer than {want}")
    for cycle_id in state.cycle_order:
        for art in state.cycles[cycle_id].artifacts():
            liars = [h for h in art.holders if art.sha256 not in stores.get(h, set())]
            if liars:
                out.append(f"{art.cpv}: the state says {', '.join(liars)} hold "
                           f"{art.sha256[:12]} but their stores do not")
    return out


# -- feeding the checks during a run ----------------------------------------------------------

@dataclass
class Checker:
    """Collects the facts of one run and reports the first violations."""

    violations: list[Violation] = field(default_factory=list)
    leaders: dict[int, list[str]] = field(default_factory=dict)
    entries: dict[int, Applied] = field(default_factory=dict)
    rid_index: dict[str, int] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    lease_checks: bool = True

    def fail(self, invariant: str, t: float, message: str) -> None:
        self.violations.append(Violation(invariant, t, message))

    def leader(self, t: float, term: int, node: str) -> None:
        nodes = self.leaders.setdefault(term, [])
        if node not in nodes:
            nodes.append(node)
        for message in leader_conflicts({term: nodes}):
            self.fail(ONE_LEADER, t, message)

    def applied(self, t: float, node: str, index: int, blob: bytes, rid: str) -> None:
        new = Applied(hashlib.sha256(blob).hexdigest(), rid, node)
        known = self.entries.get(index)
        problem = entry_conflict(known, index, new)
        if problem is not None:
            self.fail(SAME_ENTRIES, t, problem)
        if known is None:
            self.entries[index] = new
            self.rid_index.setdefault(rid, index)

    def state_after(self, t: float, node: str, state: SwarmState, ts: float) -> None:
        if self.lease_checks:
            for message in lease_problems(state, ts):
                self.fail(ONE_LEASE, t, f"on {node}: {message}")

    def completion(self, t: float, node: str, cmd: Mapping[str, Any], was_live: bool,
                   result: Mapping[str, Any]) -> None:
        problem = stale_completion(cmd, was_live, result)
        if problem is not None:
            self.fail(FENCED, t, f"on {node}: {problem}")

    def replicas(self, t: float, replicas: Iterable[tuple[str, int, str]]) -> None:
        for message in digest_conflicts(replicas):
            self.fail(SAME_DIGEST, t, message)
