"""The nemesis: seeded faults during the first part of a run, then everything healed.

Kinds (``--faults``; ``all`` is every one):

* ``partitions`` — links broken and kept down: a random majority/minority split, the current
  leader isolated, or a *bridge* (two halves that only one node sees both of);
* ``crashes`` — kill -9 of a node (sometimes the leader), restarted from its disk later
  (a quarter of them stay down longer than ``voter_grace_s``: the voter is demoted and
  removed from Raft, and promoted again once it is back);
* ``pauses`` — SIGSTOP/SIGCONT: the node runs nothing for a while, then resumes;
* ``flaky`` — bursts of connection resets on random links;
* ``slow`` — a node ticks later and builds slower for a while;
* ``restart-all`` — every node killed at once, restarted one by one from disk;
* ``failures`` — some packages fail to build on some nodes (the breaker and ``fail_nodes``
  logic run); planned up front, not scheduled;
* ``joins`` — some nodes are not in the initial peer list: they join later through the
  discovery handshake (``admit_node``) and the leader adds them to Raft (dynamic membership).

At most two timed faults overlap; at the end of the fault window every fault is healed at once
(partitions lifted, crashed nodes restarted, paused ones resumed, slow ones back to speed), and
the liveness invariant starts its clock.

By default the timed faults are drawn as the run goes, from the live state. Given a
:mod:`simulation.faultplan` plan (``--plan``, ``--plan-file``) the nemesis instead starts each
planned fault at its virtual time, on node index *i* = the *i*-th node, the way the
multi-process tier does (a planned victim that is down or already under a node fault is
replaced by another running node, ``instead_of=`` in the history; a slow node's factor is
``1 + delay_ms / 100``). ``failures``, ``joins`` and the buggify crashes (just after a
membership change; just after a build, before anyone copied it) are not in a plan: they still
come from the seed.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from simulation.faultplan import LEADER, Fault

from .network import pair

if TYPE_CHECKING:
    from .node import SimNode
    from .simulation import Simulation

KINDS = ("partitions", "crashes", "pauses", "flaky", "failures", "slow", "restart-all", "joins")
TIMED = ("partitions", "crashes", "pauses", "flaky", "slow", "restart-all")


def parse_faults(text: str) -> frozenset[str]:
    """``partitions,crashes`` / ``all`` / ``none`` → the set of kinds (unknown names refused)."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names in ({"all"}, {"ALL"}):
        return frozenset(KINDS)
    if names <= {"none", ""}:
        return frozenset()
    unknown = sorted(names - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind {', '.join(unknown)}; choose from "
                         f"{', '.join(KINDS)} or all")
    return frozenset(names)


