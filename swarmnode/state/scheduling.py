"""Scheduling policy: duration estimates, critical-path priority, core allocation.

Pure functions of their arguments (no clock, no I/O) so every replica and the simulator rank
jobs identically. Durations are in *core-seconds* (wall seconds × cores used): that is what a
package costs whatever share of a machine it gets, so it transfers between nodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

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
    """Learned core-seconds for the package of ``cpv``, or the default for unknown packages."""
    return durations.get(package_key(cpv), DEFAULT_CORE_SECONDS)


def learn(previous: float | None, sample: float) -> float:
    """Fold one observed build (core-seconds) into the estimate (EWMA; the first sample wins)."""
    if previous is None:
        return sample
    return EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * previous


def allocate_cores(est_core_seconds: float, free_cores: int) -> int:
    """``clamp(ceil(est / 120), 1, free_cores)``: parallelism where it shortens the critical path."""
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
