"""Scheduling policy: duration estimates, critical-path priority, core allocation, placement.

Pure functions of their arguments (no clock, no I/O) so every replica and the simulator rank
and place jobs identically. Estimates are *core-seconds*: what a build costs on one core, the
same whatever share of a machine it later gets, so it transfers between nodes.

A claim (see ``SwarmState._op_claim``) ranks ready jobs by their remaining critical path in
wall seconds, gives each the cores its chain needs to end within the cycle's projected time
(:func:`cores_within`, at most :func:`useful_cores`), and then list-schedules them over the
predicted occupation of every node (:func:`place`): a long build goes where it finishes
first, and a node keeps cores free for one that is about to need them rather than start a
build that would be in its way. ``simulation/bench/README.md`` ("Scheduling bench") shows what
each part is worth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Estimate for a package never built before (core-seconds): the brief's median build is ~43 s.
DEFAULT_CORE_SECONDS = 60.0
#: One core per this many estimated core-seconds: long jobs get many cores, short ones few.
CORE_SECONDS_PER_CORE = 120.0
#: Weight of the newest sample in the learned estimate (an EWMA): adapts within a few builds.
EWMA_ALPHA = 0.5

# The version part of a cpv, as PMS defines it (portage.versions.ver_regexp, minus legacy cvs.).
_VERSION = re.compile(
    r"-(\d+(?:\.\d+)*[a-z]?(?:_(?:alpha|beta|pre|rc|p)\d*)*(?:-r\d+)?)$"
)


def package_key(cpv: str) -> str:
    """``cat/pn`` of a ``cat/pn-ver`` string (a different version of a package costs the same).

    The state machine may not import portage (it must stay pure and cheap), so this is the one
    place that splits a version off, with the PMS version grammar.
    """
    return _VERSION.sub("", cpv, count=1)


def estimate(durations: Mapping[str, float], cpv: str) -> float:
    """Learned core-seconds (one-core time, see :func:`one_core_seconds`) for the package of
    ``cpv``, or the default for unknown packages."""
    return durations.get(package_key(cpv), DEFAULT_CORE_SECONDS)


def learn(previous: float | None, sample: float) -> float:
    """Fold one observed build (core-seconds) into the estimate (EWMA; the first sample wins)."""
    if previous is None:
        return sample
    return EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * previous


def allocate_cores(est_core_seconds: float, free_cores: int) -> int:
    """``clamp(ceil(est / 120), 1, free_cores)``: the most cores a build is given
    (:func:`useful_cores`) within what is free."""
    want = math.ceil(est_core_seconds / CORE_SECONDS_PER_CORE)
    return max(1, min(want, free_cores))


def topo_order(deps: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """Kahn's algorithm over ``node → its deps``: (deps-first order, nodes left in a cycle).

    The order is deterministic (ties broken by name); the second list is empty for a DAG.
    Deps naming unknown nodes are ignored (the caller validates them).
    """
    pending = {n: sum(1 for d in set(ds) if d in deps) for n, ds in deps.items()}
    dependents: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in set(ds):
            if d in deps:
                dependents[d].append(n)
    frontier = sorted(n for n, c in pending.items() if c == 0)
    order: list[str] = []
    while frontier:
        nxt: list[str] = []
        for n in frontier:
            order.append(n)
            for m in dependents[n]:
                pending[m] -= 1
                if pending[m] == 0:
                    nxt.append(m)
        frontier = sorted(nxt)
    stuck = sorted(n for n, c in pending.items() if c > 0)
    return order, stuck


def critical_paths(deps: Mapping[str, Sequence[str]], dependents: Mapping[str, Iterable[str]],
                   est: Mapping[str, float]) -> dict[str, float]:
    """Remaining critical path of every job: its estimate + the longest chain of its dependents.

    Scheduling the job with the longest remaining path first is the classic list-scheduling
    rule that keeps a DAG's makespan near its critical-path bound.
    """
    order, _ = topo_order(deps)
    path: dict[str, float] = {}
    for n in reversed(order):
        tail = max((path[d] for d in dependents[n] if d in path), default=0.0)
        path[n] = est[n] + tail
    return path


# -- placement: how many cores, on which node, now or later -----------------------------------
#
# Estimates are core-seconds (≈ the build's time on one core). How a build speeds up with more
# cores is not learned (one cycle builds a package once, on one core count), so placement uses
# a prior: Amdahl's law with a serial part of a fixed SERIAL_S (configure, install) plus
# SERIAL_SHARE of the rest (linking). It only has to rank options, not predict to the second.

#: Seconds of every build that do not parallelise (configure, install), on any core count.
SERIAL_S = 45.0
#: Share of the remaining core-seconds that does not parallelise either (linking, tests).
SERIAL_SHARE = 0.03
#: A job's path must fit this share of the cycle's projected remaining time: the margin that
#: absorbs queueing and estimate errors before the job turns into the tail.
HORIZON_MARGIN = 0.5
#: The same share for a leaf, a job nothing in its cycle depends on: no chain behind it can
#: turn late, so it needs less margin, and on fewer cores it wastes less and leaves cores to
#: the chains that do. (On desktop.json, where five multi-hour leaves otherwise took every
#: core for an hour, 1.31x the lower bound became 1.28x; other workloads barely moved.)
LEAF_MARGIN = 0.7
#: Cores held for a long build that is not ready yet are only held from this share of its
#: duration after its predicted release: a shorter build ending by then delays it little.
SOFT_GRACE = 0.05
#: A start predicted for later is counted this much later again when choosing where a job
#: goes: predictions of when running builds end are rough, and waiting leaves cores idle.
WAIT_DOUBT = 0.5
#: Jobs a claim places on other nodes or later before it only looks for one that fits here
#: now: beyond a few dozen the predicted schedule is too uncertain to be worth its cost.
PLAN_DEPTH = 32


def serial_part(est: float) -> float:
    """Seconds of a build of ``est`` core-seconds that no number of cores shortens."""
    return min(est, SERIAL_S + SERIAL_SHARE * est)


def wall_time(est: float, cores: int) -> float:
    """Predicted wall seconds of a build of ``est`` core-seconds on ``cores`` cores."""
    serial = serial_part(est)
    return serial + (est - serial) / max(1, cores)


def one_core_seconds(wall: float, cores: int) -> float:
    """What a build that took ``wall`` seconds on ``cores`` cores costs on one (the inverse
    of :func:`wall_time`), so estimates learned at any core count compare. ``wall × cores``
    would overstate it: the serial part does not shrink with more cores."""
    cores = max(1, cores)
    if wall <= SERIAL_S / (1.0 - SERIAL_SHARE):  # all serial
        return wall
    return (wall - SERIAL_S + SERIAL_S / cores) / (SERIAL_SHARE + (1.0 - SERIAL_SHARE) / cores)


def useful_cores(est: float) -> int:
    """``ceil(est / 120)``, at least 1: more cores than that only add overhead (see
    :func:`allocate_cores`); the most a job is ever given."""
    return max(1, math.ceil(est / CORE_SECONDS_PER_CORE))


def cores_within(est: float, budget_s: float, cap: int) -> int:
    """Fewest cores (1..cap) that build ``est`` within ``budget_s`` wall seconds, else cap."""
    serial = serial_part(est)
    if budget_s <= serial:
        return cap
    return max(1, min(cap, math.ceil((est - serial) / (budget_s - serial) - 1e-9)))


def fast_paths(deps: Mapping[str, Sequence[str]], dependents: Mapping[str, Iterable[str]],
               est: Mapping[str, float], max_cores: int) -> dict[str, float]:
    """Remaining critical path in wall seconds, every job on its useful cores (≤ max_cores):
    the shortest time in which the chain behind each job can possibly finish."""
    fast = {n: wall_time(e, min(useful_cores(e), max_cores)) for n, e in est.items()}
    return critical_paths(deps, dependents, fast)


class Capacity:
    """One node's cores over (predicted) time, as a claim sees it: which builds hold how many
    cores until when. Answers "when could a build of c cores for d seconds start here?".

    *Soft* bookings hold cores for a long build that is not ready yet, from a little after its
    predicted release (SOFT_GRACE): a build that would overlap them goes elsewhere or waits,
    but no node ever waits idle for the soft booking itself (when a build becomes ready is
    the roughest prediction of all). ``free_at`` leaves them out unless asked.
    """

    def __init__(self, cores: int, slots: int) -> None:
        self.cores = cores
        self.slots = slots            # builds at once; 0 = no limit but the cores
        self.busy: list[tuple[float, float, int, bool]] = []   # (start, end, cores, soft)

    def book(self, start: float, end: float, cores: int, soft: bool = False) -> None:
        self.busy.append((start, end, cores, soft))

    @property
    def share(self) -> int:
        """Cores per slot: what every build here should get at least, or the slot limit
        leaves cores idle (1 without a slot limit)."""
        return max(1, self.cores // self.slots) if self.slots else 1

    def _load(self, x: float, soft: bool) -> tuple[int, int]:
        """(cores used, builds running) at time ``x``, soft bookings counted if ``soft``."""
        held = [c for s, e, c, f in self.busy if s <= x < e and (soft or not f)]
        return sum(held), len(held)

    def free_at(self, x: float, soft: bool = False) -> int:
        """Cores a new build could get at ``x`` (0 if every slot is taken)."""
        used, running = self._load(x, soft)
        if self.slots and running >= self.slots:
            return 0
        return max(0, self.cores - used)

    def fits(self, t: float, duration: float, cores: int, soft: bool = False) -> bool:
        end = t + duration
        for x in [t] + [s for s, _, _, f in self.busy if t < s < end and (soft or not f)]:
            used, running = self._load(x, soft)
            if used + cores > self.cores or (self.slots and running >= self.slots):
                return False
        return True

    def earliest(self, cores: int, duration: float, now: float, soft: bool = False) -> float:
        """Earliest start ≥ now with ``cores`` free for ``duration`` and a free slot
        (``math.inf`` if the node is too small)."""
        if cores > self.cores:
            return math.inf
        for t in sorted({now} | {e for _, e, _, f in self.busy if e > now and (soft or not f)}):
            if self.fits(t, duration, cores, soft):
                return t
        return math.inf


@dataclass(frozen=True)
class Candidate:
    """A job as a claim weighs it (candidates arrive in priority order)."""

    cpv: str
    est: float                    # core-seconds on one core
    want: int                     # cores it should get (already capped by the largest node)
    nodes: tuple[str, ...]        # nodes that may build it (up, serving, not failed there)
    release: float = -math.inf    # not ready yet: its dependencies should be built by then


@dataclass(frozen=True)
class Placement:
    """The claim's answer: which candidate (index) on how many cores now, or why none."""

    index: int | None
    cores: int = 0
    reason: str = ""


