"""The real scheduler on virtual time: SwarmState + the worker's claim decision, no Raft.

Each simulated node is the daemon's worker loop reduced to its decisions: whenever the state
changes (a build finished, so jobs became ready), every node with a free slot runs
``decisions.claim_command`` and, while it proposes a claim and the claim returns a job, starts
that build with the cores its lease allocated. A build on ``c`` cores ends after
``model.duration(name, c)``; long builds heartbeat their lease every ``lease_ttl_s / 2`` like
the daemon's worker does, then report ``complete``. Commands are applied straight to the state
machine (commit latency is milliseconds, builds are minutes) and stamped like
``swarmnode/node/commands.py`` does: a random (here seeded) uuid4 hex ``rid`` and ``ts`` from
the virtual clock.

The swarm has built these packages before: ``warmup_cycles`` full cycles of the same workload
run first, and the measured cycle starts with the durations the state machine learned from
their ``complete`` commands (``SwarmState.durations``, one-core seconds per cat/pn) — exactly
what a real swarm carries from one cycle to the next. Only the measured cycle's builds are
reported. A claim may return no job although jobs are ready (the scheduler keeps a node's
cores for a better-placed build); those are counted as ``refused_claims`` — in the daemon each
is a commit that changes nothing.

Randomness (all from ``seed``): request ids, the order in which nodes react to the same event
(in a real swarm: whose claim commits first) and, if ``noise`` > 0, how much each build's
real duration differs from the model (log-normal, sigma = ``noise``), so estimates learned in
an earlier cycle are not exact.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import uuid
from dataclasses import dataclass
from typing import Any

from swarmnode.node.decisions import WorkerView, claim_command
from swarmnode.state import SwarmState
from swarmnode.state.scheduling import one_core_seconds, package_key

from .model import MEASURED_CORES, DurationModel
from .timeline import Build
from .workload import UNKNOWN_SIZE_KIB, NodeSpec, Workload

PROFILE = "desktop"
#: ``SwarmSettings.max_jobs`` meaning one build slot per core, and one per two cores.
ALL_CORES = -1
HALF_CORES = -2


@dataclass(frozen=True)
class SwarmSettings:
    """How the simulated daemons are configured (the model and fleet come separately)."""

    lease_ttl_s: float = 600.0   # with heartbeats every ttl/2; only keeps leases alive here
    warmup_cycles: int = 1
    noise: float = 0.0
    max_jobs: int = 0            # builds per node at once: 0 = the daemon's max(1, cores // 4),
    #                              ALL_CORES / HALF_CORES = one per core / two cores, else N
    history: bool = False        # before the measured cycle, teach the swarm the workload's
    #                              durations as `swarmnode history` would from an emerge log

    def jobs_for(self, cores: int) -> int:
        if self.max_jobs == ALL_CORES:
            return cores
        if self.max_jobs == HALF_CORES:
            return max(1, cores // 2)
        return self.max_jobs or max(1, cores // 4)

    def describe_max_jobs(self) -> str | int:
        if self.max_jobs == ALL_CORES:
            return "cores"
        if self.max_jobs == HALF_CORES:
            return "max(1, cores // 2)"
        return self.max_jobs or "max(1, cores // 4)"


@dataclass
class _Running:
    name: str
    cpv: str
    node_id: str
    cores: int
    fence: int
    start: float
    end: float


@dataclass
class SwarmRun:
    builds: list[Build]           # the measured cycle, times relative to its start
    commands: int                 # commands applied over all cycles
    refused_claims: int           # claims proposed (claim_command said so) that got no job
    learned_estimates: int        # packages the state machine had an estimate for
    digest: str                   # state digest at the end: same inputs → same state


class _Sim:
    """One simulated swarm: the state machine, the virtual clock, the running builds."""

    def __init__(self, workload: Workload, model: DurationModel, fleet: list[NodeSpec],
                 seed: int, settings: SwarmSettings) -> None:
        self.workload, self.model, self.fleet = workload, model, fleet
        self.settings = settings
        self.rng = random.Random(seed)
        self.noise_seed = seed
        self.state = SwarmState()
        self.now = 0.0
        self.commands = 0
        self.refused = 0               # claims proposed that returned no job
        self.names = {p.cpv: p.name for p in workload.packages}
        self.pkgs = workload.by_name()
        self.running: dict[str, dict[int, _Running]] = {n.node_id: {} for n in fleet}

    # -- commands, stamped like swarmnode.node.commands.command ---------------------------
    def apply(self, op: str, **fields: Any) -> dict[str, Any]:
        rid = uuid.UUID(int=self.rng.getrandbits(128), version=4).hex
        self.commands += 1
        result = self.state.apply({"op": op, "rid": rid, "ts": self.now, **fields})
        if not result.get("ok"):
            raise RuntimeError(f"{op} refused by the state machine: {result.get('error')}")
        return result

    def register(self) -> None:
        for n in self.fleet:
            self.apply("register_node", node_id=n.node_id, url=f"http://{n.node_id}:7000",
                       cores=n.cores, profiles=[PROFILE], sweeper=n.sweeper,
                       tree_versions={}, slots=self.settings.jobs_for(n.cores))

    def learn_history(self) -> None:
        """What ``swarmnode history`` sends for an emerge log of these builds: each
        package's measured duration, built with MEASURED_CORES make jobs, as one-core
        seconds through the scheduler's own prior. Packages already learned keep theirs."""
        self.apply("learn_history", source="workload durations", durations={
            package_key(p.cpv): one_core_seconds(p.duration_s, MEASURED_CORES)
            for p in self.workload.packages})

    def _factor(self, cycle: int, name: str) -> float:
        """This build's deviation from the model: deterministic per (seed, cycle, package)."""
        if self.settings.noise <= 0:
            return 1.0
        digest = hashlib.sha256(f"{self.noise_seed}:{cycle}:{name}".encode()).digest()
        gauss = random.Random(digest).gauss(0.0, self.settings.noise)
        return math.exp(gauss)

    # -- one cycle -------------------------------------------------------------------------
    def run_cycle(self, cycle: int) -> list[Build]:
        cycle_id = f"cycle-{cycle}"
        jobs = [{"cpv": p.cpv, "deps": [self.pkgs[d].cpv for d in p.deps],
                 "slot": "0", "repo": "gentoo"} for p in self.workload.packages]
        self.apply("start_cycle", cycle_id=cycle_id, profile=PROFILE, tree_version="",
                   targets=[], jobs=jobs, reused=[])
        start = self.now
        events: list[tuple[float, int, str, str, int]] = []  # (time, seq, kind, node, fence)
        seq = 0
        builds: list[Build] = []
        hb = self.settings.lease_ttl_s / 2
        order = [n.node_id for n in self.fleet]
        cores = {n.node_id: n.cores for n in self.fleet}
        while True:
            self.rng.shuffle(order)
            for node_id in order:  # every node sees the new state and may claim
                while True:
                    mine = self.running[node_id]
                    view = WorkerView(node_id=node_id, cores=cores[node_id],
                                      max_jobs=self.settings.jobs_for(cores[node_id]),
                                      running_cores=tuple(r.cores for r in mine.values()))
                    cmd = claim_command(self.state, view, self.settings.lease_ttl_s,
                                        ts=self.now)
                    if cmd is None:
                        break
                    res = self.apply(cmd[0], **cmd[1])
                    if not res.get("job"):
                        self.refused += 1
                        break
                    lease = res["lease"]
                    name = self.names[res["job"]["cpv"]]
                    took = self.model.duration(name, lease["cores"]) * self._factor(cycle, name)
                    run = _Running(name=name, cpv=res["job"]["cpv"], node_id=node_id,
                                   cores=lease["cores"], fence=lease["fence"], start=self.now,
                                   end=self.now + took)
                    mine[run.fence] = run
                    heapq.heappush(events, (run.end, seq, "done", node_id, run.fence))
                    seq += 1
                    if self.now + hb < run.end:
                        heapq.heappush(events, (self.now + hb, seq, "heartbeat", node_id,
                                                run.fence))
                        seq += 1
            if not events:
                break
            self.now = events[0][0]
            while events and events[0][0] == self.now:
                _, _, kind, node_id, fence = heapq.heappop(events)
                run = self.running[node_id][fence]
                if kind == "heartbeat":
                    self.apply("heartbeat", node_id=node_id, fence=fence,
                               lease_ttl_s=self.settings.lease_ttl_s)
                    if self.now + hb < run.end:
                        heapq.heappush(events, (self.now + hb, seq, "heartbeat", node_id, fence))
                        seq += 1
                    continue
                del self.running[node_id][fence]
                sha = hashlib.sha256(f"{cycle_id}:{run.cpv}".encode()).hexdigest()
                pkg_kib = self.pkgs[run.name].installed_kib
                pkg_kib = UNKNOWN_SIZE_KIB if pkg_kib is None else pkg_kib
                self.apply("complete", node_id=node_id, fence=fence, cycle_id=cycle_id,
                           cpv=run.cpv, success=True, duration_s=run.end - run.start,
                           log_sha256=hashlib.sha256(sha.encode()).hexdigest(),
                           artifact={"sha256": sha, "size": int(pkg_kib * 1024)}, error="")
                builds.append(Build(run.name, node_id, run.cores, run.start - start,
                                    run.end - start))
        cyc = self.state.cycle(cycle_id)
        if cyc is None or cyc.built != len(self.workload.packages):
            raise RuntimeError(f"cycle {cycle_id} ended with {cyc.counts if cyc else None}")
        return builds


def simulate_swarm(workload: Workload, model: DurationModel, fleet: list[NodeSpec],
                   seed: int, settings: SwarmSettings | None = None) -> SwarmRun:
    settings = settings or SwarmSettings()
    sim = _Sim(workload, model, fleet, seed, settings)
    sim.register()
    for cycle in range(settings.warmup_cycles):
        sim.run_cycle(cycle)
    if settings.history:
        sim.learn_history()
    learned = sum(1 for p in workload.packages if package_key(p.cpv) in sim.state.durations)
    builds = sim.run_cycle(settings.warmup_cycles)
    return SwarmRun(builds=builds, commands=sim.commands, refused_claims=sim.refused,
                    learned_estimates=learned,
                    digest=sim.state.digest())
