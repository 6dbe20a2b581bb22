"""One node's Raft replica in the simulator: the daemon's RaftLog and SyncObj on virtual time.

``SimLog`` *is* a :class:`RaftLog` — its ``submit`` (same rid retried until a deadline),
``change_membership``, ``members``, the msgpack ``_apply`` and the dump serializer
(``_write_dump`` / ``_read_dump``) are the daemon's — with only the parts that touch the OS
replaced: the SyncObj gets the simulated transport, journal and poller, and ticks are
scheduled on the virtual clock instead of an epoll fd.

``SimSyncObj`` is the daemon's ``_SwarmSyncObj`` (pysyncobj + ``RaftFixes`` + the replicated
``apply_packed``). :func:`syncobj_class` builds it with chosen fixes of ``RaftFixes`` switched
off, so a seed can show what each fix prevents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
from pysyncobj import SyncObj, SyncObjConf

from swarmnode.consensus.raft import RaftLog, RaftSettings, _SwarmSyncObj
from swarmnode.state import SwarmState

from . import invariants
from .clock import VirtualLoop
from .disk import SimDisk
from .network import SimNetwork, factory

#: The fixes of ``RaftFixes`` that change Raft's behaviour (3 and 4 are I/O-level).
SWITCHABLE_FIXES = (1, 2, 5, 6, 7, 8)
LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER
TIMER_SLACK_S = 1e-6  # pysyncobj compares deadlines strictly: tick just after them


class ReplicaHost(Protocol):
    """What a SimLog needs from the simulated node that owns it."""

    node_id: str
    disk: SimDisk
    network: SimNetwork
    paused: bool

    def tick_delay(self) -> float: ...

    def before_apply(self, log: SimLog, index: int, cmd: dict[str, Any] | None) -> Any: ...

    def after_apply(self, log: SimLog, index: int, blob: bytes, cmd: dict[str, Any] | None,
                    before: Any, result: dict[str, Any]) -> None: ...

    def observe_leader(self, log: SimLog, term: int) -> None: ...

    def observe_tick_error(self, log: SimLog, exc: BaseException) -> None: ...

    def observe_dump_loaded(self, log: SimLog, installed: bool) -> None: ...

    def observe_ack_dropped(self, log: SimLog, problem: str) -> None: ...

    def observe_membership_change(self, log: SimLog) -> None: ...


class SimSyncObj(_SwarmSyncObj):
    """``_SwarmSyncObj`` on the simulated transport; queuing a command wakes the node (the
    daemon's pipe notifier does that by making its epoll fd readable)."""

    def __init__(self, owner: RaftLog, settings: RaftSettings, conf: SyncObjConf) -> None:
        assert isinstance(owner, SimLog)
        self._owner = owner
        self._sim_log = owner
        transport = factory(owner.host.network, settings.self_address, owner.kick,
                            owner.after_message)
        # _SwarmSyncObj.__init__ would pick TCPTransport: call what it calls, with ours.
        super(_SwarmSyncObj, self).__init__(
            settings.self_address if settings.voter else None, list(settings.partners), conf,
            transportClass=transport)

    def _applyCommand(self, command: bytes, callback: Any, commandType: Any = None) -> None:  # noqa: N802
        super()._applyCommand(command, callback, commandType)  # type: ignore[misc]
        self._sim_log.kick()

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802
        super()._SyncObj__loadDumpFile(clearJournal)
        self._sim_log.host.observe_dump_loaded(self._sim_log, clearJournal)

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> Any:  # noqa: N802
        result = super()._SyncObj__doChangeCluster(request, reverse)  # type: ignore[misc]
        self._sim_log.host.observe_membership_change(self._sim_log)
        return result

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False,  # noqa: N802
                                  nextNodeIdx: int | None = None, success: bool = False) -> None:
        """Remember what this follower acknowledged (every entry before the next index)."""
        if success:
            nxt = nextNodeIdx if nextNodeIdx is not None else self._SyncObj__raftLog[-1][1] + 1  # type: ignore[attr-defined]
            self._sim_log.acknowledged(int(self.raftCurrentTerm), int(nxt) - 1)
        super()._SyncObj__sendNextNodeIdx(node, reset=reset, nextNodeIdx=nextNodeIdx,  # type: ignore[misc]
                                          success=success)


