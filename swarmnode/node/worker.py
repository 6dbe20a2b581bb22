"""The builder side of a node: claim the best ready job, build it, heartbeat, report.

All scheduling decisions are the state machine's; this loop only asks ("claim"), keeps its
lease alive and reports the outcome with the lease's fencing id. If a heartbeat says the lease
is lost (expired and handed to someone else), the build is killed and its result dropped.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmnode.binhost import PackageRef
from swarmnode.node.commands import command
from swarmnode.portage import builder

if TYPE_CHECKING:
    from swarmnode.node.runtime import Node

log = logging.getLogger(__name__)


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
    def free_cores(self) -> int:
        used = sum(b.cores for b in self.running.values())
        return max(0, self.cfg.node.cores - used)

    def can_claim(self) -> bool:
        """Worth proposing a claim: a free build slot, free cores, and a ready job."""
        if len(self.running) >= self.cfg.build.max_parallel_jobs:
            return False
        if self.free_cores() < 1:
            return False
        # Only ask the log when a job of ours is ready: a refused claim still costs a
        # replicated command. The state machine makes the real decision.
        state = self.node.log.state
        return any(c.profile in self.cfg.profiles and c.ready > 0
                   for c in state.active_cycles())

    async def run(self) -> None:
        while True:
            try:
                while self.can_claim():
                    result = await self.node.submit(command(
                        "claim", node_id=self.cfg.node.node_id, free_cores=self.free_cores(),
                        lease_ttl_s=self.cfg.build.lease_ttl_s))
                    job = result.get("job") if result.get("ok") else None
                    if not job:
                        break
                    self._start(job, result["lease"])
            except Exception:  # keep the worker alive; the error is logged with its cause
                log.exception("worker: claiming failed")
            await self._idle()

    async def _idle(self) -> None:
        """Wait until the state changes, a build slot frees up, or poll_s passes."""
        freed = asyncio.create_task(self._slot_freed.wait())
        changed = asyncio.create_task(self.node.log.wait_changed(self.cfg.build.poll_s))
        await asyncio.wait({freed, changed}, return_when=asyncio.FIRST_COMPLETED)
        freed.cancel()
        changed.cancel()
        self._slot_freed.clear()

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
                log.exception("build of %s could not run", cpv)
                result = builder.BuildResult(False, None, log_path, 0.0,
                                             f"the node could not run the build: {exc}")
            finally:
                beat.cancel()
            await self._report(job, fence, result, log_path)
        finally:
            if not self.cfg.build.keep_build_roots:
                await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _build(self, job: dict[str, Any], profile: Any, workdir: Path, log_path: Path,
                     lease: dict[str, Any]) -> builder.BuildResult:
        # Everything the cycle has so far is what dependencies install from. The state is read
        # here, on the event loop; the thread only links files and writes the index.
        cycle = self.node.log.state.cycle(job["cycle_id"])
        refs = [PackageRef.of(a) for a in cycle.artifacts()] if cycle is not None else []
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
                    lease_ttl_s=self.cfg.build.lease_ttl_s))
            except Exception:
                log.exception("heartbeat for lease %d failed; retrying", fence)
                continue
            if not result.get("ok") and result.get("lost"):
                lost.set()
                build.cancel()
                return

    async def _report(self, job: dict[str, Any], fence: int, result: builder.BuildResult,
                      log_path: Path) -> None:
        store = self.node.store
        log_obj = await asyncio.to_thread(store.put_file, log_path) if log_path.exists() else None
        artifact = None
        if result.ok and result.gpkg is not None:
            obj = await asyncio.to_thread(store.put_file, result.gpkg)
            artifact = {"sha256": obj.sha256, "size": obj.size}
        outcome = await self.node.submit(command(
            "complete", node_id=self.cfg.node.node_id, fence=fence, cycle_id=job["cycle_id"],
            cpv=job["cpv"], success=artifact is not None, duration_s=result.duration_s,
            log_sha256=log_obj.sha256 if log_obj else None, artifact=artifact,
            error=result.error))
        if outcome.get("ok"):
            log.info("%s %s in %.1fs", job["cpv"], "built" if artifact else "FAILED",
                     result.duration_s)
        else:
            log.warning("completion of %s rejected: %s", job["cpv"], outcome.get("error"))
