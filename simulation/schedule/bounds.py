"""Lower bounds on any schedule's makespan — what "good" is measured against.

No schedule beats the longest dependency chain with every package on the biggest node, nor the
total work (each package at its cheapest core count) spread perfectly over every core: the
issue's bound (:func:`lower_bound`). :func:`gate_bound` combines the two and is often tighter:
nothing that depends on a package starts before that package can be built, and all of it then
shares the fleet's cores (on desktop-shaped workloads: ~600 packages wait for glibc).
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
    behind: dict[str, int] = {}          # transitive dependents as a bitset over ``order``
    dependents = workload.dependents()
    for name in reversed(order):
        bits = 0
        for d in dependents[name]:
            bits |= behind[d] | (1 << index[d])
        behind[name] = bits
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
