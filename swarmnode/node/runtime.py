"""One node's runtime: its disk layout, its state log and the loops that run on it."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmnode.binhost import Binhost, PackageRef, Publication
from swarmnode.config import Config
from swarmnode.consensus import ReplicatedLog
from swarmnode.consensus.local import LocalLog
from swarmnode.node.commands import command
from swarmnode.node.worker import Worker
from swarmnode.portage import builder, signing
from swarmnode.store import ArtifactStore

log = logging.getLogger(__name__)

GC_INTERVAL_S = 600.0  # how often the store is swept for unreferenced objects
GC_MIN_AGE_S = 3600.0  # younger objects are kept: their `complete` may still be in flight


@dataclass(frozen=True)
class NodePaths:
    """Where a node keeps things under its data dir."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def binhost(self) -> Path:
        return self.root / "binhost"

    @property
    def builds(self) -> Path:
        return self.root / "builds"

    @property
    def gpg(self) -> Path:
        return self.root / "gpg"

    @property
    def work(self) -> Path:
        return self.root / "work"


class Node:
    """Owns the state log, the store and the binhost, and runs the node's loops."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = NodePaths(config.node.data_dir)
        for p in (self.paths.state, self.paths.builds, self.paths.work):
            p.mkdir(parents=True, exist_ok=True)
        self.log: ReplicatedLog = LocalLog(self.paths.state)
        self.store = ArtifactStore(self.paths.store)
        self.binhost = Binhost(self.paths.binhost, self.store)
        self.key = signing.ensure_signing_key(self.paths.gpg, name=f"swarmnode {config.cluster.name}")
        self.signing_env = signing.builder_env(self.key)
        self.public_key = signing.export_public_key(self.key)  # served to clients as is
        self.worker = Worker(self)
        self.started = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self.publish_errors: dict[str, str] = {}
        self._reconcile_lock = threading.Lock()  # finalize and the publisher loop both call it

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return await self.log.submit(cmd)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.binhost.recover()
        # Builds of a previous life (killed with -9) may still run: stop them, wipe their roots.
        # Their leases expire and the jobs are built again.
        killed = await asyncio.to_thread(builder.kill_leftover_builds, self.paths.builds)
        if killed:
            log.warning("killed %d processes of builds left from before a restart", killed)
        await asyncio.to_thread(shutil.rmtree, self.paths.builds, True)
        self.paths.builds.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        await self.submit(command(
            "configure", breaker_threshold=cfg.cluster.breaker_threshold,
            breaker_cooldown_s=cfg.cluster.breaker_cooldown_s, fail_nodes=cfg.cluster.fail_nodes,
            keep_releases=cfg.keep_releases))
        await self.submit(command(
            "register_node", node_id=cfg.node.node_id, url=cfg.node.advertise_url,
            cores=cfg.node.cores, profiles=sorted(cfg.profiles), sweeper=cfg.node.sweeper,
            tree_versions={}))
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="worker"),
            asyncio.create_task(self._maintenance(), name="maintenance"),
            asyncio.create_task(self._publisher(), name="publisher"),
        ]

    async def stop(self) -> None:
        for build in list(self.worker.running.values()):
            build.task.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *(b.task for b in self.worker.running.values()),
                             return_exceptions=True)
        self.log.close()
        signing.stop_gpg_agent(self.paths.gpg)  # portage's signing started one for our key

    # -- the leader's maintenance: expire leases, cool down breakers --------------------------
    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.build.lease_ttl_s / 4))
            if not self.log.is_leader:
                continue
            now = time.time()
            if self.log.state.needs_maintenance(now):
                try:
                    result = await self.submit(command("expire"))
                    for item in result.get("expired", []):
                        log.warning("lease expired: %s", item)
                except Exception:
                    log.exception("maintenance: expire failed")

    # -- make the binhost serve what the state says is in production -------------------------
    # The state is read on the event loop (where commands are applied, so it never changes
    # under the reader); only plain data goes to the threads that do the file work.
    async def _publisher(self) -> None:
        last_gc = 0.0
        while True:
            await self.reconcile_binhost()
            if time.monotonic() - last_gc >= GC_INTERVAL_S:
                last_gc = time.monotonic()
                await self.collect_garbage()
            await self.log.wait_changed(5.0)

    async def collect_garbage(self, min_age_s: float = GC_MIN_AGE_S) -> int:
        """Delete store objects no kept release or cycle names (pruned releases' packages,
        old logs), so a node's disk does not grow without bound."""
        keep = self.log.state.referenced_objects()

        def sweep() -> list[str]:
            with self._reconcile_lock:  # never while a release is being materialised
                removed = self.store.remove_unreferenced(keep, min_age_s)
                self.store.cleanup_tmp()
            return removed

        removed = await asyncio.to_thread(sweep)
        if removed:
            log.info("store: removed %d objects no release or cycle uses", len(removed))
        return len(removed)

    async def reconcile_binhost(self) -> None:
        """Publish every profile's production release locally and prune retired ones.

        A profile that cannot be published (e.g. an artifact missing from the store) keeps
        serving its previous release; the error is shown by `status` and retried.
        """
        state = self.log.state
        wanted: dict[str, tuple[Publication, set[str]]] = {}
        for profile in self.config.profiles:
            prod = state.production(profile)
            release = state.release(prod.release_id) if prod is not None else None
            if prod is not None and release is not None:
                refs = tuple(PackageRef.of(release.packages[c]) for c in sorted(release.packages))
                wanted[profile] = (Publication(prod.release_id, prod.timestamp, refs),
                                   {r.id for r in state.releases(profile)})
        await asyncio.to_thread(self._publish_all, wanted)

    def _publish_all(self, wanted: dict[str, tuple[Publication, set[str]]]) -> None:
        with self._reconcile_lock:
            for profile, (pub, keep) in wanted.items():
                try:
                    if self.binhost.current(profile) != (pub.release_id, pub.timestamp):
                        self.binhost.publish(profile, pub)
                        log.info("binhost %s now serves release %s (TIMESTAMP %d)", profile,
                                 pub.release_id, pub.timestamp)
                    self.binhost.prune(profile, keep)
                    self.publish_errors.pop(profile, None)
                except Exception as exc:  # logged, shown in status, retried on the next change
                    if self.publish_errors.get(profile) != str(exc):
                        log.error("publishing binhost %s failed: %s", profile, exc)
                    self.publish_errors[profile] = str(exc)