class _WithoutFix1:
    """Fix 1 off: a snapshot message goes to pysyncobj's own handler (its commit-index tail)."""

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:  # noqa: N802
        if message.get("type") == "append_entries" and "prevLogIdx" not in message:
            SyncObj._SyncObj__onMessageReceived(self, node, message)  # type: ignore[attr-defined]
            return
        super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]


class _WithoutFix2:
    """Fix 2 off: acknowledgements go to pysyncobj's handler (which may rewind next index)."""

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:  # noqa: N802
        if message.get("type") == "next_node_idx":
            SyncObj._SyncObj__onMessageReceived(self, node, message)  # type: ignore[attr-defined]
            return
        super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]


class _WithoutFix5:
    """Fix 5 off: a restarted node keeps only the dump's and the constructor's membership,
    and re-runs membership entries as they are applied."""

    def _replay_membership(self, after: int) -> None:
        return

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:  # noqa: N802
        return SyncObj._SyncObj__doApplyCommand(self, command)  # type: ignore[attr-defined]


class _WithoutFix6:
    """Fix 6 off: a repeated snapshot or append cuts off entries already acknowledged."""

    def _keep_acknowledged_entries(self, before: list[Any]) -> None:
        return

    def _keeping_acknowledged(self, message: dict[str, Any]) -> dict[str, Any]:
        return message


class _WithoutFix7:
    """Fix 7 off: a big entry's piece marked ``finish`` too early is unpickled as it is."""

    def _finish_when_complete(self, message: dict[str, Any]) -> dict[str, Any]:
        return message


class _WithoutFix8:
    """Fix 8 off: every reset sets the follower's next index, stale ones too."""

    @staticmethod
    def _stale_reset(before: int | None, after: int | None) -> bool:
        return False


_DISABLERS: dict[int, type] = {1: _WithoutFix1, 2: _WithoutFix2, 5: _WithoutFix5,
                               6: _WithoutFix6, 7: _WithoutFix7, 8: _WithoutFix8}


def syncobj_class(disabled: frozenset[int] = frozenset()) -> type[SimSyncObj]:
    """The node class with the given RaftFixes fixes switched off (none: the daemon's)."""
    unknown = sorted(set(disabled) - set(_DISABLERS))
    if unknown:
        raise ValueError(f"no switchable fix {unknown}; choose from {list(SWITCHABLE_FIXES)}")
    if not disabled:
        return SimSyncObj
    mixins = tuple(_DISABLERS[n] for n in sorted(disabled))
    name = "SimSyncObjWithoutFix" + "".join(str(n) for n in sorted(disabled))
    return type(name, (*mixins, SimSyncObj), {})


