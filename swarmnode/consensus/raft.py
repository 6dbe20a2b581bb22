"""The swarm state replicated by Raft (pysyncobj), driven from the node's asyncio loop.

Why it is shaped like this:

* **One thread.** pysyncobj runs with ``autoTick=False``; its sockets sit in an epoll set whose
  fd the event loop watches, plus a timer for Raft's timeouts. Every tick — and so every
  ``SwarmState.apply`` — runs on the event loop, where the API and the node's loops read the
  state, so a reader never sees a half-applied command and nothing needs a lock.
* **msgpack, encrypted.** A command is msgpack bytes handed to one replicated method; the
  snapshot ("full dump") is msgpack too. The cluster secret is pysyncobj's ``password``
  (Fernet): without it pysyncobj would unpickle whatever reaches its port, so it is never off.
* **Outcome unknown means retry.** Any failure of a replicated call (timeout, LEADER_CHANGED,
  UNKNOWN_OUTCOME …) is retried with the same bytes — the same ``rid`` — which the state
  machine deduplicates, so a command is applied at most once however often it is sent.
* A follower forwards commands to the leader (pysyncobj does this), so any node accepts any
  command; reads are local and :meth:`RaftLog.freshness` says how current they are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import SyncObjException

from swarmnode.consensus import pysyncobj_fixes
from swarmnode.errors import UserError
from swarmnode.state import SwarmState

log = logging.getLogger(__name__)

pysyncobj_fixes.install()

DUMP_FORMAT = 1
_FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}


class NoQuorum(UserError):
    """A replicated command could not be committed in time (no leader reachable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503)


@dataclass(frozen=True)
class RaftSettings:
    """Where this node is, who its peers are, and Raft's timings.

    ``leader_fallback_s`` is how long a leader cut off from the majority keeps calling itself
    leader (pysyncobj's default is 30 s); it must stay well below the lease TTL so a
    partitioned ex-leader stops acting (e.g. expiring leases) before its leases could matter.
    """

    self_address: str
    partners: tuple[str, ...]
    data_dir: Path
    password: str
    # False: a worker that does not vote (pysyncobj's read-only node). It receives every entry
    # from the leader and forwards commands like a follower, but it neither listens for Raft
    # nor counts towards a quorum, so a swarm of 50 still elects among a handful of voters.
    voter: bool = True
    election_min_s: float = 0.4
    election_max_s: float = 1.0
    append_period_s: float = 0.1
    connection_timeout_s: float = 2.0
    connection_retry_s: float = 0.5
    leader_fallback_s: float = 3.0
    compaction_entries: int = 5000
    compaction_time_s: float = 600.0
    attempt_timeout_s: float = 2.0


class _SwarmSyncObj(pysyncobj_fixes.RaftFixes, SyncObj):
    """pysyncobj's object: one replicated method carrying msgpack commands."""

    def __init__(self, owner: RaftLog, settings: RaftSettings, conf: SyncObjConf) -> None:
        self._owner = owner
        super().__init__(settings.self_address if settings.voter else None,
                         list(settings.partners), conf)

    @replicated
    def apply_packed(self, blob: bytes) -> dict[str, Any]:
        return self._owner._apply(blob)