def place(candidates: Sequence[Candidate], me: str, capacity: Mapping[str, Capacity],
          now: float) -> Placement:
    """What node ``me`` should start now: list scheduling of the candidates in priority
    order over the predicted occupation of every node (``capacity``, booked as it goes).

    A ready job whose wanted cores are free here now starts here (with at least the node's
    cores per slot, if free: cores left idle behind a slot limit help no one). Any other
    goes where it would finish first — on another node (whose time is then booked), later
    here (the node keeps those cores free for it: meanwhile it only starts builds that end
    before), or here now on fewer cores, if that still finishes first. A wait counts
    WAIT_DOUBT extra. Ties go to ``me``. A candidate not ready yet (``release`` in the
    future) only books its best node softly (see :class:`Capacity`), ties going to the first
    node by id, so every claim books it on the same node; no node waits for it.
    The first job the schedule starts here is the answer.
    """
    mine = capacity[me]
    reserved: tuple[float, str] | None = None     # (start, cpv) of the build this node awaits
    planned = 0
    for i, cand in enumerate(candidates):
        ready = cand.release <= now
        soft = True                               # every build keeps off soft bookings
        free = mine.free_at(now, soft) if me in cand.nodes and ready else 0
        wall = wall_time(cand.est, cand.want)
        if cand.want <= free and mine.fits(now, wall, cand.want, soft):
            more = max(cand.want, min(mine.share, free))
            if more > cand.want and mine.fits(now, wall_time(cand.est, more), more, soft):
                return Placement(i, more)
            return Placement(i, cand.want)
        if planned >= PLAN_DEPTH:
            continue
        planned += 1
        options: list[tuple[float, int, str, float, int]] = []  # (score, rank, node, start, c)
        if cand.want // 2 <= free < cand.want and free >= 1 \
                and mine.fits(now, wall_time(cand.est, free), free, soft):
            options.append((now + wall_time(cand.est, free), 0, me, now, free))
        begin = max(now, cand.release)
        # Ties: a ready job to this node (it can start here now); one not ready yet to the
        # first node by id, the same in every node's claim — with ties to the asking node,
        # equal idle nodes each held the waiting build on themselves, sent the ready ones to
        # one another and all waited until it became ready.
        order = sorted(cand.nodes, key=lambda n: (ready and n != me, n))
        for rank, node_id in enumerate(order, 1):
            cap = capacity.get(node_id)
            if cap is None:
                continue
            cores = min(cand.want, cap.cores)
            start = cap.earliest(cores, wall_time(cand.est, cores), begin, soft)
            if start < math.inf:
                score = start + wall_time(cand.est, cores) + WAIT_DOUBT * (start - begin)
                options.append((score, rank, node_id, start, cores))
        if not options:
            continue
        _, _, node_id, start, cores = min(options)
        finish = start + wall_time(cand.est, cores)
        if not ready:  # held softly, and only from a little after its predicted release
            grace = SOFT_GRACE * (finish - start)
            capacity[node_id].book(start + grace, finish, cores, soft=True)
            continue
        capacity[node_id].book(start, finish, cores)
        if node_id == me and start <= now:
            return Placement(i, cores)
        if node_id == me:
            reserved = reserved or (start, cand.cpv)
    if reserved is not None:
        return Placement(None, reason=f"keeping its cores free for {reserved[1]} "
                                      f"(expected to start at ts {reserved[0]:.0f})")
    return Placement(None, reason="every ready job it may build finishes sooner elsewhere")
