"""One node's runtime: its disk layout, its Raft replica and the loops that run on it.

Before the loops start, the node finds its swarm (`_find_swarm`): its saved membership after a
restart, the static peer list, or discovery (mDNS / Tailscale candidates and the join
handshake, see swarmnode/discovery/), and opens its Raft replica as a voter or as a non-voting
worker.

Loops (each a thin I/O shell around `decisions` and `membership`):
  worker       claims and builds while cores are free (worker.py)
  maintenance  on the leader only: node up/down from Raft connectivity (voters) and API probes
               (workers, `prober`), lease expiry
  voters       on the leader only: the voter policy and pysyncobj's voter set (membership.py)
  roles        switches this node's replica between voter and worker when its role changes
  stale_vote   a voter the swarm dropped while it was down finds out from its peers (membership)
  replicator   copies under-replicated artifacts this node is chosen for
  publisher    makes the binhost serve the production release, fetching what it lacks
  syncer       runs `swarmnode sync` requests: a real repository sync, then reports the tree
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from pysyncobj.encryptor import getEncryptor

from swarmnode.binhost import Binhost, PackageRef, Publication
from swarmnode.config import Config
from swarmnode.consensus.raft import NoQuorum, RaftLog, RaftSettings
from swarmnode.discovery.handshake import Challenges, Identity
from swarmnode.discovery.joiner import Joiner
from swarmnode.discovery.lan import Lan
from swarmnode.node import decisions, membership
from swarmnode.node.commands import command
from swarmnode.node.peers import PeerFetcher
from swarmnode.node.worker import Worker
from swarmnode.errors import UserError
from swarmnode.portage import history, signing
from swarmnode.portage import sync as portage_sync
from swarmnode.state.records import NONVOTER, VOTER
from swarmnode.store import ArtifactStore

log = logging.getLogger(__name__)

GC_INTERVAL_S = 600.0  # how often the store is swept for unreferenced objects
GC_MIN_AGE_S = 3600.0  # younger objects are kept: their `complete` may still be in flight
STARTUP_CATCH_UP_S = 10.0  # the API waits this long for the replica to catch up at start
PROBE_TIMEOUT_S = 1.0  # the leader's liveness probe of a worker's API


def _endpoints(address: str) -> set[tuple[str, int]]:
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), proto=socket.IPPROTO_TCP)
    except (OSError, ValueError):
        return set()
    return {(str(info[4][0]), int(port)) for info in infos}


def without_self(self_address: str, peers: tuple[str, ...]) -> tuple[str, ...]:
    """Drop peers that are this node under another spelling (a hostname for its IP, say).

    Raft identifies a node by its address string, so such an alias would be a phantom voter
    that never answers and raises the quorum. The config is fixed by the user; this only
    keeps the mistake from breaking the cluster, and says so.
    """
    mine = _endpoints(self_address)
    local_ips = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    own_port = int(self_address.rpartition(":")[2])
    kept = []
    for peer in peers:
        ends = _endpoints(peer)
        if ends and (ends & mine or all(ip in local_ips and port == own_port
                                        for ip, port in ends)):
            log.warning("cluster.peers: %s is this node (node.raft is %s); ignoring it — list "
                        "every node under one spelling", peer, self_address)
            continue
        kept.append(peer)
    return tuple(kept)


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

    @property
    def membership(self) -> Path:
        """This node's role and the voters it last knew: how it reopens Raft after a restart."""
        return self.state / "membership.json"


