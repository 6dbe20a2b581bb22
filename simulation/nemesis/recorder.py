"""The recorded history: every node's ``/api/v1/status`` polled every ~150 ms, operator
commands and their answers, the nemesis's faults.

Polled samples feed two invariants as they arrive (who said it led which term; which digest
each replica had at each applied index); the readable history keeps only the changes (role,
term, leader, reachable or not, what it builds), so a violation's tail says what the cluster went through.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from simulation.sim.history import History

from .client import Operator


@dataclass(frozen=True)
class Sample:
    """One node's answer to a status poll (what the checks and the liveness wait use)."""

    t: float
    node: str
    role: str
    term: int
    leader: str | None
    applied: int
    commit: int
    digest: str
    building: tuple[str, ...] = ()

    @classmethod
    def of(cls, t: float, node: str, status: dict[str, Any]) -> Sample:
        c, s = status["cluster"], status["state"]
        running = status.get("node", {}).get("building", [])
        building = tuple(sorted(str(b["cpv"]) for b in running))
        return cls(t, node, str(c.get("role", "?")), int(c.get("term", 0)), c.get("leader"),
                   int(s["applied_index"]), int(c.get("commit_index", 0)), str(s["digest"]),
                   building)


@dataclass
class Recorder:
    """Polls the nodes while the run lasts; the facts the final checks read."""

    operator: Operator
    nodes: list[str]
    history: History
    t0: float
    poll_s: float = 0.15
    samples: int = 0
    latest: dict[str, Sample] = field(default_factory=dict)
    leaders: dict[int, set[str]] = field(default_factory=dict)
    replicas: set[tuple[str, int, str]] = field(default_factory=set)
    _shown: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _building: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def record(self, node: str, kind: str, /, **fields: Any) -> None:
        self.history.record(self.now(), node, kind, **fields)

    def observe(self, node: str, status: dict[str, Any] | None) -> Sample | None:
        """Take one poll's answer (None: no answer) into the facts and the history."""
        if status is None:
            if self._shown.get(node, ("?",))[0] != "silent":
                self._shown[node] = ("silent",)
                self.record(node, "silent")
            return None
        try:
            sample = Sample.of(self.now(), node, status)
        except (KeyError, TypeError, ValueError) as exc:  # the API changed: say so, go on
            self.record(node, "unreadable-status", error=f"{type(exc).__name__}: {exc}")
            return None
        self.samples += 1
        self.latest[node] = sample
        self.replicas.add((node, sample.applied, sample.digest))
        if sample.role == "leader":
            self.leaders.setdefault(sample.term, set()).add(node)
        shown = (sample.role, sample.term, sample.leader)
        if self._shown.get(node) != shown:
            self._shown[node] = shown
            self.record(node, "status", role=sample.role, term=sample.term,
                        leader=sample.leader or "-", applied=sample.applied)
        if self._building.get(node, ()) != sample.building:
            self._building[node] = sample.building
            self.record(node, "building", cpvs=list(sample.building))
        return sample

    async def poll(self, node: str) -> Sample | None:
        return self.observe(node, await self.operator.status(node, timeout=1.0))

    async def poll_all(self) -> dict[str, Sample | None]:
        """One round, every node at once (a fresh view for a decision)."""
        got = await asyncio.gather(*(self.poll(n) for n in self.nodes))
        return dict(zip(self.nodes, got))

    async def _loop(self, node: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.poll(node)
            await asyncio.sleep(max(0.0, self.poll_s - (loop.time() - started)))

    async def run(self) -> None:
        """Poll every node on its own (a paused node delays only its own samples)."""
        await asyncio.gather(*(self._loop(n) for n in self.nodes))

    def current_leader(self) -> str | None:
        """The node whose latest sample says it leads the highest term."""
        leaders = [s for s in self.latest.values() if s.role == "leader"]
        return max(leaders, key=lambda s: (s.term, s.t)).node if leaders else None