@dataclass
class Nemesis:
    """Injects and heals faults on one simulation (see module docstring)."""

    sim: Simulation
    kinds: frozenset[str]
    rng: random.Random
    window_s: float
    injected: list[str] = field(default_factory=list)
    active: int = 0
    healed_at: float | None = None
    plan: list[Fault] | None = None          # execute this instead of drawing as it goes
    plan_rng: random.Random | None = None    # a plan's choices made while it runs
    build_rng: random.Random | None = None   # the buggify crash after a build (after_build)
    _partitions: list[set[tuple[str, str]]] = field(default_factory=list)
    _down: set[str] = field(default_factory=set)

    def record(self, what: str, **fields: object) -> None:
        self.injected.append(what)
        self.sim.history.record(self.sim.loop.time(), "nemesis", what, **fields)

    async def run(self) -> None:
        if self.plan is not None:
            await self._run_plan(self.plan)
            return
        timed = sorted(k for k in self.kinds if k in TIMED)
        loop = self.sim.loop
        while timed:
            await asyncio.sleep(self.rng.uniform(1.0, 8.0))
            if loop.time() >= self.window_s:
                break
            if self.active >= 2:
                continue
            kind = self.rng.choice(timed)
            duration = min(self.rng.uniform(1.0, 15.0), max(0.5, self.window_s - loop.time()))
            self.active += 1
            self.sim.spawn(self._one(kind, duration))
        if loop.time() < self.window_s:
            await asyncio.sleep(self.window_s - loop.time())
        self.heal_all()

    async def _one(self, kind: str, duration: float) -> None:
        try:
            if kind == "partitions":
                await self._partition(duration)
            elif kind == "crashes":
                await self._crash(duration)
            elif kind == "pauses":
                await self._pause(duration)
            elif kind == "flaky":
                await self._flaky(duration)
            elif kind == "slow":
                await self._slow(duration)
            elif kind == "restart-all":
                await self._restart_all()
        finally:
            self.active -= 1

    # -- the faults ---------------------------------------------------------------------------
    def _alive(self) -> list[SimNode]:
        return [n for n in self.sim.nodes if n.alive]

    def _leader(self) -> SimNode | None:
        for node in self.sim.nodes:
            if node.alive and node.log is not None and node.log.is_leader:
                return node
        return None

    async def _partition(self, duration: float) -> None:
        nodes = [n for n in self.sim.nodes if n.alive or n.node_id in self._down]
        if len(nodes) < 2:
            return
        shape = self.rng.choice(("halves", "leader", "bridge"))
        order = list(nodes)
        self.rng.shuffle(order)
        leader = self._leader()
        bridge: SimNode | None
        if shape == "leader" and leader is not None:
            side_a, bridge = [leader], None
        elif shape == "bridge" and len(order) >= 3:
            bridge = order[0]
            rest = order[1:]
            cut = self.rng.randrange(1, len(rest))
            side_a = rest[:cut]
        else:
            shape, bridge = "halves", None
            side_a = order[: self.rng.randrange(1, len(order) // 2 + 1)]
        await self._cut(shape, side_a, bridge, nodes, duration)

    async def _cut(self, shape: str, side_a: list[SimNode], bridge: SimNode | None,
                   nodes: list[SimNode], duration: float, **why: object) -> None:
        """Cut every link between side A and the rest (but the bridge) for ``duration``."""
        a = {n.address for n in side_a}
        b = {n.address for n in nodes if n.address not in a and n is not bridge}
        cut_pairs = {pair(x, y) for x in a for y in b}
        self.record("partition", shape=shape, side=sorted(n.node_id for n in side_a),
                    bridge=bridge.node_id if bridge else "-", seconds=duration, **why)
        self._partitions.append(cut_pairs)
        self.sim.network.block(cut_pairs)
        await asyncio.sleep(duration)
        if cut_pairs in self._partitions:
            self._partitions.remove(cut_pairs)
            self.sim.network.unblock(cut_pairs)
            self.sim.network.block(set().union(*self._partitions) if self._partitions else set())
            self.sim.history.record(self.sim.loop.time(), "nemesis", "heal", shape=shape)

    async def _crash(self, duration: float) -> None:
        alive = self._alive()
        leader = self._leader()
        if not alive:
            return
        victim = leader if (leader is not None and self.rng.random() < 0.3) else \
            self.rng.choice(alive)
        if self.rng.random() < 0.25:  # long enough to lose its vote (voter_grace_s)
            grace = self.sim.config.voter_grace_s
            duration = min(grace + self.rng.uniform(2.0, 10.0),
                           max(duration, self.window_s - self.sim.loop.time()))
        await self._kill(victim, duration)

    async def _kill(self, victim: SimNode, duration: float, **why: object) -> None:
        """kill -9 now, restart from its disk after ``duration`` (unless healed first)."""
        self.record("crash", node=victim.node_id, seconds=duration, **why)
        victim.crash()
        self._down.add(victim.node_id)
        await asyncio.sleep(duration)
        if victim.node_id in self._down:
            self._down.discard(victim.node_id)
            victim.boot()

    def after_membership_change(self, node: SimNode) -> None:
        """Buggify: sometimes kill a node just after its voter set changed — before it has
        written ``membership.json`` — so its restart has only the Raft journal to say who
        votes (what RaftFixes fix 5 replays)."""
        if not self._buggify(node, self.rng, 0.3):
            return
        self.active += 1
        self.sim.spawn(self._crash_soon(node, self.rng.uniform(0.0, 0.3),
                                        self.rng.uniform(1.0, 5.0)))

    def after_build(self, node: SimNode) -> None:
        """Buggify: sometimes kill a node just after its build was accepted — before anyone
        copied the artifact — and keep it down past ``down_after_s``, so the swarm must build
        the job again instead of waiting for the dead node's copy (SwarmState._rebuild_lost).
        Its own generator: these draws do not shift the other faults'."""
        rng = self.build_rng
        if rng is None or not self._buggify(node, rng, 0.05):
            return
        self.active += 1
        down_for = self.sim.config.down_after_s + rng.uniform(2.0, 12.0)
        self.sim.spawn(self._crash_soon(node, rng.uniform(0.0, 0.05), down_for,
                                        after="build"))

    def _buggify(self, node: SimNode, rng: random.Random, chance: float) -> bool:
        """Kill ``node`` now (with ``chance``)? Only with crashes on, during the fault window,
        a running node, and fewer than two faults active; draws only then."""
        return "crashes" in self.kinds and node.alive and node.node_id not in self._down \
            and self.active < 2 and self.sim.loop.time() < self.window_s \
            and rng.random() < chance

    async def _crash_soon(self, victim: SimNode, delay: float, duration: float,
                          after: str = "membership change") -> None:
        try:
            await asyncio.sleep(delay)
            if victim.alive and victim.node_id not in self._down:
                await self._kill(victim, duration, after=after)
        finally:
            self.active -= 1

    async def _pause(self, duration: float) -> None:
        alive = [n for n in self._alive() if not n.paused]
        if not alive:
            return
        victim = self.rng.choice(alive)
        await self._hold_paused(victim, duration)

    async def _hold_paused(self, victim: SimNode, duration: float, **why: object) -> None:
        self.record("pause", node=victim.node_id, seconds=duration, **why)
        victim.pause()
        await asyncio.sleep(duration)
        victim.resume()

    async def _flaky(self, duration: float, rng: random.Random | None = None,
                     **why: object) -> None:
        rng = self.rng if rng is None else rng
        self.record("flaky", seconds=duration, **why)
        end = self.sim.loop.time() + duration
        while self.sim.loop.time() < end and self.healed_at is None:
            broken = self.sim.network.break_random()
            if broken is not None:
                self.sim.history.record(self.sim.loop.time(), "nemesis", "reset",
                                        link=f"{broken[0]}-{broken[1]}")
            await asyncio.sleep(rng.uniform(0.2, 2.0))

    async def _slow(self, duration: float) -> None:
        alive = self._alive()
        if not alive:
            return
        victim = self.rng.choice(alive)
        factor = round(self.rng.uniform(2.0, 5.0), 2)
        await self._hold_slow(victim, factor, duration)

    async def _hold_slow(self, victim: SimNode, factor: float, duration: float,
                         **why: object) -> None:
        self.record("slow", node=victim.node_id, factor=factor, seconds=duration, **why)
        victim.slow = factor
        await asyncio.sleep(duration)
        victim.slow = 1.0

    async def _restart_all(self, rng: random.Random | None = None, **why: object) -> None:
        rng = self.rng if rng is None else rng
        self.record("restart-all", **why)
        victims = self._alive()
        for node in victims:
            node.crash()
            self._down.add(node.node_id)
        for node in victims:
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            if node.node_id in self._down:
                self._down.discard(node.node_id)
                node.boot()

    # -- a plan (simulation/faultplan.py) ---------------------------------------------------------
    async def _run_plan(self, faults: list[Fault]) -> None:
        """Start each planned fault at its virtual time; heal everything at the window's end."""
        loop = self.sim.loop
        for k, fault in sorted(enumerate(faults), key=lambda kf: (kf[1].at, kf[0])):
            if fault.at >= self.window_s:
                break
            if fault.at > loop.time():
                await asyncio.sleep(fault.at - loop.time())
            self.active += 1
            self.sim.spawn(self._planned(k, fault))
        if loop.time() < self.window_s:
            await asyncio.sleep(self.window_s - loop.time())
        self.heal_all()

    def _planned_victim(self, fault: Fault) -> tuple[SimNode | None, dict[str, object]]:
        """The planned node (or the leader now) if it runs free of node faults; else another
        that does, as the real tier picks (``instead_of`` says whom it replaced)."""
        assert self.plan_rng is not None
        free = [n for n in self._alive() if not n.paused and n.slow == 1.0
                and n.node_id not in self._down]
        want = self._leader() if fault.shape == LEADER else self.sim.nodes[fault.nodes[0]]
        if want is not None and want in free:
            return want, {"target": LEADER} if fault.shape == LEADER else {}
        instead: dict[str, object] = {"instead_of": want.node_id if want is not None
                                      else LEADER}
        return (self.plan_rng.choice(free) if free else None), instead

    async def _planned(self, k: int, fault: Fault) -> None:
        assert self.plan_rng is not None
        try:
            if fault.kind == "partitions":
                nodes = list(self.sim.nodes)
                leader = self._leader()
                bridge: SimNode | None = None
                why: dict[str, object] = {"plan": k}
                shape = fault.shape
                if shape == LEADER and leader is not None:
                    side = [leader]
                elif shape == LEADER:  # nobody leads now: someone alone, as the real tier does
                    shape, side = "halves", [self.plan_rng.choice(nodes)]
                    why["instead_of"] = LEADER
                elif shape == "bridge":
                    bridge = nodes[fault.nodes[-1]]
                    side = [nodes[i] for i in fault.nodes[:-1]]
                else:
                    side = [nodes[i] for i in fault.nodes]
                await self._cut(shape, side, bridge, nodes, fault.seconds, **why)
            elif fault.kind == "flaky":
                await self._flaky(fault.seconds, self.plan_rng, plan=k)
            elif fault.kind == "restart-all":
                await self._restart_all(self.plan_rng, plan=k)
            else:
                victim, why = self._planned_victim(fault)
                if victim is None:
                    self.sim.history.record(self.sim.loop.time(), "nemesis", "skipped",
                                            plan=k, what=fault.kind, why="no free node")
                elif fault.kind == "crashes":
                    await self._kill(victim, fault.seconds, plan=k, **why)
                elif fault.kind == "pauses":
                    await self._hold_paused(victim, fault.seconds, plan=k, **why)
                elif fault.kind == "slow":
                    await self._hold_slow(victim, round(1.0 + fault.delay_ms / 100.0, 2),
                                          fault.seconds, plan=k, **why)
        finally:
            self.active -= 1

    def heal_all(self) -> None:
        """The fault window is over: lift partitions, restart, resume, restore speed."""
        self.healed_at = self.sim.loop.time()
        self.sim.history.record(self.healed_at, "nemesis", "heal-all")
        self._partitions = []
        self.sim.network.unblock()
        for node in self.sim.nodes:
            if node.node_id in self._down and not node.alive:
                node.boot()
            node.resume()
            node.slow = 1.0
        self._down.clear()