class SimLog(RaftLog):
    """The daemon's RaftLog with pysyncobj driven by the simulation (see module docstring).

    Ticks: right after a message arrives or a command is queued (once per instant), at
    pysyncobj's next deadline (election timeout, append period), and at least every
    ``idle_tick_s`` — never on a fixed 10 ms grid, so an idle cluster costs few events.
    """

    def __init__(self, settings: RaftSettings, host: ReplicaHost, loop: VirtualLoop,
                 cls: type[SimSyncObj], idle_tick_s: float = 0.1,
                 append_batch_bytes: int = 2 ** 16) -> None:
        # Deliberately not RaftLog.__init__ (it opens sockets, an epoll fd and files): the
        # same attributes, and the same SyncObjConf except what touches the OS.
        self.settings = settings
        self.host = host
        self.state = SwarmState()
        self.dir = host.disk.dir
        self._changed = asyncio.Event()
        self._seen_applied = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = loop
        self.vloop = loop
        self._fd = None
        self._closed = False
        self.on_tick: list[Callable[[], None]] = []
        self.idle_tick_s = idle_tick_s
        self._tick_at: float | None = None
        # rid → (index this replica last applied it at, whether the state remembers the rid)
        self.applied_at: dict[str, tuple[int, bool]] = {}
        conf = self._syncobj_conf(
            password=None,  # the simulated network needs no encryption
            pollerType="sim",
            useFork=False,  # dumps are written synchronously, inside the tick
            appendEntriesBatchSizeBytes=append_batch_bytes,
            journalFile=host.disk.journal_key,
            fullDumpFile=str(host.disk.dump_file),
            onStateChanged=self._state_changed,
        )
        self._acked: tuple[int, int] = (0, 0)  # (term, last index acknowledged to its leader)
        self._obj = cls(self, settings, conf)

    # -- ticking on virtual time ----------------------------------------------------------------
    def start(self) -> None:
        self._tick()  # loads the dump and journal, as the daemon's first tick does

    def kick(self) -> None:
        """Tick as soon as this node gets to run (a slow node a little later)."""
        self._schedule(self.vloop.time() + self.host.tick_delay())

    def _schedule(self, when: float) -> None:
        if self._closed or (self._tick_at is not None and self._tick_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._tick_at = when
        self._timer = self.vloop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer, self._tick_at = None, None
        if self._closed or self.host.paused:
            return  # a paused node is kicked again when it resumes
        try:
            self._obj.doTick(0.0)
        except Exception as exc:  # the daemon logs and keeps going; the simulation reports it
            self.host.observe_tick_error(self, exc)
        for callback in self.on_tick:
            callback()
        applied = self._obj.raftLastApplied
        if applied != self._seen_applied:
            self._seen_applied = applied
            self._changed.set()
            self._changed = asyncio.Event()
        if not self._closed:
            self._schedule(self._next_deadline())

    def _next_deadline(self) -> float:
        """The idle tick, or pysyncobj's next timer if that comes first. A deadline already
        past (an election that cannot start: no peer connected) waits for the idle tick."""
        now = self.vloop.time()
        when = now + self.idle_tick_s
        obj = self._obj
        if obj._isLeader():
            timer = obj._SyncObj__newAppendEntriesTime + TIMER_SLACK_S  # type: ignore[attr-defined]
        elif self.settings.voter:
            timer = obj._SyncObj__raftElectionDeadline + TIMER_SLACK_S  # type: ignore[attr-defined]
        else:
            timer = when
        if now < timer < when:
            when = timer
        return max(now + self.host.tick_delay(), when)

    def _state_changed(self, old: int, new: int) -> None:
        if new == LEADER:
            self.host.observe_leader(self, int(self._obj.raftCurrentTerm))

    # -- observing every applied command ------------------------------------------------------
    def _apply(self, blob: bytes) -> dict[str, Any]:
        index = int(self._obj.raftLastApplied) + 1  # pysyncobj counts it after the apply
        try:
            cmd = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except Exception:  # not msgpack: the state machine refuses it itself; nothing to observe
            cmd = None
        before = self.host.before_apply(self, index, cmd if isinstance(cmd, dict) else None)
        result = super()._apply(blob)
        self.host.after_apply(self, index, blob, cmd if isinstance(cmd, dict) else None,
                              before, result)
        return result

    # -- what a follower acknowledged stays in its log (within the term) ---------------------
    def acknowledged(self, term: int, index: int) -> None:
        if term != self._acked[0] or index > self._acked[1]:
            self._acked = (term, index)

    def after_message(self) -> None:
        """After each message: the follower still holds what it acknowledged this term."""
        last = int(self._obj._SyncObj__raftLog[-1][1])  # type: ignore[attr-defined]
        problem = invariants.dropped_acknowledged(self.host.node_id, self._acked,
                                                  int(self._obj.raftCurrentTerm), last)
        if problem is not None:
            self.host.observe_ack_dropped(self, problem)
            self._acked = (self._acked[0], last)

    @property
    def term(self) -> int:
        return int(self._obj.raftCurrentTerm)

    @property
    def commit_index(self) -> int:
        return int(self._obj.raftCommitIndex)

    def close(self) -> None:
        """The process ends (crash or stop): no more ticks, connections reset."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._tick_at = None, None
        self._obj.destroy()
