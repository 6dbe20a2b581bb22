"""One simulated swarm node: the daemon's loops on virtual time, around the real decisions.

Mirrors ``swarmnode/node/runtime.py`` (how a node finds its swarm and opens Raft, the join,
maintenance, membership, roles, replicator and publisher loops) and ``worker.py`` (claim →
build → heartbeat → report, the breaker's builder restart) the way ``simulation/bench/
bench_node.py`` does — every decision is ``swarmnode.node.decisions`` / ``membership``; only
the build (a timer of the workload's duration) and the peer copy (latency + size/bandwidth)
are simulated. A crash ends the process: its tasks, its SyncObj and its memory are gone; the
disk (:class:`SimDisk`) stays and a restart opens Raft from it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmnode.consensus.raft import NoQuorum, RaftSettings
from swarmnode.errors import UserError
from swarmnode.node import decisions, membership
from swarmnode.node.worker import idle
from swarmnode.state.records import NONVOTER, REMOVED, VOTER

from . import invariants
from .clock import EPOCH
from .disk import SimDisk
from .raftnode import SimLog
from .workload import PROFILE

if TYPE_CHECKING:
    from .simulation import Simulation

STARTUP_CATCH_UP_S = 10.0  # runtime.STARTUP_CATCH_UP_S
PROBE_TIMEOUT_S = 1.0      # runtime.PROBE_TIMEOUT_S
CONNECT_TIMEOUT_S = 5.0    # peers.PeerFetcher: sock_connect


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    address: str                    # node.raft
    cores: int
    max_jobs: int
    static_peers: tuple[str, ...]   # cluster.peers (empty for a node that joins by discovery)
    clock_skew_s: float = 0.0       # this machine's clock against true time


@dataclass
class SimBuild:
    cycle_id: str
    cpv: str
    fence: int
    cores: int
    task: asyncio.Task[None]


class SimNode:
    """A node process that can run, crash, restart, pause and be slow (see module docstring)."""

    def __init__(self, sim: Simulation, spec: NodeSpec, disk: SimDisk) -> None:
        self.sim = sim
        self.spec = spec
        self.node_id = spec.node_id
        self.address = spec.address
        self.disk = disk
        self.network = sim.network
        self.loop = sim.loop
        self.cfg = sim.config
        self.alive = False
        self.paused = False
        self.slow = 1.0
        self.incarnation = 0
        self._voters_at_crash: set[str] | None = None  # checked when it restarts
        self.log: SimLog | None = None
        self.discovered_via = "static"
        self.running: dict[int, SimBuild] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._counter = 0

    # -- time and commands ----------------------------------------------------------------------
    def wall(self) -> float:
        """This machine's clock (time.time() in the daemon)."""
        return EPOCH + self.loop.time() + self.spec.clock_skew_s

    def command(self, op: str, **fields: Any) -> dict[str, Any]:
        """commands.command with a deterministic rid and the virtual clock."""
        self._counter += 1
        return {"op": op, "rid": f"{self.node_id}.{self.incarnation}.{self._counter}",
                "ts": self.wall(), **fields}

    def record(self, kind: str, **fields: Any) -> None:
        self.sim.history.record(self.loop.time(), self.node_id, kind, **fields)

    async def submit(self, cmd: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        log = self._log()
        result = await log.submit(cmd, timeout)
        self.sim.acknowledged(self.node_id, log, cmd, result)
        return result

    async def submit_until_committed(self, cmd: dict[str, Any]) -> dict[str, Any]:
        while True:
            try:
                return await self.submit(cmd)
            except NoQuorum:
                await self.nap(0.0)

    def _log(self) -> SimLog:
        assert self.log is not None, "the node's replica is not open"
        return self.log

    async def nap(self, seconds: float) -> None:
        """asyncio.sleep that also waits out a pause (a stopped process runs no timers)."""
        if seconds > 0:
            await asyncio.sleep(seconds)
        while self.paused:
            await self._resumed.wait()

    # -- ReplicaHost (what SimLog asks of its node) --------------------------------------------
    def tick_delay(self) -> float:
        return 0.02 * (self.slow - 1.0)

    def before_apply(self, log: SimLog, index: int, cmd: dict[str, Any] | None) -> Any:
        """For a ``complete``: was its lease live (None: a retried rid, answered from the
        dedup table — the first application was the one that counted)?"""
        if cmd is not None and cmd.get("op") == "complete" and cmd.get("rid") not in log.state.applied:
            return invariants.lease_is_live(log.state, cmd)
        return None

    def after_apply(self, log: SimLog, index: int, blob: bytes, cmd: dict[str, Any] | None,
                    before: Any, result: dict[str, Any]) -> None:
        rid = str(cmd.get("rid")) if cmd is not None else "?"
        log.applied_at[rid] = (index, rid in log.state.applied)
        checker, t = self.sim.checker, self.loop.time()
        checker.applied(t, self.node_id, index, blob, rid)
        if cmd is None:
            return
        error = result.get("error") if isinstance(result, dict) else None
        if isinstance(error, str) and ": internal error: " in error:  # apply hid a bug
            checker.fail(invariants.NO_ERRORS, t, f"{self.node_id} applying {rid}: {error}")
        ts = float(cmd.get("ts", 0.0)) if isinstance(cmd.get("ts"), (int, float)) else 0.0
        if cmd.get("op") in ("claim", "heartbeat", "complete", "expire", "node_status", "reset"):
            checker.state_after(t, self.node_id, log.state, ts)
        if cmd.get("op") == "complete" and before is not None:
            checker.completion(t, self.node_id, cmd, bool(before), result)

    def observe_leader(self, log: SimLog, term: int) -> None:
        self.record("leader", term=term)
        self.sim.checker.leader(self.loop.time(), term, self.node_id)

    def observe_dump_loaded(self, log: SimLog, installed: bool) -> None:
        self.record("snapshot" if installed else "dump-loaded", applied=log.applied_index)

    def observe_ack_dropped(self, log: SimLog, problem: str) -> None:
        self.record("ack-dropped", problem=problem)
        if self.cfg.check_follower_acks:
            self.sim.checker.fail(invariants.KEEPS_ACKED, self.loop.time(), problem)

    def observe_membership_change(self, log: SimLog) -> None:
        """pysyncobj changed this replica's voter set (an entry appended, or replayed)."""
        self.sim.nemesis.after_membership_change(self)

    def observe_tick_error(self, log: SimLog, exc: BaseException) -> None:
        self.sim.checker.fail(invariants.NO_ERRORS, self.loop.time(),
                              f"{self.node_id}: pysyncobj tick raised {type(exc).__name__}: {exc}")

    # -- process lifecycle -------------------------------------------------------------------
    def boot(self) -> None:
        """Start the daemon process (first start, or a restart from this node's disk)."""
        assert not self.alive
        self.alive, self.paused = True, False
        self._resumed.set()
        self.incarnation += 1
        self._counter = 0
        self.running = {}
        self.registered = asyncio.Event()
        self.liveness = decisions.LivenessTracker(self.cfg.down_after_s)
        self.probes: dict[str, bool] = {}
        self._slot_freed = asyncio.Event()
        self.record("boot", incarnation=self.incarnation)
        self._spawn(self._start(), "start")

    def crash(self) -> None:
        """kill -9: tasks, builds, the SyncObj and every byte of memory are gone."""
        if not self.alive:
            return
        self.record("crash")
        self.alive, self.paused = False, False
        self._resumed.set()
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self.running = {}
        if self.log is not None:
            # Raft's configuration is the latest one in the log, and the log is on disk:
            # the restarted replica must start from this voter set (checked in _start).
            self._voters_at_crash = set(self.log.members())
            self.log.close()
            self.log = None
        self.network.resume(self.address)
        self.disk.crash()

    def pause(self) -> None:
        if self.alive and not self.paused:
            self.record("pause")
            self.paused = True
            self._resumed.clear()
            self.network.pause(self.address)

    def resume(self) -> None:
        if self.alive and self.paused:
            self.record("resume")
            self.paused = False
            self._resumed.set()
            self.network.resume(self.address)
            if self.log is not None:
                self.log.kick()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = self.loop.create_task(self._guard(coro, name), name=f"{self.node_id} {name}")
        self._tasks.append(task)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the daemon would log it; here it is a finding
            self.sim.checker.fail(invariants.NO_ERRORS, self.loop.time(),
                                  f"{self.node_id} {name}: {type(exc).__name__}: {exc}")

    # -- runtime.Node.start and _find_swarm ----------------------------------------------------
    def _settings(self, voter: bool, voters: set[str]) -> RaftSettings:
        c = self.cfg
        return RaftSettings(self_address=self.address,
                            partners=tuple(sorted(voters - {self.address})),
                            data_dir=self.disk.dir, password="", voter=voter,
                            compaction_entries=c.compaction_entries,
                            compaction_time_s=c.compaction_time_s)

    def _open(self, voter: bool, voters: set[str]) -> None:
        self.log = SimLog(self._settings(voter, voters), self, self.loop, self.sim.syncobj_class,
                          idle_tick_s=self.cfg.idle_tick_s,
                          append_batch_bytes=self.cfg.append_batch_bytes)
        self.log.start()
        self._save_membership()

    def _save_membership(self) -> None:
        log = self._log()
        self.disk.membership = {"role": VOTER if log.is_voter else NONVOTER,
                                "voters": sorted(log.members()),
                                "discovery": self.discovered_via}

    async def _find_swarm(self) -> tuple[bool, set[str]]:
        saved = self.disk.membership
        if saved is not None:
            self.discovered_via = str(saved.get("discovery", "static"))
            return saved["role"] == VOTER, set(saved["voters"]) | set(self.spec.static_peers)
        if self.disk.journal.entries or self.spec.static_peers:
            return True, set(self.spec.static_peers)
        # Discovery: a member checks our secret and commits admit_node (the join handshake);
        # its answer says whether we vote and who the voters are.
        while True:
            answer = await self.sim.admit(self)
            if answer is not None:
                self.discovered_via = "mdns"
                self.record("admitted", role=answer["role"])
                return answer["role"] == VOTER, set(answer["voters"])
            await self.nap(2.0)

    async def _start(self) -> None:
        voter, voters = await self._find_swarm()
        self._open(voter, voters)
        before, self._voters_at_crash = self._voters_at_crash, None
        if before is not None:
            problem = invariants.voters_changed(self.node_id, before, set(self._log().members()))
            if problem is not None:
                self.sim.checker.fail(invariants.VOTERS_KEPT, self.loop.time(), problem)
        await self._log().wait_ready(STARTUP_CATCH_UP_S)
        for coro, name in ((self._join(), "join"), (self._worker(), "worker"),
                           (self._maintenance(), "maintenance"), (self._replicator(), "replicator"),
                           (self._publisher(), "publisher"), (self._roles(), "roles"),
                           (self._prober(), "prober"), (self._voters(), "voters"),
                           (self._stale_vote(), "stale_vote")):
            self._spawn(coro, name)

    async def _join(self) -> None:
        c = self.cfg
        log = self._log()
        for cmd in (self.command("configure", breaker_threshold=c.breaker_threshold,
                                 breaker_cooldown_s=c.breaker_cooldown_s, fail_nodes=c.fail_nodes,
                                 keep_releases=c.keep_releases, replicas=c.replicas,
                                 max_voters=c.max_voters, voter_grace_s=c.voter_grace_s,
                                 lost_after_s=c.lost_after_s),
                    self.command("register_node", node_id=self.node_id, url=f"http://{self.node_id}",
                                 raft=self.address, cores=self.spec.cores, profiles=[PROFILE],
                                 sweeper=False, tree_versions={}, voter=log.is_voter,
                                 discovery=self.discovered_via, slots=self.spec.max_jobs)):
            await self.submit_until_committed(cmd)
        self.registered.set()
        self.record("registered")

    # -- the worker (worker.Worker.run) --------------------------------------------------------
    def view(self) -> decisions.WorkerView:
        return decisions.WorkerView(node_id=self.node_id, cores=self.spec.cores,
                                    max_jobs=self.spec.max_jobs,
                                    running_cores=tuple(b.cores for b in self.running.values()))

    async def _worker(self) -> None:
        await self.registered.wait()
        grounded = False
        while True:
            try:
                log = self._log()
                me = log.state.node(self.node_id)
                now_grounded = me is not None and me.breaker(self.wall()) == "grounded"
                if now_grounded and not grounded:
                    self.record("grounded")
                    self._restart_builder()
                grounded = now_grounded
                while (cmd := decisions.claim_command(log.state, self.view(),
                                                      self.cfg.lease_ttl_s,
                                                      ts=self.wall())) is not None:
                    result = await self.submit(self.command(cmd[0], **cmd[1]))
                    job = result.get("job") if result.get("ok") else None
                    if not job:
                        self.sim.refused_claims += 1
                        break
                    self._start_build(job, result["lease"])
            except NoQuorum:
                pass
            await idle(self._slot_freed, self._log(), self.cfg.poll_s)
            await self.nap(0.0)

    def _restart_builder(self) -> None:
        for build in list(self.running.values()):
            build.task.cancel()

    def _start_build(self, job: dict[str, Any], lease: dict[str, Any]) -> None:
        fence = int(lease["fence"])
        self.record("build", cpv=job["cpv"], fence=fence)
        task = self._spawn(self._run_job(job, lease), f"build {job['cpv']}")
        self.running[fence] = SimBuild(job["cycle_id"], job["cpv"], fence, int(lease["cores"]),
                                       task)
        task.add_done_callback(lambda _t: self._finished(fence))

    def _finished(self, fence: int) -> None:
        self.running.pop(fence, None)
        if self.alive:
            self._slot_freed.set()

    async def _run_job(self, job: dict[str, Any], lease: dict[str, Any]) -> None:
        fence, cpv = int(lease["fence"]), job["cpv"]
        lost = asyncio.Event()
        build = asyncio.ensure_future(self._build(job, lease))
        beat = asyncio.ensure_future(self._heartbeat(fence, build, lost))
        try:
            ok, error = await build
            not_run = False
        except asyncio.CancelledError:
            beat.cancel()
            if not lost.is_set():
                raise
            self.record("lost", cpv=cpv, fence=fence)
            return
        except _NotRun as exc:
            ok, error, not_run = False, str(exc), True
        finally:
            beat.cancel()
        await self._report(job, fence, ok, error, not_run)

    async def _build(self, job: dict[str, Any], lease: dict[str, Any]) -> tuple[bool, str]:
        """Stage the dependencies (fetched from their builders), then "build" for the
        workload's duration; a package the fault plan breaks on this node fails halfway."""
        cycle = self._log().state.cycle(job["cycle_id"])
        needed = decisions.staging_artifacts(cycle, job["cpv"]) if cycle is not None else []
        for attempt in range(5):
            missing = await self.ensure_local(needed)
            if not missing:
                break
            if attempt == 4:
                raise _NotRun(f"dependencies not fetchable from any node: {', '.join(missing[:5])}")
            await self.nap(2.0 * (attempt + 1))
        duration = self.sim.workload.packages[job["cpv"]].duration_s * self.slow
        if self.sim.fails(job["cpv"], self.node_id):
            await asyncio.sleep(duration / 2)
            return False, "simulated build failure"
        await asyncio.sleep(duration)
        return True, ""

    async def _heartbeat(self, fence: int, build: asyncio.Future[Any], lost: asyncio.Event) -> None:
        while True:
            await self.nap(self.cfg.heartbeat_s)
            try:
                result = await self.submit(self.command(
                    "heartbeat", node_id=self.node_id, fence=fence,
                    lease_ttl_s=self.cfg.lease_ttl_s), timeout=self.cfg.heartbeat_s * 2)
            except NoQuorum:
                continue
            if not result.get("ok") and result.get("lost"):
                lost.set()
                build.cancel()
                return

    async def _report(self, job: dict[str, Any], fence: int, ok: bool, error: str,
                      not_run: bool) -> None:
        cpv = job["cpv"]
        log_sha = hashlib.sha256(f"log:{cpv}:{fence}".encode()).hexdigest()
        self.disk.store.add(log_sha)
        artifact = None
        if ok:
            sha = hashlib.sha256(f"{cpv}:{fence}".encode()).hexdigest()
            self.disk.store.add(sha)
            artifact = {"sha256": sha, "size": self.sim.workload.packages[cpv].size}
        cmd = self.command("complete", node_id=self.node_id, fence=fence,
                           cycle_id=job["cycle_id"], cpv=cpv, success=artifact is not None,
                           duration_s=self.sim.workload.packages[cpv].duration_s,
                           log_sha256=log_sha, artifact=artifact, error=error, not_run=not_run)
        outcome = await self.submit_until_committed(cmd)
        accepted = bool(outcome.get("ok")) and not outcome.get("stale")
        self.record("reported", cpv=cpv, fence=fence, built=artifact is not None,
                    accepted=accepted)
        if accepted and artifact is not None:
            self.sim.nemesis.after_build(self)

    # -- the leader's maintenance (runtime.Node._maintenance / _membership / _prober) ----------
    def reachable_nodes(self) -> dict[str, bool]:
        log = self._log()
        members = log.members()
        return {n.node_id: (n.node_id == self.node_id or members.get(n.raft, False)
                            or (n.raft not in members and self.probes.get(n.node_id, False)))
                for n in log.state.nodes() if n.raft and n.role != REMOVED}

    async def _maintenance(self) -> None:
        was_leader = False
        while True:
            await self.nap(min(0.5, self.cfg.lease_ttl_s / 8))
            log = self._log()
            if not log.is_leader:
                was_leader = False
                continue
            if not was_leader:
                self.liveness.reset()
                was_leader = True
            verdict = self.liveness.observe(self.reachable_nodes(), self.loop.time())
            try:
                for op, fields in decisions.maintenance_commands(log.state, self.wall(), verdict):
                    result = await self.submit(self.command(op, **fields), timeout=5.0)
                    if result.get("went_down") or result.get("came_up"):
                        self.record("node_status", down=result.get("went_down", []),
                                    up=result.get("came_up", []))
                    for item in result.get("expired", []) + result.get("revoked", []):
                        self.record("requeued", how=op, cpv=item[1], holder=item[2],
                                    fence=item[3])
                    for item in result.get("rebuild", []):
                        self.record("rebuild", cpv=item[1], requeued=item[2])
            except UserError:  # lost leadership mid-way, no quorum …: next round
                pass

    async def _voters(self) -> None:
        """runtime.Node._voters: on the leader, the voter policy and one Raft change."""
        while True:
            await self.nap(0.5)
            if not self._log().is_leader:
                continue
            try:
                await self._membership()
            except UserError as exc:  # no quorum, a change still in flight …: next round
                self.record("membership", error=type(exc).__name__)

    async def _membership(self) -> None:
        log = self._log()
        for op, fields in membership.role_commands(log.state, self.wall(), self.node_id):
            result = await self.submit(self.command(op, **fields), timeout=5.0)
            if result.get("changed"):
                self.record("role", node=fields["node_id"], role=fields["role"])
        changes = membership.raft_changes(log.state, log.members(), self.wall())
        if changes:
            action, address = changes[0]
            await log.change_membership(action, address, timeout=5.0)
            self.record("voters", action=action, address=address)

    async def _prober(self) -> None:
        while True:
            await self.nap(0.5)
            log = self._log()
            if not log.is_leader:
                continue
            members = log.members()
            targets = [n.node_id for n in log.state.nodes()
                       if n.url and n.raft not in members and n.node_id != self.node_id]
            for node_id, ok in zip(targets, await asyncio.gather(
                    *(self.sim.probe(self, t) for t in targets))):
                self.probes[node_id] = ok

    # -- roles (runtime.Node._roles / _reopen) --------------------------------------------------
    async def _roles(self) -> None:
        await self.registered.wait()
        while True:
            await self._log().wait_changed(1.0)
            await self.nap(0.0)
            log = self._log()
            me = log.state.node(self.node_id)
            if me is None:
                continue
            members = log.members()
            if log.is_voter and me.role == NONVOTER:
                await self._reopen(False)
            elif not log.is_voter and me.role == VOTER and self.address in members:
                await self._reopen(True)
            elif self.disk.membership != {"role": VOTER if log.is_voter else NONVOTER,
                                          "voters": sorted(members),
                                          "discovery": self.discovered_via}:
                self._save_membership()

    async def _stale_vote(self) -> None:
        """runtime.Node._stale_vote: a voter the swarm dropped reopens as a worker."""
        leaderless_since: float | None = None
        while True:
            await self.nap(2.0)
            log = self._log()
            if not log.is_voter or log.leader_address is not None:
                leaderless_since = None
                continue
            now = self.loop.time()
            leaderless_since = now if leaderless_since is None else leaderless_since
            if now - leaderless_since < membership.STALE_VOTE_AFTER_S:
                continue
            voters = membership.stale_vote(self.address, await self.sim.peer_views(self))
            if voters is not None:
                await self._reopen(False, set(voters), wipe=True)
                leaderless_since = None

    async def _reopen(self, voter: bool, voters: set[str] | None = None,
                      wipe: bool = False) -> None:
        voters = set(self._log().members()) if voters is None else voters
        self._log().close()
        if wipe:
            self.disk.wipe_replica()
        self.record("reopen", voter=voter)
        self._open(voter, voters)
        await self._log().wait_ready(STARTUP_CATCH_UP_S)

    # -- copying artifacts (runtime.Node._replicator / fetch_all / ensure_local / publisher) ----
    async def _replicator(self) -> None:
        await self.registered.wait()
        backoff = decisions.FetchBackoff()
        while True:
            chosen = decisions.replication_fetches(self._log().state, self.node_id)
            todo = backoff.due(chosen, self.loop.time())
            if todo:
                got = set(await self.fetch_all(todo))
                backoff.record(todo, got, self.loop.time())
            await self._log().wait_changed(2.0)
            await self.nap(0.0)

    async def fetch_all(self, todo: list[decisions.Fetch]) -> list[str]:
        sem = asyncio.Semaphore(4)

        async def one(item: decisions.Fetch) -> str | None:
            async with sem:
                ok = await self.sim.fetch(self, item)
                return item.sha256 if ok else None

        got = [sha for sha in await asyncio.gather(*(one(t) for t in todo)) if sha]
        try:
            for op, fields in decisions.stored_commands(self.node_id, got):
                await self.submit(self.command(op, **fields))
        except NoQuorum:
            pass
        return got

    async def ensure_local(self, artifacts: list[Any]) -> list[str]:
        have = {a.sha256 for a in artifacts if a.sha256 in self.disk.store}
        todo = decisions.missing_for(self._log().state, artifacts, have)
        if not todo:
            return []
        got = set(await self.fetch_all(todo))
        return [t.cpv for t in todo if t.sha256 not in got]

    async def _publisher(self) -> None:
        """The binhost side: hold every package of the production release locally."""
        while True:
            state = self._log().state
            prod = state.production(PROFILE)
            release = state.release(prod.release_id) if prod is not None else None
            if release is not None:
                await self.ensure_local([release.packages[c] for c in sorted(release.packages)])
            await self._log().wait_changed(5.0)
            await self.nap(0.0)


class _NotRun(Exception):
    """The build could not start here (its dependencies were not fetchable)."""
