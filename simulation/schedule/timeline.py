"""What a run did: one record per build, and the per-node figures derived from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class ChainLink:
    """One build of the chain that ended the run, and how long it waited to start."""

    name: str
    node_id: str
    cores: int
    ready: float     # when its last dependency ended (0 without dependencies)
    start: float
    end: float

    @property
    def wait(self) -> float:
        return self.start - self.ready


def finishing_chain(builds: list[Build], deps: Mapping[str, Sequence[str]]) -> list[ChainLink]:
    """The chain of builds that ended the run, first to last: from the build that ended last,
    each step back to the dependency that ended last (the one it could not start without).

    Its waits are where the makespan was lost to scheduling rather than to build time: a
    critical build that was ready but not started (no free node, a slot limit, a lower rank).
    """
    if not builds:
        return []
    by_name = {b.name: b for b in builds}
    link: Build | None = max(builds, key=lambda b: (b.end, b.name))
    chain: list[ChainLink] = []
    while link is not None:
        done = [by_name[d] for d in deps.get(link.name, ()) if d in by_name]
        last = max(done, key=lambda b: (b.end, b.name), default=None)
        chain.append(ChainLink(link.name, link.node_id, link.cores,
                               last.end if last else 0.0, link.start, link.end))
        link = last
    return chain[::-1]