class RaftLog:
    """The ReplicatedLog of a swarm node (see the module docstring)."""

    def __init__(self, settings: RaftSettings) -> None:
        self.settings = settings
        self.state = SwarmState()
        self.dir = settings.data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._changed = asyncio.Event()
        self._seen_applied = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._closed = False
        self.on_tick: list[Callable[[], None]] = []
        conf = self._syncobj_conf(password=settings.password, pollerType="epoll",
                                  journalFile=str(self.dir / "raft.journal"),
                                  fullDumpFile=str(self.dir / "raft.dump"), maxBindRetries=1)
        try:
            self._obj = _SwarmSyncObj(self, settings, conf)
        except SyncObjException:
            raise UserError(f"cannot listen for Raft on {settings.self_address}: is another "
                            "swarmnode running, or is node.raft wrong?") from None

    def _syncobj_conf(self, **os_parts: Any) -> SyncObjConf:
        """pysyncobj's configuration from the settings; ``os_parts`` add what touches the OS
        (poller, files, password) — the deterministic simulator gives its own there and shares
        the rest, so it runs the daemon's Raft timings and behaviour."""
        s = self.settings
        return SyncObjConf(
            autoTick=False,
            appendEntriesUseBatch=False,  # ~1 ms commits instead of ~100 ms batches
            raftMinTimeout=s.election_min_s,
            raftMaxTimeout=s.election_max_s,
            appendEntriesPeriod=s.append_period_s,
            connectionTimeout=s.connection_timeout_s,
            connectionRetryTime=s.connection_retry_s,
            leaderFallbackTimeout=s.leader_fallback_s,
            logCompactionMinEntries=s.compaction_entries,
            logCompactionMinTime=s.compaction_time_s,
            serializer=self._write_dump,
            deserializer=self._read_dump,
            dynamicMembershipChange=True,
            commandsWaitLeader=True,
            **os_parts,
        )

    # -- driving pysyncobj from the event loop ------------------------------------------------
    def start(self) -> None:
        """Begin ticking on the running loop: on socket readiness and every few ms for timers."""
        self._loop = asyncio.get_running_loop()
        self._fd = self._obj._poller.fileno()
        self._loop.add_reader(self._fd, self._tick)
        self._tick()  # loads the dump and journal: the replica catches up from disk at once

    def _tick(self) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        try:
            # pysyncobj reads sockets at the END of a tick but decides (commit, apply, reply)
            # at its start: a second tick acts on what the first one read, instead of leaving
            # it for the timer (that halves-to-quarters commit latency).
            self._obj.doTick(0.0)
            self._obj.doTick(0.0)
        except Exception:  # pysyncobj bug or I/O error: keep the node alive, say so
            log.exception("raft tick failed")
        for callback in self.on_tick:
            callback()
        applied = self._obj.raftLastApplied
        if applied != self._seen_applied:
            self._seen_applied = applied
            self._changed.set()
            self._changed = asyncio.Event()
        assert self._loop is not None
        self._timer = self._loop.call_later(0.01, self._tick)

    def _apply(self, blob: bytes) -> dict[str, Any]:
        try:
            cmd = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except Exception as exc:
            return {"ok": False, "error": f"undecodable command: {exc}"}
        return self.state.apply(cmd)

    # -- snapshot (pysyncobj's full dump) in msgpack ------------------------------------------
    def _write_dump(self, path: str, raft_data: tuple[Any, ...]) -> None:
        last, prev, cluster = raft_data
        blob = msgpack.packb({
            "format": DUMP_FORMAT, "state": self.state.to_bytes(),
            "last": list(last), "prev": list(prev), "cluster": sorted(n.id for n in cluster if n is not None),  # None: a non-voter
        }, use_bin_type=True)
        with open(path, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())

    def _read_dump(self, path: str) -> tuple[Any, ...]:
        with open(path, "rb") as fh:
            raw = msgpack.unpackb(fh.read(), raw=False, strict_map_key=False)
        if raw.get("format") != DUMP_FORMAT:
            raise ValueError(f"{path}: unsupported dump format {raw.get('format')!r}")
        self.state = SwarmState.from_bytes(raw["state"])
        return (tuple(raw["last"]), tuple(raw["prev"]), [TCPNode(a) for a in raw["cluster"]])

    # -- the ReplicatedLog interface ----------------------------------------------------------
    @property
    def applied_index(self) -> int:
        return int(self._obj.raftLastApplied)

    @property
    def is_leader(self) -> bool:
        return bool(self._obj._isLeader())

    @property
    def leader_address(self) -> str | None:
        leader = self._obj._getLeader()
        return leader.id if leader is not None else None

    @property
    def leader_id(self) -> str | None:
        """The leader's node id (from the Raft addresses nodes registered), else its address."""
        address = self.leader_address
        if address is None:
            return None
        for node in self.state.nodes():
            if node.raft == address:
                return node.node_id
        return address

    async def submit(self, cmd: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        """Commit `cmd` through Raft and return its result; retried with the same rid until
        `timeout` (the state machine applies a rid once, so retrying is always safe)."""
        blob = msgpack.packb(cmd, use_bin_type=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay, last = 0.05, "timeout"
        while not self._closed:
            fut: asyncio.Future[tuple[Any, int]] = loop.create_future()

            def done(result: Any, error: int, fut: asyncio.Future[tuple[Any, int]] = fut) -> None:
                if not fut.done():
                    fut.set_result((result, error))

            self._obj.apply_packed(blob, callback=done)
            attempt = min(self.settings.attempt_timeout_s, max(0.05, deadline - loop.time()))
            try:
                result, error = await asyncio.wait_for(fut, attempt)
            except TimeoutError:
                result, error = None, -1
            if error == FAIL_REASON.SUCCESS:
                return result if isinstance(result, dict) else {"ok": False, "error": "no result"}
            last = _FAIL_NAMES.get(error, "timeout")
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)  # back off: an election is usually in progress
            delay = min(delay * 2, 0.5)
        raise NoQuorum(f"the cluster did not commit {cmd.get('op')} within {timeout:.0f}s "
                       f"(last error: {last}); {self.quorum_hint()}")

    @property
    def is_voter(self) -> bool:
        return self.settings.voter

    def quorum_hint(self) -> str:
        members = self.members()
        total, connected = len(members), sum(members.values())
        who = "this node" if self.is_voter else "this non-voting node"
        return (f"{who} reaches {connected} of {total} voters (a majority is "
                f"{total // 2 + 1}); leader: {self.leader_address or 'none'}")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until this replica has caught up with a leader's commit index (after a
        restart: replayed its journal and received what it missed). False on timeout, e.g.
        while no quorum exists; reads are then stale and `freshness()` says so."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._obj.isReady():
            if loop.time() >= deadline:
                return False
            await self.wait_changed(min(0.1, deadline - loop.time()))
        return True

    async def wait_changed(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    # -- cluster view and membership ----------------------------------------------------------
    def freshness(self) -> dict[str, Any]:
        """How current local reads are: applied vs committed index, leader, quorum."""
        status = self._obj.getStatus()
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(status["state"], "?")
        return {"applied_index": self.applied_index, "commit_index": status["commit_idx"],
                "leader_commit_index": status["leader_commit_idx"], "role": role,
                "leader": self.leader_id, "leader_address": self.leader_address,
                "term": status["raft_term"], "has_quorum": bool(status["has_quorum"]),
                "as_of": time.time()}

    @property
    def has_quorum(self) -> bool:
        """This replica is in touch with a majority of the voters (a leader or its follower)."""
        return bool(self._obj.getStatus()["has_quorum"])

    def members(self) -> dict[str, bool]:
        """Raft address → connected, for every voter (this node, if it votes, is connected)."""
        status = self._obj.getStatus()
        found = {self.settings.self_address: True} if self.is_voter else {}
        prefix = "partner_node_status_server_"
        for key, value in status.items():
            if key.startswith(prefix):
                found[key[len(prefix):]] = value == 2
        return found

    async def change_membership(self, action: str, address: str, timeout: float = 15.0) -> None:
        """Add or remove one voter through the log (pysyncobj's dynamic membership).

        Like any replicated call the outcome of a failed attempt is unknown, so it is retried;
        done means the membership is as asked. pysyncobj also refuses (REQUEST_DENIED) while a
        new leader's first entry or a previous change is uncommitted: retried as well.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay, reason, attempted = 0.05, "timeout", False
        while True:
            if attempted and (address in self.members()) == (action == "add"):
                return  # an earlier attempt whose answer we did not get did it
            attempted = True
            fut: asyncio.Future[int] = loop.create_future()

            def done(_result: Any, error: int, fut: asyncio.Future[int] = fut) -> None:
                if not fut.done():
                    fut.set_result(error)

            if action == "add":
                self._obj.addNodeToCluster(address, callback=done)
            else:
                self._obj.removeNodeFromCluster(address, callback=done)
            try:
                error = await asyncio.wait_for(
                    fut, min(self.settings.attempt_timeout_s, max(0.05, deadline - loop.time())))
            except TimeoutError:
                error = -1
            if error == FAIL_REASON.SUCCESS:
                return
            reason = _FAIL_NAMES.get(error, "timeout")
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        if (address in self.members()) == (action == "add"):
            return
        hint = (" (one change at a time: wait for the previous one; the node must not already "
                "be a member / must be a member)" if reason == "REQUEST_DENIED" else
                f"; {self.quorum_hint()}")
        raise UserError(f"cannot {action} {address}: {reason}{hint}", 409)

    @staticmethod
    def wipe(data_dir: Path) -> None:
        """Delete a closed replica's journal, its term and vote, and its dump: opened again it
        starts empty and receives the leader's snapshot. Only for a node the swarm no longer
        counts as a voter (membership.stale_vote): its copy of the log is needed by no quorum,
        and the terms it raised campaigning alone would make it ignore the real leader."""
        for name in ("raft.journal", "raft.journal.meta", "raft.dump"):
            (data_dir / name).unlink(missing_ok=True)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._obj.destroy()
        self._obj._poller.close()
