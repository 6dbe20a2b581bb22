"""Carries out a fault plan on the real cluster: link faults through the proxy, signals to
the node processes, restarts; at the end of the window every fault is healed at once.

Link faults are layers (one per active partition, reset burst or slow node); a link's
effective fault is the strongest layer over it (blackhole, then reset, then the longest
delay), so overlapping faults end independently without undoing each other.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from itertools import count

from simulation.faultplan import LEADER, Fault

from .nodes import NodeProcess
from .proxy import BLACKHOLE, CUT, DELAY, HEALTHY, RESET, RST, LinkFault, Proxy, delay
from .recorder import Recorder

LinkSet = frozenset[tuple[str, str]]
_RANK = {BLACKHOLE: 3, RESET: 2, DELAY: 1}


def strongest(faults: list[LinkFault]) -> LinkFault:
    """The fault a link shows when several layers cover it."""
    if not faults:
        return HEALTHY
    return max(faults, key=lambda f: (_RANK.get(f.mode, 0), f.delay_ms))


def between(a: set[str], b: set[str]) -> LinkSet:
    """Every link from a side to the other, both directions."""
    return frozenset({(x, y) for x in a for y in b} | {(y, x) for x in a for y in b})


@dataclass
class Injector:
    """The nemesis of one run (see the module docstring)."""

    proxy: Proxy
    nodes: list[NodeProcess]
    recorder: Recorder
    rng: random.Random
    healed_at: float | None = None
    injected: list[str] = field(default_factory=list)
    _layers: dict[int, tuple[LinkSet, LinkFault]] = field(default_factory=dict)
    _ids: count[int] = field(default_factory=count)
    _busy: set[str] = field(default_factory=set)   # node faults in progress
    _down: set[str] = field(default_factory=set)   # killed by us, not yet restarted
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def names(self) -> list[str]:
        return [n.node_id for n in self.nodes]

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.node_id == name)

    def record(self, what: str, /, **fields: object) -> None:
        self.injected.append(what)
        self.recorder.record("nemesis", what, **fields)

    # -- link layers ----------------------------------------------------------------------------
    def _apply(self) -> None:
        for src in self.names:
            for dst in self.names:
                if src == dst:
                    continue
                want = strongest([f for links, f in self._layers.values() if (src, dst) in links])
                if self.proxy.fault(src, dst) != want:
                    self.proxy.set(src, dst, want)

    def _add_layer(self, links: LinkSet, fault: LinkFault) -> int:
        key = next(self._ids)
        self._layers[key] = (links, fault)
        self._apply()
        return key

    def _drop_layer(self, key: int) -> None:
        if self._layers.pop(key, None) is not None:
            self._apply()

    # -- the faults -----------------------------------------------------------------------------
    def _victim(self, fault: Fault) -> str | None:
        """The planned node, or the leader now; someone free if that one is busy."""
        free = [n for n in self.names if n not in self._busy]
        want = self.recorder.current_leader() if fault.shape == LEADER else \
            self.names[fault.nodes[0]]
        if want in free:
            return want
        return self.rng.choice(free) if free else None

    async def _partition(self, fault: Fault) -> None:
        everyone = set(self.names)
        shape = fault.shape
        bridge: str | None = None
        leader = self.recorder.current_leader()
        if shape == LEADER and leader is not None:
            side = {leader}
        elif shape == "bridge":
            bridge = self.names[fault.nodes[-1]]
            side = {self.names[i] for i in fault.nodes[:-1]}
        else:
            shape = "halves"
            side = {self.names[i] for i in fault.nodes} or {self.rng.choice(self.names)}
        other = everyone - side - ({bridge} if bridge else set())
        self.record("partition", shape=shape, side=sorted(side), other=sorted(other),
                    bridge=bridge or "-", seconds=fault.seconds)
        key = self._add_layer(between(side, other), CUT)
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            self._drop_layer(key)
            self.record("heal", what=f"partition {shape}")

    async def _flaky(self, fault: Fault) -> None:
        self.record("flaky", seconds=fault.seconds)
        loop = asyncio.get_running_loop()
        end = loop.time() + fault.seconds
        while loop.time() < end:
            a, b = self.rng.sample(self.names, 2)
            self.record("reset", link=f"{a}<->{b}")
            key = self._add_layer(between({a}, {b}), RST)
            try:
                await asyncio.sleep(self.rng.uniform(0.2, 0.8))
            finally:
                self._drop_layer(key)
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))

    async def _slow(self, fault: Fault) -> None:
        victim = self._victim(fault)
        if victim is None:
            return
        self._busy.add(victim)
        self.record("slow", who=victim, delay_ms=fault.delay_ms, seconds=fault.seconds)
        key = self._add_layer(between({victim}, set(self.names) - {victim}),
                              delay(fault.delay_ms))
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            self._drop_layer(key)
            self._busy.discard(victim)
            self.record("heal", what=f"slow {victim}")

    async def _kill(self, name: str) -> None:
        self._down.add(name)
        await asyncio.shield(self.node(name).kill9())

    async def _restart(self, name: str) -> None:
        if name in self._down:
            self._down.discard(name)
            self.node(name).start()
            self.record("restart", who=name)

    async def _crash(self, fault: Fault) -> None:
        victim = self._victim(fault)
        if victim is None:
            return
        self._busy.add(victim)
        try:
            self.record("kill-9", who=victim, leader=victim == self.recorder.current_leader(),
                        seconds=fault.seconds)
            await self._kill(victim)
            await asyncio.sleep(fault.seconds)
            await self._restart(victim)
        finally:
            self._busy.discard(victim)

    async def _pause(self, fault: Fault) -> None:
        victim = self._victim(fault)
        if victim is None:
            return
        self._busy.add(victim)
        node = self.node(victim)
        try:
            self.record("sigstop", who=victim, leader=victim == self.recorder.current_leader(),
                        seconds=fault.seconds)
            node.pause()
            await asyncio.sleep(fault.seconds)
        finally:
            if node.paused:
                node.resume()
                self.record("sigcont", who=victim)
            self._busy.discard(victim)

    async def _restart_all(self, fault: Fault) -> None:
        victims = [n for n in self.names if n not in self._busy]
        self._busy.update(victims)
        try:
            self.record("restart-all", nodes=victims)
            await asyncio.gather(*(self._kill(n) for n in victims))
            for name in victims:
                await asyncio.sleep(self.rng.uniform(0.2, 2.0))
                await self._restart(name)
        finally:
            self._busy.difference_update(victims)

    async def _one(self, fault: Fault) -> None:
        run = {"partitions": self._partition, "flaky": self._flaky, "slow": self._slow,
               "crashes": self._crash, "pauses": self._pause, "restart-all": self._restart_all}
        await run[fault.kind](fault)

    # -- the window -----------------------------------------------------------------------------
    async def run(self, plan: list[Fault], window_s: float) -> None:
        """Start each fault at its time, then at ``window_s`` cancel what still runs and heal."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for fault in sorted(plan, key=lambda f: f.at):
                await asyncio.sleep(max(0.0, start + fault.at - loop.time()))
                task = asyncio.create_task(self._one(fault))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(max(0.0, start + window_s - loop.time()))
        finally:
            await self.heal_all()

    async def heal_all(self) -> None:
        """Links back to pass, paused nodes continued, killed nodes restarted."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._layers.clear()
        self._apply()
        self.proxy.heal()
        for node in self.nodes:
            if node.paused:
                node.resume()
        for name in sorted(self._down):
            await self.node(name).kill9()  # reaped, if a cancelled kill left it unreaped
            await self._restart(name)
        self._busy.clear()
        self.healed_at = self.recorder.now()
        self.record("heal-all")
