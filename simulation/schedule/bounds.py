"""Lower bound on any schedule's makespan — what "good" is measured against.

No schedule beats the longest dependency chain with every package on the biggest node, nor the
total work (each package at its cheapest core count) spread perfectly over every core.
"""

from __future__ import annotations

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


def lower_bound(workload: Workload, model: DurationModel, fleet: list[NodeSpec]) -> LowerBound:
    max_cores = max(n.cores for n in fleet)
    total_cores = sum(n.cores for n in fleet)
    deps = {p.name: p.deps for p in workload.packages}
    order, _ = topo_order(deps)
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for name in order:  # deps first: earliest finish with unlimited machines of max_cores
        dep = max(deps[name], key=lambda d: (finish[d], d), default=None)
        finish[name] = (finish[dep] if dep else 0.0) + model.duration(name, max_cores)
        via[name] = dep
    end = max(order, key=lambda n: (finish[n], n))
    chain = [end]
    while (prev := via[chain[-1]]) is not None:
        chain.append(prev)
    work = sum(model.min_core_seconds(p.name, max_cores) for p in workload.packages)
    return LowerBound(critical_path_s=finish[end], critical_path=tuple(reversed(chain)),
                      work_s=work / total_cores, max_cores=max_cores, total_cores=total_cores)
