"""Lower bounds on any schedule's makespan — what "good" is measured against.

No schedule beats the longest dependency chain with every package on the biggest node, nor the
total work (each package at its cheapest core count) spread perfectly over every core: the
issue's bound (:func:`lower_bound`). :func:`gate_bound` combines the two and is often tighter:
nothing that depends on a package starts before that package can be built, and all of it then
shares the fleet's cores (on desktop-shaped workloads: ~600 packages wait for glibc).
:func:`big_node_bound` counts what the issue's bound counts once: two long builds, neither
behind the other, that both need the fleet's one largest node (chromium and rustc on desktop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swarmnode.state.scheduling import topo_order

from .model import DurationModel
from .workload import NodeSpec, Workload


@dataclass(frozen=True)
class LowerBound:
    critical_path_s: float      # longest chain, every package at the largest node's cores
    critical_path: tuple[str, ...]
    work_s: float               # Σ min core-seconds / total cores
    max_cores: int
    total_cores: int

    @property
    def value(self) -> float:
        return max(self.critical_path_s, self.work_s)


@dataclass(frozen=True)
class GateBound:
    """``gate_done_s + work_behind_core_s / total cores``: the package whose earliest possible
    end plus the work that depends on it, spread over every core, is the largest."""

    value_s: float
    gate: str                   # the package ("" when no package has dependents)
    gate_done_s: float          # its earliest end (its chain at the largest node's cores)
    work_behind_core_s: float   # Σ min core-seconds of everything depending on it


@dataclass(frozen=True)
class BigNodeBound:
    """Two builds that each end the cycle late unless they get the one largest node: either
    one runs there after the other, or one runs on at most ``small_cores``."""

    value_s: float
    builds: tuple[str, ...]     # the pair (empty when the fleet has no single largest node)
    small_cores: int            # max(second-largest node's cores, largest // 2)


def _earliest_finish(workload: Workload, model: DurationModel,
                     max_cores: int) -> tuple[list[str], dict[str, float], dict[str, str | None]]:
    """Deps-first order, each package's earliest end with unlimited machines of ``max_cores``,
    and the dependency that ends last before it."""
    deps = {p.name: p.deps for p in workload.packages}
    order, _ = topo_order(deps)
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for name in order:
        dep = max(deps[name], key=lambda d: (finish[d], d), default=None)
        finish[name] = (finish[dep] if dep else 0.0) + model.duration(name, max_cores)
        via[name] = dep
    return order, finish, via


def _behind(workload: Workload, order: list[str], index: dict[str, int]) -> dict[str, int]:
    """Every package's transitive dependents, as a bitset over ``order`` (``index``)."""
    behind: dict[str, int] = {}
    dependents = workload.dependents()
    for name in reversed(order):
        bits = 0
        for d in dependents[name]:
            bits |= behind[d] | (1 << index[d])
        behind[name] = bits
    return behind


def lower_bound(workload: Workload, model: DurationModel, fleet: list[NodeSpec]) -> LowerBound:
    max_cores = max(n.cores for n in fleet)
    total_cores = sum(n.cores for n in fleet)
    order, finish, via = _earliest_finish(workload, model, max_cores)
    end = max(order, key=lambda n: (finish[n], n))
    chain = [end]
    while (prev := via[chain[-1]]) is not None:
        chain.append(prev)
    work = sum(model.min_core_seconds(p.name, max_cores) for p in workload.packages)
    return LowerBound(critical_path_s=finish[end], critical_path=tuple(reversed(chain)),
                      work_s=work / total_cores, max_cores=max_cores, total_cores=total_cores)


def gate_bound(workload: Workload, model: DurationModel, fleet: list[NodeSpec]) -> GateBound:
    """max over packages X of (X's earliest end + Σ min core-seconds of X's transitive
    dependents / total cores) — valid because none of them can start before X ends."""
    max_cores = max(n.cores for n in fleet)
    total_cores = sum(n.cores for n in fleet)
    order, finish, _ = _earliest_finish(workload, model, max_cores)
    index = {name: i for i, name in enumerate(order)}
    work = [model.min_core_seconds(name, max_cores) for name in order]
    behind = _behind(workload, order, index)
    best = GateBound(0.0, "", 0.0, 0.0)
    total = math.fsum(work)
    for name in sorted(order, key=lambda n: (-finish[n], n)):
        if finish[name] + total / total_cores <= best.value_s:
            break  # nothing after this can beat it, even with every package behind it
        bits, behind_s = behind[name], 0.0
        while bits:
            low = bits & -bits
            behind_s += work[low.bit_length() - 1]
            bits ^= low
        value = finish[name] + behind_s / total_cores
        if behind_s > 0 and value > best.value_s:
            best = GateBound(value, name, finish[name], behind_s)
    return best


#: Longest builds (at the largest node's cores) whose pairs big_node_bound looks at.
BIG_NODE_CANDIDATES = 12


def big_node_bound(workload: Workload, model: DurationModel,
                   fleet: list[NodeSpec]) -> BigNodeBound:
    """max over pairs X, Y of long builds, neither depending on the other, of the earliest
    any schedule can end given where they run.

    Each build runs on one node with fixed cores. If both get more than ``small`` =
    max(second-largest node, largest // 2) cores, both are on the largest node (no other has
    that many) and cannot overlap (together more than it has): one starts after the other
    ends. Otherwise one of them has at most ``small`` cores. So the cycle ends no sooner than
    the least of: X then Y on the largest node, Y then X, X on ``small`` cores, Y on ``small``
    cores — each with both builds' earliest starts (their chains at the largest node's cores)
    and the chains behind them, and each also no sooner than the other build's own chain.
    """
    sizes = sorted((n.cores for n in fleet), reverse=True)
    largest = sizes[0]
    if len(sizes) < 2 or sizes[1] == largest:
        return BigNodeBound(0.0, (), largest)
    small = max(sizes[1], largest // 2)
    dependents = workload.dependents()
    order, finish, _ = _earliest_finish(workload, model, largest)
    d = {n: model.duration(n, largest) for n in order}
    start = {n: finish[n] - d[n] for n in order}
    tail: dict[str, float] = {}
    for n in reversed(order):
        tail[n] = max((d[x] + tail[x] for x in dependents[n]), default=0.0)
    top = sorted(order, key=lambda n: (-d[n], n))[:BIG_NODE_CANDIDATES]
    index = {name: i for i, name in enumerate(order)}
    behind = _behind(workload, order, index)
    best = BigNodeBound(0.0, (), small)
    for i, x in enumerate(top):
        for y in top[i + 1:]:
            if behind[x] >> index[y] & 1 or behind[y] >> index[x] & 1:
                continue  # a chain: the critical path already counts both
            own_x, own_y = start[x] + d[x] + tail[x], start[y] + d[y] + tail[y]
            value = min(
                max(own_x, max(start[y], start[x] + d[x]) + d[y] + tail[y]),   # x, then y
                max(own_y, max(start[x], start[y] + d[y]) + d[x] + tail[x]),   # y, then x
                max(own_y, start[x] + model.duration(x, small) + tail[x]),     # x small
                max(own_x, start[y] + model.duration(y, small) + tail[y]))     # y small
            if value > best.value_s:
                best = BigNodeBound(value, (x, y), small)
    return best
