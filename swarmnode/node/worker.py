"""The builder side of a node: claim the best ready job, build it, heartbeat, report.

All scheduling decisions are the state machine's; this loop only asks ("claim", when
`decisions.claim_command` says it is worth it), keeps its lease alive and reports the outcome
with the lease's fencing id. If a heartbeat says the lease is lost (expired, revoked because
the leader lost sight of this node, or reset), the build is killed and its result dropped.
A node whose breaker grounds it restarts its builder: running builds stopped, leftover build
processes killed, build roots wiped — a clean slate for the probe job after the cool-down.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from swarmnode.binhost import PackageRef
from swarmnode.consensus import ReplicatedLog
from swarmnode.consensus.raft import NoQuorum
from swarmnode.node import decisions
from swarmnode.node.commands import command
from swarmnode.portage import builder

if TYPE_CHECKING:
    from swarmnode.node.runtime import Node

log = logging.getLogger(__name__)

#: Before claiming while a pinned cycle runs, the tree is read again unless it was read this
#: recently (a burst of claims reads it once; a stat walk, see planner._content_hash).
PRE_CLAIM_CHECK_S = 1.0


async def idle(slot_freed: asyncio.Event, log: ReplicatedLog, poll_s: float) -> None:
    """Wait until the state changes, a build slot frees up, or poll_s passes."""
    freed = asyncio.create_task(slot_freed.wait())
    changed = asyncio.create_task(log.wait_changed(poll_s))
    await asyncio.wait({freed, changed}, return_when=asyncio.FIRST_COMPLETED)
    freed.cancel()
    changed.cancel()
    slot_freed.clear()


@dataclass
class RunningBuild:
    cycle_id: str
    cpv: str
    fence: int
    cores: int
    task: asyncio.Task[None]


class Worker:
    """Claims and runs builds while this node has free cores."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.config
        self.running: dict[int, RunningBuild] = {}
        self._slot_freed = asyncio.Event()

    # -- claiming ----------------------------------------------------------------------------
    def view(self) -> decisions.WorkerView:
        node = self.cfg.node
        return decisions.WorkerView(
            node_id=node.node_id, cores=node.cores, max_jobs=self.cfg.build.max_parallel_jobs,
            running_cores=tuple(b.cores for b in self.running.values()),
            workstation=node.workstation,
            load_1m=psutil.getloadavg()[0] if node.workstation else 0.0,
            reserve_cores=node.reserve_cores)

    async def run(self) -> None:
        await self.node.registered.wait()
        grounded = False
        while True:
            try:
                me = self.node.log.state.node(self.cfg.node.node_id)
                now_grounded = me is not None and me.breaker(time.time()) == "grounded"
                if now_grounded and not grounded:
                    await self.restart_builder()
                grounded = now_grounded
                await self.claim_round()
            except NoQuorum as exc:
                log.warning("worker: %s", exc)
            except Exception:  # keep the worker alive; the error is logged with its cause
                log.exception("worker: claiming failed")
            await self._idle()

    async def claim_round(self) -> None:
        """Claim and start builds while the state offers this node one."""
        pinned = decisions.tree_check_due(self.node.log.state, self.cfg.node.node_id)
        if pinned:  # every 10 s: a drifted node says so even when it claims nothing
            await self.node.refresh_tree_versions()
        while (cmd := self._claim_command()) is not None:
            if pinned:
                # About to claim: a pinned cycle's job must be built from its tree as it is
                # now, not as it was at the last look (up to 10 s ago). A changed tree is
                # reported first, and the state then decides whether this node may claim.
                pinned = False
                await self.node.refresh_tree_versions(min_interval_s=PRE_CLAIM_CHECK_S)
                if (cmd := self._claim_command()) is None:
                    break
            result = await self.node.submit(command(cmd[0], **cmd[1]))
            job = result.get("job") if result.get("ok") else None
            if not job:
                break
            self._start(job, result["lease"])

    def _claim_command(self) -> decisions.Command | None:
        return decisions.claim_command(self.node.log.state, self.view(),
                                       self.cfg.build.lease_ttl_s, ts=time.time())

    async def restart_builder(self) -> None:
        """Grounded by the breaker: stop everything and start the builder from scratch."""
        log.warning("node grounded after repeated failures: restarting the builder")
        for build in list(self.running.values()):
            build.task.cancel()
        await asyncio.gather(*(b.task for b in self.running.values()), return_exceptions=True)
        await self.clear_build_roots()

    async def clear_build_roots(self) -> int:
        """Kill every process of a build under the build roots and wipe them (at start-up and
        when grounded). Returns how many processes had to be killed."""
        builds = self.node.paths.builds
        killed = await asyncio.to_thread(builder.kill_leftover_builds, builds)
        await asyncio.to_thread(shutil.rmtree, builds, True)
        builds.mkdir(parents=True, exist_ok=True)
        return killed

    async def _idle(self) -> None:
        await idle(self._slot_freed, self.node.log, self.cfg.build.poll_s)

    def _start(self, job: dict[str, Any], lease: dict[str, Any]) -> None:
        fence = int(lease["fence"])
        task = asyncio.create_task(self._run_job(job, lease), name=f"build {job['cpv']}")
        self.running[fence] = RunningBuild(job["cycle_id"], job["cpv"], fence,
                                           int(lease["cores"]), task)
        task.add_done_callback(lambda _t: self._finished(fence))

    def _finished(self, fence: int) -> None:
        self.running.pop(fence, None)
        self._slot_freed.set()

    # -- one build ---------------------------------------------------------------------------
    async def _run_job(self, job: dict[str, Any], lease: dict[str, Any]) -> None:
        node, fence, cpv = self.node, int(lease["fence"]), job["cpv"]
        profile = self.cfg.profile(job["profile"])
        workdir = node.paths.builds / f"{fence}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "build.log"
        log.info("building %s (cycle %s, lease %d, %d cores)", cpv, job["cycle_id"], fence,
                 lease["cores"])
        lost = asyncio.Event()
        build = asyncio.create_task(self._build(job, profile, workdir, log_path, lease))
        beat = asyncio.create_task(self._heartbeat(fence, build, lost))
        try:
            try:
                result = await build
            except asyncio.CancelledError:
                if not lost.is_set():
                    raise  # the node is shutting down
                log.warning("build of %s stopped: lease %d was lost", cpv, fence)
                return
            except Exception as exc:  # the build could not run at all (e.g. staging failed)
                # Not the package's fault: requeued without counting as a failure.
                log.warning("build of %s could not run here (%s); handing it back", cpv, exc,
                            exc_info=True)
                result = builder.BuildResult(False, None, log_path, 0.0,
                                             f"the node could not run the build: {exc}")
                not_run = True
            else:
                not_run = False
            finally:
                beat.cancel()
            drift = await self.tree_drift(job) if result.ok else ""
            if drift:
                log.warning("build of %s discarded: %s", cpv, drift)
                result = builder.BuildResult(False, None, log_path, result.duration_s, drift)
            await self._report(job, fence, result, log_path, not_run, tree_changed=bool(drift))
        finally:
            if not self.cfg.build.keep_build_roots:
                await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _build(self, job: dict[str, Any], profile: Any, workdir: Path, log_path: Path,
                     lease: dict[str, Any]) -> builder.BuildResult:
        # What dependencies install from: the packages reused from the release plus the
        # job's (transitive) dependencies built in this cycle — fetched from the nodes that
        # built them first. The state is read here, on the event loop; threads get plain data.
        cycle = self.node.log.state.cycle(job["cycle_id"])
        needed = decisions.staging_artifacts(cycle, job["cpv"]) if cycle is not None else []
        for attempt in range(5):  # the builder of a dependency may be restarting: a moment
            missing = await self.node.ensure_local(needed)
            if not missing:
                break
            if attempt == 4:
                raise RuntimeError(f"dependencies not fetchable from any node: "
                                   f"{', '.join(missing[:5])}")
            log.info("waiting for %d dependencies of %s to be fetchable: %s", len(missing),
                     job["cpv"], ", ".join(missing[:5]))
            await asyncio.sleep(2.0 * (attempt + 1))
        refs = [PackageRef.of(a) for a in needed]
        staging = await asyncio.to_thread(self.node.binhost.staging, job["profile"], refs,
                                          workdir / "staging")
        return await builder.build(profile, job["cpv"], staging, workdir / "env", log_path,
                                   cores=int(lease["cores"]), timeout_s=self.cfg.build.timeout_s,
                                   signing_env=self.node.signing_env,
                                   build_id=int(lease["build_id"]))

    async def _heartbeat(self, fence: int, build: asyncio.Task[Any],
                         lost: asyncio.Event) -> None:
        """Renew the lease; if the state says it is gone, stop the build (its result would be
        rejected anyway: the job was expired, reset or handed to another node)."""
        while True:
            await asyncio.sleep(self.cfg.build.heartbeat_s)
            try:
                result = await self.node.submit(command(
                    "heartbeat", node_id=self.cfg.node.node_id, fence=fence,
                    lease_ttl_s=self.cfg.build.lease_ttl_s), timeout=self.cfg.build.heartbeat_s * 2)
            except NoQuorum as exc:
                log.warning("heartbeat for lease %d not committed (%s); retrying", fence, exc)
                continue
            except Exception:
                log.exception("heartbeat for lease %d failed; retrying", fence)
                continue
            if not result.get("ok") and result.get("lost"):
                lost.set()
                build.cancel()
                return

    async def tree_drift(self, job: dict[str, Any]) -> str:
        """Why a finished build of a pinned cycle's job must not count ("" if it may): this
        node's tree is no longer the one the cycle is pinned to, so the build may have read
        the edited one. The tree is read again now (and a change reported)."""
        cycle = self.node.log.state.cycle(job["cycle_id"])
        if cycle is None or not cycle.tree_version:
            return ""
        try:
            await self.node.refresh_tree_versions(min_interval_s=0.0)
        except NoQuorum as exc:  # read, but not reported: the next look reports it
            log.warning("reporting the tree after building %s: %s", job["cpv"], exc)
        except Exception as exc:  # the build cannot be vouched for: hand it back, say why
            log.exception("reading the tree after building %s failed", job["cpv"])
            return f"the portage tree could not be read after the build ({exc}); requeued"
        now = self.node.tree_read.get(cycle.profile)
        if now == cycle.tree_version:
            return ""
        return (f"the portage tree for {cycle.profile} changed during the build (cycle pinned "
                f"to {cycle.tree_version}, now {now}); requeued for a node at that version")

    async def _report(self, job: dict[str, Any], fence: int, result: builder.BuildResult,
                      log_path: Path, not_run: bool = False, tree_changed: bool = False) -> None:
        store = self.node.store
        log_obj = await asyncio.to_thread(store.put_file, log_path) if log_path.exists() else None
        artifact = None
        if result.ok and result.gpkg is not None:
            obj = await asyncio.to_thread(store.put_file, result.gpkg)
            artifact = {"sha256": obj.sha256, "size": obj.size}
        cmd = command(
            "complete", node_id=self.cfg.node.node_id, fence=fence, cycle_id=job["cycle_id"],
            cpv=job["cpv"], success=artifact is not None, duration_s=result.duration_s,
            log_sha256=log_obj.sha256 if log_obj else None, artifact=artifact,
            error=result.error, not_run=not_run,
            **({"tree_changed": True} if tree_changed else {}))
        while True:  # the same rid every time: applied once, however often it is sent
            try:
                outcome = await self.node.submit(cmd)
                break
            except NoQuorum as exc:
                log.warning("reporting %s: %s; retrying", job["cpv"], exc)
        if outcome.get("ok"):
            outcome_word = "built" if artifact else "handed back" if tree_changed else "FAILED"
            log.info("%s %s in %.1fs", job["cpv"], outcome_word, result.duration_s)
        else:
            log.warning("completion of %s rejected: %s", job["cpv"], outcome.get("error"))
