"""One deterministic run: a cluster of simulated nodes, an operator, a nemesis, the checks.

Everything random comes from the seed (:func:`clock.derive` gives each concern its own
generator); everything iterated is sorted; pysyncobj runs on the virtual clock. ``run(config)``
returns a :class:`RunResult` whose ``history_hash`` is the same for the same seed and options,
byte for byte (given a fixed PYTHONHASHSEED: pysyncobj iterates sets of nodes).

With ``planned`` or ``plan`` the timed faults follow a :mod:`simulation.faultplan` plan (the
one the multi-process nemesis runs) instead of being drawn as the run goes; without them
nothing about a run changes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmnode.consensus.raft import NoQuorum
from swarmnode.node import decisions, membership
from swarmnode.state.machine import DEFAULT_CONFIG
from swarmnode.state.records import BLOCKED, BUILT, FAILED

from simulation.faultplan import Fault, validate

from . import invariants
from .clock import EPOCH, VirtualLoop, derive, patched_pysyncobj
from .disk import SimDisk
from .faults import Nemesis
from .history import History, Violation
from .network import SimNetwork, pair
from .node import CONNECT_TIMEOUT_S, PROBE_TIMEOUT_S, NodeSpec, SimNode
from .raftnode import SimLog, syncobj_class
from .workload import PROFILE, Workload, load, resolve, synthetic

BANDWIDTH_BYTES_S = 100e6  # peer copies: ~1 Gbit/s LAN


@dataclass(frozen=True)
class SimConfig:
    """One run's options; the cluster policy defaults are the daemon's."""

    seed: int = 1
    nodes: int = 5
    workload: str = "synthetic"
    packages: int = 30            # size of the synthetic workload
    time_scale: float = 1.0       # build durations are multiplied by this
    cycles: int = 2
    faults: frozenset[str] = frozenset()
    no_fix: frozenset[int] = frozenset()
    cores: int = 8
    max_jobs: int = 2
    # cluster and build policy (swarmnode/config.py defaults)
    lease_ttl_s: float = 10.0
    heartbeat_s: float = 2.0
    poll_s: float = 1.0
    down_after_s: float = 3.0
    breaker_threshold: int = int(DEFAULT_CONFIG["breaker_threshold"])
    breaker_cooldown_s: float = 60.0
    fail_nodes: int = int(DEFAULT_CONFIG["fail_nodes"])
    keep_releases: int = int(DEFAULT_CONFIG["keep_releases"])
    replicas: int = int(DEFAULT_CONFIG["replicas"])
    max_voters: int = int(DEFAULT_CONFIG["max_voters"])
    # The daemon's default is an hour: in a short run a voter that stays down has to lose its
    # seat sooner for the membership changes (demote, remove, promote, add) to happen.
    voter_grace_s: float = 20.0
    # The daemon's default is ten minutes: here a build nothing waits for, whose holders all
    # stay down, is built again within a run (the buggify crash after a build keeps its node
    # down up to 15 s).
    lost_after_s: float = 8.0
    # Raft log compaction: far more often than the daemon's 5000 entries / 600 s, so that
    # snapshots (dump, transfer, install) happen within a short run.
    compaction_entries: int = 300
    compaction_time_s: float = 30.0
    # pysyncobj's appendEntriesBatchSizeBytes (its default, as the daemon uses). Smaller values
    # ("buggify") split every resend into several messages, as a big entry (a desktop-sized
    # start_cycle is ~120 KB) does with the real value.
    append_batch_bytes: int = 2 ** 16
    check_follower_acks: bool = True  # the followers-keep-acknowledged-entries invariant
    idle_tick_s: float = 0.25        # a node with nothing to do still ticks this often
    fault_window_s: float | None = None   # default: derived from the workload
    # A faultplan instead of faults drawn as the run goes: ``planned`` makes the seeded one
    # (faultplan.plan over the timed kinds and the fault window); ``plan`` is given (from
    # ``plan_file``, named in the replay command).
    planned: bool = False
    plan: tuple[Fault, ...] | None = None
    plan_file: str | None = None
    converge_s: float = 30.0              # after the faults stop: one leader, all caught up
    digest_every_s: float = 20.0     # replicas at one index compared (full state digest)
    max_virtual_s: float = 48 * 3600.0


@dataclass
class RunResult:
    seed: int
    config: SimConfig
    ok: bool
    violations: list[Violation]
    history_hash: str
    virtual_s: float
    wall_s: float
    summary: dict[str, Any]
    tail: list[str] = field(default_factory=list)

    def replay_command(self) -> str:
        c = self.config
        parts = [f"python -m simulation run --seed {c.seed} --nodes {c.nodes}",
                 f"--workload {c.workload}"]
        if c.workload == "synthetic":
            parts.append(f"--packages {c.packages}")
        if c.time_scale != 1.0:
            parts.append(f"--time-scale {c.time_scale:g}")
        if c.cycles != SimConfig.cycles:
            parts.append(f"--cycles {c.cycles}")
        parts.append(f"--faults {','.join(sorted(c.faults)) or 'none'}")
        if c.no_fix:
            parts.append(f"--no-fix {','.join(str(n) for n in sorted(c.no_fix))}")
        if c.fault_window_s is not None:
            parts.append(f"--fault-window {c.fault_window_s:g}")
        if c.append_batch_bytes != SimConfig.append_batch_bytes:
            parts.append(f"--append-batch-bytes {c.append_batch_bytes}")
        if c.plan_file is not None:
            parts.append(f"--plan-file {c.plan_file}")
        elif c.planned:
            parts.append("--plan")
        return " ".join(parts)


def load_workload(config: SimConfig) -> Workload:
    """The run's workload (seeded when synthetic: its own generator)."""
    if config.workload == "synthetic":
        return synthetic(derive(config.seed, "workload"), config.packages, config.time_scale)
    return load(resolve(config.workload), config.time_scale)