class Node:
    """Owns the state log, the store and the binhost, and runs the node's loops."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = NodePaths(config.node.data_dir)
        for p in (self.paths.state, self.paths.builds, self.paths.work):
            p.mkdir(parents=True, exist_ok=True)
        self.log: RaftLog  # opened by start(), once the node knows its swarm
        self.ready = asyncio.Event()  # set when the replica is open and caught up
        self.lan = Lan(config)
        self.challenges = Challenges()
        self.joiner: Joiner | None = None
        self.discovered_via = "static"
        self.probes: dict[str, bool] = {}  # the leader's last API probe of each worker
        self.store = ArtifactStore(self.paths.store)
        self.fetcher = PeerFetcher(self.store, config.cluster.secret)
        self.registered = asyncio.Event()
        self.liveness = decisions.LivenessTracker(config.cluster.down_after_s)
        self._tree_checked = -1e9
        self._tree_read_s = 0.0        # what the last read of the tree versions took
        self.tree_read: dict[str, str] = {}  # what it found (reported unless a commit failed)
        self.binhost = Binhost(self.paths.binhost, self.store)
        self.key = signing.ensure_signing_key(self.paths.gpg, name=f"swarmnode {config.cluster.name}")
        self.signing_env = signing.builder_env(self.key)
        self.public_key = signing.export_public_key(self.key)  # served to clients as is
        self.worker = Worker(self)
        self.started = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self.publish_errors: dict[str, str] = {}
        self._reconcile_lock = threading.Lock()  # finalize and the publisher loop both call it

    @property
    def node_id(self) -> str:
        return self.config.node.node_id

    async def submit(self, cmd: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        return await self.log.submit(cmd, timeout)

    async def submit_until_committed(self, cmd: dict[str, Any], what: str) -> dict[str, Any]:
        """Submit until a quorum commits it (same rid every time): for what a node must get
        through, like registering, whatever the cluster is going through meanwhile."""
        while True:
            try:
                return await self.submit(cmd)
            except NoQuorum as exc:
                log.warning("%s: %s; retrying", what, exc)

    async def barrier(self, timeout: float = 15.0) -> None:
        """Return once the local replica has applied everything committed before the call:
        a read after it is current (a read through the log)."""
        await self.submit(command("barrier"), timeout)

    async def submit_all(self, commands: list[decisions.Command]) -> list[dict[str, Any]]:
        return [await self.submit(command(op, **fields)) for op, fields in commands]

    # -- finding the swarm ---------------------------------------------------------------------
    def _raft_settings(self, voter: bool, voters: set[str] | list[str]) -> RaftSettings:
        me = self.config.node.raft_address
        return RaftSettings(
            self_address=me,
            partners=without_self(me, tuple(sorted(set(voters) - {me}))),
            data_dir=self.paths.state,
            # The cluster name salts the key: two clusters sharing a secret still stay apart.
            password=f"{self.config.cluster.name}\0{self.config.cluster.secret}",
            voter=voter)

    def _peer_urls(self) -> list[str]:
        """Where the other nodes' APIs are, as the replicated state says."""
        return sorted({n.url for n in self.log.state.nodes()
                       if n.url and n.node_id != self.node_id and n.role != "removed"})

    def _membership_record(self) -> dict[str, Any]:
        # peers: kept for after a restart, when the replica is empty until a leader talks to
        # it — a voter the swarm dropped meanwhile asks them (_stale_vote).
        return {"role": VOTER if self.log.is_voter else NONVOTER,
                "voters": sorted(self.log.members()), "discovery": self.discovered_via,
                "peers": self._peer_urls() or (self._load_membership() or {}).get("peers", [])}

    def _save_membership(self) -> None:
        record = self._membership_record()
        tmp = self.paths.membership.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.paths.membership)

    def _load_membership(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.paths.membership.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("role") not in (VOTER, NONVOTER):
            return None
        return record

    async def _find_swarm(self) -> RaftSettings:
        """How to open Raft: as before a restart, from the static peer list, or by joining
        (or, for the first node, starting) the swarm found on the LAN / over Tailscale."""
        cfg = self.config
        saved = self._load_membership()
        if saved is not None:
            self.discovered_via = str(saved.get("discovery", "static"))
            voters = {str(v) for v in saved.get("voters", [])} | set(cfg.cluster.peers)
            return self._raft_settings(saved["role"] == VOTER, voters)
        had_raft = (self.paths.state / "raft.journal").exists()  # a data dir from before roles
        if had_raft or cfg.cluster.peers or not self.lan.enabled:
            return self._raft_settings(True, set(cfg.cluster.peers))
        self.joiner = Joiner(Identity(cfg.node.node_id, cfg.node.raft_address,
                                      cfg.node.advertise_url, cfg.node.cores),
                             cfg.cluster.secret, cfg.cluster.name, cfg.discovery.bootstrap_wait_s)
        log.info("no peer list and no Raft state: looking for swarm %r (mDNS%s)",
                 cfg.cluster.name, ", Tailscale" if cfg.discovery.tailscale else "")
        outcome = await self.joiner.find_swarm(self.lan.candidates, self.lan.changed)
        if outcome is None:
            log.warning("no swarm %r found: starting it (other nodes join this one)",
                        cfg.cluster.name)
            self.discovered_via = "mdns" if self.lan.use_mdns else "tailscale"
            return self._raft_settings(True, set())
        self.discovered_via = "tailscale" if outcome.url in self.lan.tailscale_urls else "mdns"
        log.info("admitted to swarm %r by %s as %s; voters: %s", cfg.cluster.name,
                 outcome.peer_id, outcome.role, ", ".join(outcome.voters))
        return self._raft_settings(outcome.role == VOTER, set(outcome.voters))

    def joining_status(self) -> str:
        if self.joiner is not None:
            return self.joiner.state
        return "opening the Raft replica and catching up"

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.lan.start(member=self._load_membership() is not None,
                             key=self.key.fingerprint)
        self.log = RaftLog(await self._find_swarm())
        self.log.start()  # replays the dump and journal, then joins the cluster
        self._save_membership()
        if not await self.log.wait_ready(STARTUP_CATCH_UP_S):
            log.warning("no Raft quorum yet (%s): serving possibly stale state until one forms",
                        self.log.quorum_hint())
        self.binhost.recover()
        # Builds of a previous life (killed with -9) may still run: stop them, wipe their roots.
        # Their leases expire and the jobs are built again.
        killed = await self.worker.clear_build_roots()
        if killed:
            log.warning("killed %d processes of builds left from before a restart", killed)
        self._tasks = [
            asyncio.create_task(self._join(), name="join"),
            asyncio.create_task(self.worker.run(), name="worker"),
            asyncio.create_task(self._maintenance(), name="maintenance"),
            asyncio.create_task(self._publisher(), name="publisher"),
            asyncio.create_task(self._replicator(), name="replicator"),
            asyncio.create_task(self._syncer(), name="syncer"),
            asyncio.create_task(self._roles(), name="roles"),
            asyncio.create_task(self._prober(), name="prober"),
            asyncio.create_task(self._voters(), name="voters"),
            asyncio.create_task(self._stale_vote(), name="stale_vote"),
        ]
        self.ready.set()

    async def _adopt_swarm_key(self) -> None:
        """Agree on one signing key: offer ours; if another node's offer won, import that one.

        The secret half travels encrypted with the cluster secret (Fernet, the same key
        derivation pysyncobj uses for Raft traffic).
        """
        fernet = getEncryptor(self.config.cluster.secret)
        secret = await asyncio.to_thread(signing.export_secret_key, self.key)
        cmd = command("set_signing_key", fingerprint=self.key.fingerprint,
                      public_key=self.public_key,
                      secret=fernet.encrypt(secret.encode()).decode())
        result = await self.submit_until_committed(cmd, "agreeing on the signing key")
        if result["fingerprint"] == self.key.fingerprint:
            return
        armored = fernet.decrypt(result["secret"].encode()).decode()
        self.key = await asyncio.to_thread(signing.import_secret_key, self.paths.gpg, armored,
                                           result["fingerprint"])
        self.signing_env = signing.builder_env(self.key)
        self.public_key = result["public_key"]
        log.info("signing with the swarm's key %s", self.key.fingerprint)

    async def _join(self) -> None:
        """Register with the swarm (retried until a quorum answers: the API is up meanwhile)."""
        cfg = self.config
        versions = await asyncio.to_thread(portage_sync.tree_versions, cfg.profiles.values())
        commands = [
            command("configure", breaker_threshold=cfg.cluster.breaker_threshold,
                    breaker_cooldown_s=cfg.cluster.breaker_cooldown_s,
                    fail_nodes=cfg.cluster.fail_nodes, keep_releases=cfg.keep_releases,
                    replicas=cfg.cluster.replicas, max_voters=cfg.cluster.max_voters,
                    voter_grace_s=cfg.cluster.voter_grace_s,
                    lost_after_s=cfg.cluster.lost_after_s),
            command("register_node", node_id=cfg.node.node_id, url=cfg.node.advertise_url,
                    raft=cfg.node.raft_address, cores=cfg.node.cores,
                    profiles=sorted(cfg.profiles), sweeper=cfg.node.sweeper,
                    tree_versions=versions, voter=self.log.is_voter,
                    discovery=self.discovered_via, slots=cfg.build.max_parallel_jobs,
                    site=cfg.node.site),
            command("tree_report", node_id=cfg.node.node_id, tree_versions=versions),
        ]
        await self._adopt_swarm_key()
        for cmd in commands:
            await self.submit_until_committed(cmd, "joining the swarm")
        self.registered.set()
        await self.lan.set_member(self.key.fingerprint)
        log.info("node %s registered (Raft %s, tree %s)", cfg.node.node_id,
                 cfg.node.raft_address, versions)
        await self._learn_host_history()

    async def _learn_host_history(self) -> None:
        """Build times this host recorded in its emerge log (``build.emerge_log``): estimates
        for packages the swarm never built, so even its first cycle is scheduled by real
        durations (see docs/operations.md). Only packages this replica does not know yet
        are sent (retried until a quorum commits them); a host without a log sends nothing,
        and an unreadable one costs a warning."""
        path, cfg = self.config.build.emerge_log, self.config
        if path is None or not path.is_file():
            return
        try:
            walls = history.wall_seconds(await asyncio.to_thread(history.read_log, path))
        except UserError as exc:
            log.warning("not learning build times from the emerge log: %s", exc)
            return
        unknown = {k: w for k, w in walls.items() if k not in self.log.state.durations}
        jobs = cfg.build.emerge_log_jobs or cfg.node.cores
        added = 0
        for batch in history.batches(unknown):  # retried while there is no quorum
            result = await self.submit_until_committed(command(
                "learn_history", durations=history.core_seconds(batch, jobs),
                source=f"{path} on {cfg.node.node_id}"), "learning the emerge log")
            added += int(result.get("added", 0))
        if unknown:
            log.info("learned the build times of %d packages from %s (built with -j%d)",
                     added, path, jobs)

    async def stop(self) -> None:
        for build in list(self.worker.running.values()):
            build.task.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *(b.task for b in self.worker.running.values()),
                             return_exceptions=True)
        await self.fetcher.close()
        await self.lan.close()
        if hasattr(self, "log"):
            self.log.close()
        signing.stop_gpg_agent(self.paths.gpg)  # portage's signing started one for our key

    # -- the leader's maintenance: liveness, lease expiry, breaker cool-down -----------------
    def reachable_nodes(self) -> dict[str, bool]:
        """Registered node id → reachable: voters by their Raft connection to this node,
        workers (which hold no connection the leader can name) by the last API probe."""
        members = self.log.members()
        return {n.node_id: (n.node_id == self.node_id or members.get(n.raft, False)
                            or (n.raft not in members and self.probes.get(n.node_id, False)))
                for n in self.log.state.nodes() if n.raft and n.role != "removed"}

    async def _prober(self) -> None:
        """On the leader: probe every worker's API twice a second (liveness of non-voters)."""
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def probe(node_id: str, url: str) -> None:
                try:
                    async with session.get(f"{url}/api/v1/ping") as resp:
                        body = await resp.json(content_type=None)
                        self.probes[node_id] = (resp.status == 200
                                                and body.get("node_id") == node_id)
                except Exception:  # any failure (refused, timeout, garbage) = not reachable
                    self.probes[node_id] = False

            while True:
                await asyncio.sleep(0.5)
                if not self.log.is_leader:
                    continue
                members = self.log.members()
                targets = [(n.node_id, n.url) for n in self.log.state.nodes()
                           if n.url and n.raft not in members and n.node_id != self.node_id]
                await asyncio.gather(*(probe(i, u) for i, u in targets))

    async def _voters(self) -> None:
        """On the leader: the voter policy, then pysyncobj's voter set towards it. Its own loop,
        so a slow membership change never delays noticing a dead node."""
        while True:
            await asyncio.sleep(0.5)
            if not self.log.is_leader:
                continue
            try:
                await self._membership()
            except Exception as exc:  # no quorum, a change still in flight …: next round
                log.info("membership: %s", exc)

    async def _membership(self) -> None:
        """The leader's voter policy, then one pysyncobj membership change towards it."""
        state = self.log.state
        for op, fields in membership.role_commands(state, time.time(), self.node_id):
            result = await self.submit(command(op, **fields), timeout=5.0)
            if result.get("changed"):
                log.warning("node %s is now a %s: %s", fields["node_id"], fields["role"],
                            fields["reason"])
        changes = membership.raft_changes(self.log.state, self.log.members(), time.time())
        if changes:
            action, address = changes[0]
            await self.log.change_membership(action, address, timeout=5.0)
            log.warning("Raft voters: %s %s", "added" if action == "add" else "removed", address)

    async def _roles(self) -> None:
        """Follow this node's role: reopen the replica as a voter once the leader added us to
        the voter set, or as a worker once we were demoted (the leader then drops us); keep
        membership.json current meanwhile (before registering too: the peers it names are
        what a restart goes on)."""
        me_raft = self.config.node.raft_address
        while True:
            await self.log.wait_changed(1.0)
            me = self.log.state.node(self.node_id) if self.registered.is_set() else None
            members = self.log.members()
            if me is not None and self.log.is_voter and me.role == NONVOTER:
                await self._reopen(voter=False, reason=me.role_reason)
            elif (me is not None and not self.log.is_voter and me.role == VOTER
                  and me_raft in members):
                await self._reopen(voter=True, reason=me.role_reason)
            elif self._membership_record() != self._load_membership():
                self._save_membership()

    async def _stale_vote(self) -> None:
        """Reopen as a worker if this node votes but the swarm no longer counts it (see
        membership.stale_vote): asked only after STALE_VOTE_AFTER_S without a leader."""
        me = self.config.node.raft_address
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S * 3)
        leaderless_since: float | None = None
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(2.0)
                if not self.log.is_voter or self.log.leader_address is not None:
                    leaderless_since = None
                    continue
                now = time.monotonic()
                leaderless_since = leaderless_since or now
                if now - leaderless_since < membership.STALE_VOTE_AFTER_S:
                    continue
                saved = self._load_membership() or {}
                urls = {*self._peer_urls(), *saved.get("peers", []),
                        *(c.url for c in self.lan.candidates())}
                views = await asyncio.gather(*(self._peer_view(session, u) for u in sorted(urls)))
                voters = membership.stale_vote(me, [v for v in views if v is not None])
                if voters is not None:
                    await self._reopen(False, "the swarm no longer counts this node as a voter "
                                       "(demoted while it was down); its replica starts afresh",
                                       set(voters), wipe=True)
                    leaderless_since = None

    @staticmethod
    async def _peer_view(session: aiohttp.ClientSession, url: str) -> membership.PeerView | None:
        try:
            async with session.get(f"{url}/api/v1/status") as resp:
                body = await resp.json(content_type=None)
            c = body["cluster"]
            return membership.PeerView(bool(c["has_quorum"]), c.get("leader_address"),
                                       tuple(str(v) for v in c["voters"]))
        except Exception:  # unreachable, not serving, an older version: proves nothing
            return None

    async def _reopen(self, voter: bool, reason: str, voters: set[str] | None = None,
                      wipe: bool = False) -> None:
        voters = set(self.log.members()) if voters is None else voters
        self.log.close()
        if wipe:
            RaftLog.wipe(self.paths.state)
        self.log = RaftLog(self._raft_settings(voter, voters))
        self.log.start()
        self._save_membership()
        log.warning("this node is now a %s (%s)", "voter" if voter else "non-voting worker",
                    reason)
        await self.log.wait_ready(STARTUP_CATCH_UP_S)

    async def _maintenance(self) -> None:
        was_leader = False
        while True:
            await asyncio.sleep(min(0.5, self.config.build.lease_ttl_s / 8))
            if not self.log.is_leader:
                was_leader = False
                continue
            if not was_leader:  # new leader: every node gets a fresh grace period
                self.liveness.reset()
                was_leader = True
            verdict = self.liveness.observe(self.reachable_nodes(), time.monotonic())
            try:
                for cmd in decisions.maintenance_commands(self.log.state, time.time(), verdict):
                    result = await self.submit(command(cmd[0], **cmd[1]), timeout=5.0)
                    for item in result.get("expired", []) + result.get("revoked", []):
                        log.warning("lease %s of %s on %s ended (%s); job requeued", item[3],
                                    item[1], item[2], cmd[0])
                    if result.get("went_down") or result.get("came_up"):
                        log.warning("nodes down: %s, up again: %s", result.get("went_down"),
                                    result.get("came_up"))
                    for cycle_id, cpv, requeued in result.get("rebuild", []):
                        log.warning("every copy of %s (cycle %s) is on a down node: building "
                                    "it again%s", cpv, cycle_id,
                                    f"; {', '.join(requeued)} requeued" if requeued else "")
            except Exception as exc:  # lost leadership mid-way, no quorum …: next round
                log.info("maintenance: %s", exc)

    # -- replication: copy artifacts the swarm is short of ------------------------------------
    async def _replicator(self) -> None:
        """Copy what this node is chosen for. A copy that failed is retried with a growing
        delay (1 s … 30 s) until its holders change: the loop wakes on every commit, and
        a dead holder must not be asked dozens of times a second."""
        await self.registered.wait()
        backoff = decisions.FetchBackoff()
        while True:
            chosen = decisions.replication_fetches(self.log.state, self.node_id)
            todo = backoff.due(chosen, time.monotonic())
            if todo:
                got = set(await self.fetch_all(todo))
                backoff.record(todo, got, time.monotonic())
            await self.log.wait_changed(2.0)

    def peer_urls(self, node_ids: tuple[str, ...] | list[str]) -> list[str]:
        found = []
        for node_id in node_ids:
            node = self.log.state.node(node_id)
            if node is not None and node_id != self.node_id and node.url:
                found.append(node.url)
        return found

    async def fetch_all(self, todo: list[decisions.Fetch]) -> list[str]:
        """Fetch objects from their holders (a few at a time) and record the new copies."""
        sem = asyncio.Semaphore(4)

        async def one(item: decisions.Fetch) -> str | None:
            async with sem:
                ok = await self.fetcher.fetch(item, self.peer_urls(item.sources))
                return item.sha256 if ok else None

        got = [sha for sha in await asyncio.gather(*(one(t) for t in todo)) if sha]
        try:
            await self.submit_all(decisions.stored_commands(self.node_id, got))
        except Exception as exc:  # recorded on the next round
            log.info("recording fetched copies failed: %s", exc)
        missing = [t.cpv for t in todo if t.sha256 not in got]
        if missing:
            log.info("could not fetch %d objects yet: %s", len(missing), ", ".join(missing[:5]))
        return got

    async def ensure_local(self, artifacts: list[Any]) -> list[str]:
        """Make sure this node's store has these artifacts; returns the cpvs still missing."""
        have = await asyncio.to_thread(lambda: {a.sha256 for a in artifacts
                                                if self.store.has(a.sha256)})
        todo = decisions.missing_for(self.log.state, artifacts, have)
        if not todo:
            return []
        got = set(await self.fetch_all(todo))
        return [t.cpv for t in todo if t.sha256 not in got]

    async def refresh_tree_versions(self, min_interval_s: float | None = None) -> None:
        """Re-read this node's tree versions into ``tree_read`` and report them if they
        changed, unless they were read less than ``min_interval_s`` ago. ``None`` is a look in
        the background: at most every 10 s, and every 10× what the last read took (a stat walk
        of a rsync'd Gentoo tree takes seconds; it should cost at most a tenth of a core)."""
        since = time.monotonic() - self._tree_checked
        if since < (max(10.0, 10 * self._tree_read_s) if min_interval_s is None
                    else min_interval_s):
            return
        started = self._tree_checked = time.monotonic()
        versions = await asyncio.to_thread(portage_sync.tree_versions,
                                           self.config.profiles.values())
        self._tree_read_s = time.monotonic() - started
        self.tree_read = versions
        me = self.log.state.node(self.node_id)
        if me is not None and me.tree_versions != versions:
            log.info("portage tree changed: %s", versions)
            await self.submit(command("tree_report", node_id=self.node_id,
                                      tree_versions=versions, sync_id=me.sync_id))

    # -- `swarmnode sync`: a real repository sync, then report the tree -----------------------
    async def _syncer(self) -> None:
        await self.registered.wait()
        me = self.log.state.node(self.node_id)
        done = me.sync_id if me is not None else ""
        while True:
            request = self.log.state.sync.get("id", "")
            if request and request != done:
                await self.run_sync(request)
                done = request
            await self.log.wait_changed(5.0)

    async def run_sync(self, sync_id: str) -> None:
        errors, versions = [], {}
        for profile in self.config.profiles.values():
            workdir = self.paths.work / f"sync-{profile.name}"
            result = await asyncio.to_thread(portage_sync.sync_profile, profile, workdir)
            versions[profile.name] = result.tree_version
            if result.error:
                errors.append(result.error)
                log.error("sync of %s failed: %s", profile.name, result.error)
            else:
                log.info("synced %s: tree %s", profile.name, result.tree_version)
        cmd = command("tree_report", node_id=self.node_id, tree_versions=versions,
                      sync_id=sync_id, error="; ".join(errors))
        await self.submit_until_committed(cmd, "reporting the synced tree")

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

        The release is materialised first: artifacts this node lacks are fetched from their
        holders, and only then is the binhost switched. A profile that cannot be published
        (an artifact nobody reachable has) keeps serving its previous release; the error is
        shown by `status` and retried.
        """
        state = self.log.state
        wanted: dict[str, tuple[Publication, set[str]]] = {}
        for profile in self.config.profiles:
            prod = state.production(profile)
            release = state.release(prod.release_id) if prod is not None else None
            if prod is None or release is None:
                continue
            packages = [release.packages[c] for c in sorted(release.packages)]
            if self.binhost.current(profile) != (prod.release_id, prod.timestamp):
                missing = await self.ensure_local(packages)
                if missing:
                    self.publish_errors[profile] = (
                        f"release {release.id}: {len(missing)} packages not yet fetched from "
                        f"other nodes ({', '.join(missing[:5])}); retrying")
                    continue
            refs = tuple(PackageRef.of(a) for a in packages)
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
