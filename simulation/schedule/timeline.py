"""What a run did: one record per build, and the per-node figures derived from them."""

from __future__ import annotations

from dataclasses import dataclass

from .workload import NodeSpec


@dataclass(frozen=True)
class Build:
    name: str
    node_id: str
    cores: int
    start: float
    end: float


@dataclass(frozen=True)
class NodeFigures:
    node_id: str
    cores: int
    sweeper: bool
    dispatches: int
    busy_core_s: float
    utilisation: float   # busy core-seconds / (cores × makespan)


def makespan(builds: list[Build]) -> float:
    return max((b.end for b in builds), default=0.0)


def node_figures(fleet: list[NodeSpec], builds: list[Build]) -> list[NodeFigures]:
    span = makespan(builds)
    out = []
    for n in fleet:
        mine = [b for b in builds if b.node_id == n.node_id]
        busy = sum(b.cores * (b.end - b.start) for b in mine)
        out.append(NodeFigures(node_id=n.node_id, cores=n.cores, sweeper=n.sweeper,
                               dispatches=len(mine), busy_core_s=busy,
                               utilisation=busy / (n.cores * span) if span > 0 else 0.0))
    return out