def makespan(config: SimConfig, workload: Workload) -> float:
    """The build time the cluster needs without faults (critical path or total / slots)."""
    slots = max(1, config.nodes * config.max_jobs)
    return max(workload.critical_path_s(), workload.total_s() / slots)


def fault_window(config: SimConfig, workload: Workload | None = None) -> float:
    """Virtual seconds with faults: ``fault_window_s``, else 60 % of the expected build
    time (40–600 s), else 0 when no timed fault is asked for."""
    if config.fault_window_s is not None:
        return config.fault_window_s
    if not (set(config.faults) - {"failures"}):
        return 0.0
    workload = load_workload(config) if workload is None else workload
    return min(600.0, max(40.0, 0.6 * makespan(config, workload)))


def fault_plan(config: SimConfig, window_s: float) -> list[Fault] | None:
    """The plan a run executes (None: faults drawn as it goes). A given plan is checked
    against the cluster and the window (ValueError)."""
    if config.plan is not None:
        return validate(config.plan, config.nodes, window_s)
    if config.planned:
        from simulation.faultplan import KINDS, plan
        return plan(config.seed, config.nodes, config.faults & set(KINDS), window_s)
    return None


class Done(Exception):
    """Ends the run early (a safety violation was found)."""


class Simulation:
    def __init__(self, config: SimConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.loop = VirtualLoop()
        self.history = History()
        self.checker = invariants.Checker()
        seed = config.seed
        self.rng = derive(seed, "sim")
        self.raft_rng = derive(seed, "raft")
        self.network = SimNetwork(self.loop, derive(seed, "network"), self.history.record,
                                  connection_timeout_s=2.0)
        self.workload = self._workload()
        self.syncobj_class = syncobj_class(config.no_fix)
        self.nodes: list[SimNode] = []
        self.joiners: list[SimNode] = []
        self._specs()
        self.failures = self._failure_plan()
        window = self._window()
        self.plan = fault_plan(config, window)
        self.nemesis = Nemesis(self, config.faults, derive(seed, "nemesis"), window,
                               plan=self.plan,
                               plan_rng=derive(seed, "plan") if self.plan is not None else None,
                               build_rng=derive(seed, "crash after build"))
        names = [n.node_id for n in self.nodes]
        for fault in self.plan or ():
            self.history.record(0.0, "plan", fault.kind, line=fault.describe(names))
        self.cycle_ids: list[str] = []
        self.releases: list[str] = []
        self.operator_done = False
        self.refused_claims = 0
        self.converged_at: float | None = None
        self._op_counter = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()

    # -- set-up -------------------------------------------------------------------------------
    def _workload(self) -> Workload:
        return load_workload(self.config)

    def _specs(self) -> None:
        """Up to ``max_voters`` nodes are configured with each other as static peers (they
        vote); the rest find the swarm by discovery and are admitted (as workers once the
        voter seats are taken). With the ``joins`` fault one or two of them join late."""
        c = self.config
        n_join = 0
        if "joins" in c.faults and c.nodes >= 4:
            n_join = 1 + derive(c.seed, "joins").randrange(min(2, c.nodes - 3))
        n_static = min(c.nodes - n_join, c.max_voters)
        skew = derive(c.seed, "clocks")
        ids = [f"n{i + 1}" for i in range(c.nodes)]
        static = tuple(sorted(f"{i}:4321" for i in ids[:n_static]))
        for i, node_id in enumerate(ids):
            spec = NodeSpec(node_id=node_id, address=f"{node_id}:4321", cores=c.cores,
                            max_jobs=c.max_jobs, static_peers=static if i < n_static else (),
                            clock_skew_s=round(skew.uniform(-0.05, 0.05), 6))
            disk_dir = self.workdir / node_id
            disk_dir.mkdir(parents=True, exist_ok=True)
            node = SimNode(self, spec, SimDisk(node_id, disk_dir))
            self.nodes.append(node)
            if i >= c.nodes - n_join:
                self.joiners.append(node)

    def _failure_plan(self) -> dict[str, set[str]]:
        """cpv → nodes it fails on (all nodes: a broken package)."""
        if "failures" not in self.config.faults:
            return {}
        rng = derive(self.config.seed, "failures")
        ids = [n.node_id for n in self.nodes]
        plan: dict[str, set[str]] = {}
        for cpv in sorted(self.workload.packages):
            roll = rng.random()
            if roll < 0.03:
                plan[cpv] = set(ids)
            elif roll < 0.12:
                plan[cpv] = set(rng.sample(ids, rng.randrange(1, len(ids))))
        return plan

    def expected_makespan(self) -> float:
        return makespan(self.config, self.workload)

    def _window(self) -> float:
        return fault_window(self.config, self.workload)

    # -- services the nodes use ----------------------------------------------------------------
    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(self._guard(coro))
        self._tasks.append(task)
        return task

    async def _guard(self, coro: Any) -> None:
        """The simulator's own tasks: an exception here is a bug of the harness — stop."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.checker.fail(invariants.NO_ERRORS, self.loop.time(),
                              f"simulator: {type(exc).__name__}: {exc}")
            self._stop.set()

    def fails(self, cpv: str, node_id: str) -> bool:
        return node_id in self.failures.get(cpv, ())

    def acknowledged(self, node_id: str, log: SimLog, cmd: dict[str, Any],
                     result: dict[str, Any]) -> None:
        rid = str(cmd["rid"])
        index, changed = log.applied_at.get(rid, (0, False))
        self.checker.acks.append(invariants.Ack(node_id, rid, str(cmd["op"]), index, changed))
        self.history.record(self.loop.time(), node_id, "ack", op=cmd["op"], rid=rid,
                            index=index, ok=bool(result.get("ok")))
        if self.checker.violations:
            self._stop.set()

    def http_ok(self, a: SimNode, b: SimNode) -> bool:
        """Can a's HTTP request reach b's API now (both running, not stopped, no partition)?"""
        return (a.alive and b.alive and not a.paused and not b.paused
                and pair(a.address, b.address) not in self.network.blocked)

    def alive(self, node_id: str) -> SimNode | None:
        for node in self.nodes:
            if node.node_id == node_id and node.alive:
                return node
        return None

    async def admit(self, joiner: SimNode) -> dict[str, Any] | None:
        """The discovery handshake: a member that we reach commits ``admit_node`` for us."""
        members = [n for n in self.nodes if n is not joiner and n.log is not None
                   and self.http_ok(joiner, n) and n.log.state.node(n.node_id) is not None]
        if not members:
            return None
        member = members[self.rng.randrange(len(members))]
        try:
            result = await member.submit(member.command(
                "admit_node", node_id=joiner.node_id, raft=joiner.address,
                url=f"http://{joiner.node_id}", cores=joiner.spec.cores, discovery="mdns"),
                timeout=10.0)
        except NoQuorum:
            return None
        return result if result.get("ok") else None

    async def peer_views(self, asker: SimNode) -> list[membership.PeerView]:
        """runtime.Node._peer_view of every other node: GET /api/v1/status where reachable."""
        views = []
        for n in self.nodes:
            if n is asker or not n.alive or n.log is None:
                continue
            if n.paused or not self.http_ok(asker, n):
                await asyncio.sleep(PROBE_TIMEOUT_S)
                continue
            await asyncio.sleep(2 * self.network.latency(asker.address, n.address))
            if n.alive and n.log is not None:
                views.append(membership.PeerView(n.log.has_quorum, n.log.leader_address,
                                                 tuple(sorted(n.log.members()))))
        return views

    async def probe(self, leader: SimNode, node_id: str) -> bool:
        """The leader's API ping of a worker (runtime.Node._prober)."""
        target = self.alive(node_id)
        if target is None or not self.http_ok(leader, target):
            await asyncio.sleep(PROBE_TIMEOUT_S)
            return False
        await asyncio.sleep(2 * self.network.latency(leader.address, target.address))
        return True

    async def fetch(self, node: SimNode, item: decisions.Fetch) -> bool:
        """PeerFetcher.fetch: try the holders in order; a copy takes latency + size/bandwidth."""
        if item.sha256 in node.disk.store:
            return True
        for source_id in item.sources:
            source = next((n for n in self.nodes if n.node_id == source_id), None)
            if source is None or source is node:
                continue
            if not source.alive:
                await asyncio.sleep(2 * self.network.latency(node.address, source.address))
                continue  # connection refused
            if not self.http_ok(node, source):
                await asyncio.sleep(CONNECT_TIMEOUT_S)
                continue
            await asyncio.sleep(2 * self.network.latency(node.address, source.address)
                                + item.size / BANDWIDTH_BYTES_S)
            if item.sha256 in source.disk.store and self.http_ok(node, source):
                node.disk.store.add(item.sha256)
                return True
        return False

    # -- the operator -----------------------------------------------------------------------------
    def _op_command(self, op: str, **fields: Any) -> dict[str, Any]:
        self._op_counter += 1
        return {"op": op, "rid": f"operator.{self._op_counter}",
                "ts": EPOCH + self.loop.time(), **fields}

    def _api_node(self) -> SimNode | None:
        """A node the operator's CLI can talk to (running, not stopped, registered)."""
        up = [n for n in self.nodes if n.alive and not n.paused and n.log is not None
              and getattr(n, "registered", None) is not None and n.registered.is_set()]
        return up[self.rng.randrange(len(up))] if up else None

    async def _operator_submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Like the CLI against any node: the same rid through whichever node answers."""
        while True:
            node = self._api_node()
            if node is not None:
                try:
                    return await node.submit(cmd, timeout=15.0)
                except NoQuorum:
                    pass
            await asyncio.sleep(1.0)

    async def _operator(self) -> None:
        release = None
        for k in range(self.config.cycles):
            cycle_id = f"cycle-{k + 1}"
            if release is None:
                cpvs = sorted(self.workload.packages)
                reused: list[dict[str, Any]] = []
            else:
                roots = self.rng.sample(sorted(self.workload.packages),
                                        min(3, len(self.workload.packages)))
                cpvs = self.workload.dependents_closure(roots)
                reused = [release.packages[c].to_dict() for c in sorted(release.packages)
                          if c not in cpvs]
            cmd = self._op_command("start_cycle", cycle_id=cycle_id, profile=PROFILE,
                                   jobs=self.workload.job_specs(cpvs), reused=reused,
                                   targets=[])
            result = await self._operator_submit(cmd)
            if not result.get("ok"):
                self.checker.fail(invariants.NO_ERRORS, self.loop.time(),
                                  f"start_cycle {cycle_id} refused: {result.get('error')}")
                self._stop.set()
                return
            self.cycle_ids.append(cycle_id)
            self.history.record(self.loop.time(), "operator", "cycle", id=cycle_id,
                                jobs=len(cpvs), reused=len(reused))
            await self._wait_finished(cycle_id)
            release_id = await self._finalize(cycle_id, k)
            self.releases.append(release_id)
            node = self._api_node()
            while node is None or node.log is None or node.log.state.release(release_id) is None:
                await asyncio.sleep(1.0)
                node = self._api_node()
            release = node.log.state.release(release_id)
        self.operator_done = True
        self.history.record(self.loop.time(), "operator", "done")

    async def _wait_finished(self, cycle_id: str) -> None:
        while True:
            await asyncio.sleep(2.0)
            node = self._api_node()
            if node is None or node.log is None:
                continue
            cycle = node.log.state.cycle(cycle_id)
            if cycle is not None and cycle.finished:
                self.history.record(self.loop.time(), "operator", "finished", id=cycle_id,
                                    built=cycle.built, failed=cycle.failed,
                                    blocked=cycle.blocked)
                return

    async def _finalize(self, cycle_id: str, k: int) -> str:
        """operations.finalize, retried until accepted: barrier, then finalize (with force
        when jobs failed — the operator accepts a partial release)."""
        attempt = 0
        while True:
            attempt += 1
            node = self._api_node()
            if node is None or node.log is None:
                await asyncio.sleep(1.0)
                continue
            try:
                await node.submit(self._op_command("barrier"), timeout=15.0)
                cycle = node.log.state.cycle(cycle_id)
                if cycle is not None and cycle.closed and cycle.release_id:
                    return cycle.release_id  # an earlier attempt whose answer was lost
                force = cycle is not None and bool(cycle.failed or cycle.blocked)
                release_id = f"{PROFILE}-r{k + 1}-{attempt}"
                result = await node.submit(self._op_command(
                    "finalize", release_id=release_id, profile=PROFILE, force=force), 15.0)
            except NoQuorum:
                await asyncio.sleep(1.0)
                continue
            if result.get("ok"):
                self.history.record(self.loop.time(), "operator", "finalized", id=release_id,
                                    packages=result.get("packages"))
                return release_id
            await asyncio.sleep(2.0)

    # -- checks while running -----------------------------------------------------------------
    def _replicas(self) -> list[tuple[str, int, str]]:
        live = [n for n in self.nodes if n.alive and n.log is not None]
        by_index: dict[int, list[SimNode]] = {}
        for n in live:
            assert n.log is not None
            by_index.setdefault(n.log.applied_index, []).append(n)
        out = []
        for index, group in sorted(by_index.items()):
            if len(group) > 1:
                for n in group:
                    assert n.log is not None
                    out.append((n.node_id, index, n.log.state.digest()))
        return out

    def _converged(self) -> bool:
        """One leader every running node follows, and every replica has applied what it
        committed."""
        live = [n for n in self.nodes if n.alive and n.log is not None and not n.paused
                and n.log.is_voter]
        leaders = [n for n in live if n.log is not None and n.log.is_leader]
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        assert leader.log is not None
        commit = leader.log.commit_index
        members = leader.log.members()
        for n in self.nodes:
            if not n.alive or n.log is None:
                return False
            if n.log.is_voter and not members.get(n.address, False):
                return False
            if n.log.leader_address != leader.address or n.log.applied_index < commit:
                return False
        return True

    async def _watch(self) -> None:
        c = self.config
        next_digest = c.digest_every_s
        deadline = self._deadline()
        while True:
            await asyncio.sleep(0.5)
            now = self.loop.time()
            if self.checker.violations:
                break
            if now >= next_digest:
                next_digest = now + c.digest_every_s
                self.checker.replicas(now, self._replicas())
            healed = self.nemesis.healed_at if self.nemesis.kinds & {
                "partitions", "crashes", "pauses", "flaky", "slow", "restart-all"} else 0.0
            if healed is not None and self.converged_at is None and self._converged():
                self.converged_at = now
                self.history.record(now, "checker", "converged")
            if (healed is not None and self.converged_at is None
                    and now > healed + c.converge_s):
                self.checker.fail(invariants.LIVENESS, now,
                                  f"no single caught-up leader {c.converge_s:.0f}s after the "
                                  f"faults stopped (at {healed:.1f}s)")
                break
            if self.operator_done and healed is not None and self._settled():
                break
            if now > deadline:
                self.checker.fail(invariants.LIVENESS, now,
                                  f"the workload was not built and released by {deadline:.0f}s "
                                  f"(faults stopped at {self.nemesis.window_s:.0f}s)")
                break
        self._stop.set()

    def _settled(self) -> bool:
        """Every node running, converged, all at the same applied index."""
        if not all(n.alive and n.log is not None for n in self.nodes):
            return False
        if not self._converged():
            return False
        indexes = {n.log.applied_index for n in self.nodes if n.log is not None}
        return len(indexes) == 1

    def _deadline(self) -> float:
        c = self.config
        work = c.cycles * self.expected_makespan()
        grace = c.breaker_cooldown_s * 2 if "failures" in c.faults else 0.0
        return min(c.max_virtual_s, self.nemesis.window_s + 3 * work + 120.0 + grace)

    # -- the run ------------------------------------------------------------------------------
    async def _main(self) -> None:
        boot_rng = derive(self.config.seed, "boot")
        for node in self.nodes:
            if node in self.joiners:
                at = boot_rng.uniform(3.0, max(4.0, self.nemesis.window_s / 2))
            elif not node.spec.static_peers:
                at = boot_rng.uniform(0.5, 2.0)  # discovery: once the swarm exists
            else:
                at = boot_rng.uniform(0.0, 0.5)
            self.loop.call_at(at, node.boot)
        self.spawn(self._operator())
        self.spawn(self.nemesis.run())
        self.spawn(self._watch())
        await self._stop.wait()

    def _final_checks(self) -> None:
        c = self.checker
        now = self.loop.time()
        if c.violations:
            return
        ref = next((n for n in self.nodes if n.alive and n.log is not None
                    and n.log.is_leader), None)
        if ref is None or ref.log is None:
            return
        state = ref.log.state
        self.checker.replicas(now, [(n.node_id, n.log.applied_index, n.log.state.digest())
                                    for n in self.nodes if n.alive and n.log is not None])
        for message in invariants.lost_acks(c.acks, c.entries, state.applied, c.rid_index):
            c.fail(invariants.ACKED_KEPT, now, message)
        for message in invariants.unfinished_jobs(state, self.cycle_ids):
            c.fail(invariants.CYCLES_END, now, message)
        stores = {n.node_id: n.disk.store for n in self.nodes}
        for message in invariants.release_problems(state, stores, int(state.config["replicas"])):
            c.fail(invariants.RELEASES, now, message)

    def summary(self) -> dict[str, Any]:
        ref = next((n for n in self.nodes if n.alive and n.log is not None and n.log.is_leader),
                   None) or next((n for n in self.nodes if n.log is not None), None)
        state = ref.log.state if ref is not None and ref.log is not None else None
        built = failed = blocked = 0
        if state is not None:
            for cycle_id in self.cycle_ids:
                cycle = state.cycle(cycle_id)
                if cycle is not None:
                    built += cycle.count(BUILT)
                    failed += cycle.count(FAILED)
                    blocked += cycle.count(BLOCKED)
        injected: dict[str, int] = {}
        for what in self.nemesis.injected:
            injected[what] = injected.get(what, 0) + 1
        planned = {} if self.plan is None else {"planned": len(self.plan)}
        return {
            "nodes": len(self.nodes), "workload": self.workload.name,
            "packages": len(self.workload.packages),
            "leaders": sum(len(set(v)) for v in self.checker.leaders.values()),
            "terms": max(self.checker.leaders, default=0),
            "faults": dict(sorted(injected.items())),
            "commands_committed": len(self.checker.entries),
            "acknowledged": len(self.checker.acks),
            "cycles": len(self.cycle_ids), "releases": len(self.releases),
            "jobs_built": built, "jobs_failed": failed, "jobs_blocked": blocked,
            "messages": self.network.messages,
            "refused_claims": self.refused_claims,
            "faults_healed_at_s": self.nemesis.healed_at,
            "converged_at_s": self.converged_at,
            "snapshots_installed": self.history.count("snapshot"),
            **planned,
        }

    def run(self) -> RunResult:
        started = time.perf_counter()
        journals = {n.disk.journal_key: n.disk.journal for n in self.nodes}
        # "Task was destroyed but it is pending": tasks that crashed nodes' loops left behind
        # (worker.idle does not cancel its helpers when it is cancelled) are collected.
        asyncio_log = logging.getLogger("asyncio")
        asyncio_level = asyncio_log.level
        asyncio_log.setLevel(logging.CRITICAL)
        pysyncobj_log = logging.getLogger("pysyncobj")
        handler = _HistoryHandler(self)
        pysyncobj_log.addHandler(handler)
        propagate = pysyncobj_log.propagate
        pysyncobj_log.propagate = False
        try:
            with patched_pysyncobj(self.loop, self.raft_rng, journals):
                asyncio.set_event_loop(self.loop)
                self.loop.set_exception_handler(self._loop_error)
                self.loop.run_until_complete(self._main())
                self._final_checks()
                result = RunResult(
                    seed=self.config.seed, config=self.config,
                    ok=not self.checker.violations, violations=list(self.checker.violations),
                    history_hash=self.history.digest(self._fingerprint()),
                    virtual_s=self.loop.time(), wall_s=0.0, summary=self.summary(),
                    tail=self.history.tail(30))
                self._shutdown()
        finally:
            asyncio_log.setLevel(asyncio_level)
            pysyncobj_log.removeHandler(handler)
            pysyncobj_log.propagate = propagate
            asyncio.set_event_loop(None)
            self.loop.close()
        result.wall_s = time.perf_counter() - started
        return result

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception escaped a callback (a message handler, a tick): in the daemon it
        would be logged and the node would go on; here it is a finding."""
        exc = context.get("exception")
        if exc is None:  # "Task was destroyed but it is pending" and the like: noise
            return
        self.checker.fail(invariants.NO_ERRORS, self.loop.time(),
                          f"{context.get('message', 'callback failed')}: "
                          f"{type(exc).__name__}: {exc}")
        self._stop.set()

    def _fingerprint(self) -> str:
        """What the history hash covers beyond the events: every applied entry, every
        replica's final digest."""
        entries = ";".join(f"{i}:{e.digest[:16]}" for i, e in sorted(self.checker.entries.items()))
        digests = ";".join(f"{n.node_id}:{n.log.applied_index}:{n.log.state.digest()[:16]}"
                           for n in self.nodes if n.log is not None)
        return entries + "|" + digests

    def _shutdown(self) -> None:
        """Stop every process and let the cancellations run (nothing is recorded any more)."""
        for node in self.nodes:
            if node.alive:
                node.crash()
        for task in self._tasks:
            task.cancel()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        leftovers = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            self.loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))


class _HistoryHandler(logging.Handler):
    """pysyncobj's warnings (a failed dump load, a truncated applied entry …) into the history."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__(logging.WARNING)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        self.sim.history.record(self.sim.loop.time(), "pysyncobj", record.levelname.lower(),
                                message=record.getMessage()[:200])


def run(config: SimConfig) -> RunResult:
    """One run in a scratch directory (the nodes' dump files), removed afterwards."""
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    workdir = Path(tempfile.mkdtemp(prefix="swarm-sim-", dir=base))
    try:
        return Simulation(config, workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
