"""Everything swarmnode changes about pysyncobj 0.3.17, in one place, each with its reason.

1. **Commit index during a snapshot install** (a correctness bug). A follower that is being sent a
   snapshot (the leader compacted the entries it needs) still runs the generic tail of the
   append_entries handler, which advances its commit index to ``min(leader_commit,
   own_last_index)``. Its own log may still hold *stale* entries from an old term at those
   indices; they are then applied — the replica diverges — and, on an ex-leader, the clients
   waiting for those entries are told they succeeded although the cluster committed something
   else. :class:`RaftFixes` refuses to advance the commit index on a snapshot message
   unless that message completed the install. ``tests/test_pysyncobj_fixes.py`` fails without it.
2. **A leader moves a follower's next index backwards on a late acknowledgement.** When the
   acknowledgement of entry 5 arrives after entries 6..8 were already sent, pysyncobj sets the
   follower's next index back to 6 and resends 6..8 with prevLogIdx 5; the follower, which
   truncates everything after prevLogIdx whenever it has more, deletes 6..8 — entries it may
   already have acknowledged and that may count towards a commit — and re-adds them. Raft only
   truncates on a term conflict. :class:`RaftFixes` (the same mixin) keeps the next
   index from moving backwards on a *successful* acknowledgement; a follower that really lacks
   entries answers with ``reset`` and is still rewound.
3. **The journal is not durable.** ``FileJournal`` writes through an mmap and never syncs; a
   power loss can forget entries this node already acknowledged to the leader (and term/vote
   metadata is written without fsync). :class:`DurableJournal` syncs each change before pysyncobj
   can send a message that depends on it.
4. **A poller asyncio can watch.** pysyncobj offers ``select``/``poll`` pollers, neither of which
   has a file descriptor. :class:`EpollPoller` does, so the node runs Raft ticks on its event
   loop exactly when a socket is ready (no extra thread touching the state machine, and no
   polling latency on commits).
5. **Membership is forgotten on restart.** With dynamic membership, pysyncobj applies a
   membership change when the entry is appended, but when it restarts it only restores the
   membership stored in its dump (and the constructor's list): changes in the journal after the
   dump are lost, so a restarted node talks to the wrong voter set (it ignores a node added by
   discovery, or counts one that was removed). pysyncobj re-runs a membership entry when it is
   *applied* (committed), meant to catch up after a restart — but that runs old changes after
   newer ones: a voter removed (committed) and added back (not yet committed) is removed again
   when the restarted node applies the removal. :class:`RaftFixes` replays the journal's
   membership entries after the dump (or from the start when there is no dump), in order, the
   way they were applied when first appended, and does not re-run them when they are applied:
   every path that puts an entry in the log (the leader's append, a follower's append, a
   snapshot plus this replay) has already applied it. The simulator's seed crashes a leader
   just after it added a voter back (``a-restart-keeps-the-voter-set``).
6. **A follower throws away entries it acknowledged when the leader repeats itself.** A
   leader answers every ``reset`` by rewinding the follower's next index, and a follower that
   was behind sends one reset per append it could not use: the first makes the leader send
   what is missing (a snapshot, then entries), which the follower stores and acknowledges;
   the later, stale resets rewind the leader again and it sends the same things once more.
   pysyncobj's follower clears its whole journal on every snapshot, and on an append whose
   ``prevLogIdx`` is below its last entry it cuts everything after ``prevLogIdx`` and adds the
   message's entries — so until the rest arrives (or for good, if the connection breaks or it
   crashes) it lacks entries it acknowledged in this term, which the leader may have counted
   towards a commit. Raft only truncates on a conflict, and keeps the entries after a snapshot
   whose last entry the follower already has (InstallSnapshot, step 6). :class:`RaftFixes`
   keeps what this node acknowledged to the current term's leader (those entries match the
   leader's log): a repeated append that brings nothing new is answered from the log as it
   is, and a repeated snapshot is installed with them put back. The deterministic simulator
   has seeds that fail without it (see ``simulation/README.md``; the append case needs a
   resend split over several messages, which a >64 KB entry such as a desktop-sized
   ``start_cycle`` causes).
7. **A big entry's last-but-one piece is marked as the last.** An entry of at least
   ``appendEntriesBatchSizeBytes`` (64 KiB; a 700-package ``start_cycle`` is ~120 KiB) is
   sent pickled, in pieces, the last marked ``finish``. pysyncobj decides "last" by comparing
   with the size of the *command*, but the pieces are of its pickle — protocol 2, which
   stores bytes as UTF-8-encoded latin-1 text and so is up to twice as long — so a piece
   before the end is marked ``finish``: the follower unpickles half an entry and its message
   handler raises (EOFError, UnicodeDecodeError …). :class:`RaftFixes` treats a ``finish``
   that does not unpickle yet as one more piece; the real last piece completes it. The
   simulator fails at the first desktop-sized cycle without it.
8. **Stale resets undo the walk back to a conflict.** When the leader sends a follower
   several appends at once (more than a batch of entries: a follower far behind) and the
   follower's last entry conflicts with the leader's, the follower answers the first with
   "conflict: go back to N" and every later one with "I lack your prevLogIdx: send from my
   last + 1" (N + 1). pysyncobj takes each answer as the new next index, so the last one
   wins, the leader sends from N + 1 again, and the follower is never repaired — it stays
   behind for good, and with it a quorum if it is needed for one. A reset only ever answers
   an append sent from the current next index, so :class:`RaftFixes` lets it move the index
   back, never forward. The simulator has a seed that stops converging without it.
"""

from __future__ import annotations

import os
import select
import shutil
from collections.abc import Callable
from typing import Any

import pysyncobj.journal as pjournal
import pysyncobj.pickle as ppickle
import pysyncobj.syncobj as psyncobj
from pysyncobj.poller import POLL_EVENT_TYPE, Poller

# ---------------------------------------------------------------------------------- 1 and 2


class RaftFixes:
    """Mixin for a SyncObj subclass: fixes 1, 2, 5, 6, 7 and 8 (commit index during a snapshot
    install, next index on late acknowledgements, membership after a restart, acknowledged
    entries across a repeated snapshot or append, the last piece of a big entry, next index
    on stale resets)."""

    _snapshot_installed = False
    _acknowledged = (0, 0)  # fix 6: (term, last index this node acknowledged to its leader)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dump = self._SyncObj__conf.fullDumpFile  # type: ignore[attr-defined]
        if dump is None or not os.path.isfile(dump):  # else: replayed once the dump is loaded
            self._replay_membership(after=0)

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802 (pysyncobj's name)
        before = list(self._SyncObj__raftLog[:]) if clearJournal else []  # type: ignore[attr-defined]
        super()._SyncObj__loadDumpFile(clearJournal)  # type: ignore[misc]
        self._snapshot_installed = True
        if before:
            self._keep_acknowledged_entries(before)  # fix 6
        self._replay_membership(after=self.raftLastApplied)  # type: ignore[attr-defined]  # fix 5

    def _keep_acknowledged_entries(self, before: list[tuple[bytes, int, int]]) -> None:
        """Fix 6: after installing a snapshot, put back the entries after its last one that
        this node acknowledged to the current term's leader (they match the leader's log)."""
        term, acknowledged = self._acknowledged
        raft_log = self._SyncObj__raftLog  # type: ignore[attr-defined]
        if term != self.raftCurrentTerm or len(raft_log) != 2:  # type: ignore[attr-defined]
            return
        _cmd, last_idx, last_term = raft_log[-1]
        if not any(idx == last_idx and t == last_term for _c, idx, t in before):
            return  # our log differs at the snapshot's last entry: the snapshot wins
        for entry in before:
            if last_idx < entry[1] <= acknowledged:
                raft_log.add(*entry)

    @staticmethod
    def _stale_reset(before: int | None, after: int | None) -> bool:
        """Fix 8: a reset answers an append sent from the current next index, so it can only
        move the index back; one that would move it forward answers an older append."""
        return before is not None and after is not None and after > before

    def _finish_when_complete(self, message: dict[str, Any]) -> dict[str, Any]:
        """Fix 7: a ``finish`` piece after which the entry does not unpickle is not the last."""
        if message.get("type") != "append_entries" or message.get("transmission") != "finish":
            return message
        received = getattr(self, "_SyncObj__recvTransmission")
        if not isinstance(received, bytes):
            return message  # no 'start' seen: pysyncobj's own handling
        try:
            ppickle.loads(received + message["data"])
        except Exception:  # noqa: BLE001 (a partial pickle fails in many ways)
            return {**message, "transmission": "process"}
        return message

    def _keeping_acknowledged(self, message: dict[str, Any]) -> dict[str, Any]:
        """Fix 6: an append of the current leader that only repeats entries this node already
        acknowledged becomes an empty append after the last acknowledged one, so pysyncobj
        neither cuts them off nor acknowledges anything it has not checked."""
        if message.get("type") != "append_entries" or "prevLogIdx" not in message:
            return message
        transmission = message.get("transmission")
        term, acknowledged = self._acknowledged
        if transmission in ("start", "process") or message.get("term") != term \
                or term != self.raftCurrentTerm:  # type: ignore[attr-defined]
            return message
        if transmission == "finish":  # one big entry, sent in pieces
            data = getattr(self, "_SyncObj__recvTransmission") + message["data"]
            entries = [ppickle.loads(data)]
        else:
            entries = list(message.get("entries", []))
        raft_log = self._SyncObj__raftLog  # type: ignore[attr-defined]
        first, last = raft_log[0][1], raft_log[-1][1]
        keep = min(acknowledged, last)
        end = entries[-1][1] if entries else message["prevLogIdx"]
        if keep <= end:
            return message  # it brings entries past what we acknowledged: pysyncobj's way
        for idx, entry_term in [(message["prevLogIdx"], message["prevLogTerm"]),
                                *((e[1], e[2]) for e in entries)]:
            if not first <= idx <= last or raft_log[idx - first][2] != entry_term:
                return message  # not all ours already: a real conflict or gap
        if transmission == "finish":
            setattr(self, "_SyncObj__recvTransmission", "")  # as pysyncobj does on finish
        repeated = {k: v for k, v in message.items() if k not in ("entries", "transmission", "data")}
        repeated.update(prevLogIdx=keep, prevLogTerm=raft_log[keep - first][2], entries=[])
        return repeated

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False,  # noqa: N802
                                  nextNodeIdx: int | None = None, success: bool = False) -> None:
        if success:  # fix 6: remember what this follower acknowledged in this term
            if nextNodeIdx is None:
                nextNodeIdx = self._SyncObj__raftLog[-1][1] + 1  # type: ignore[attr-defined]
            term, index = self._acknowledged
            current = self.raftCurrentTerm  # type: ignore[attr-defined]
            self._acknowledged = (current, nextNodeIdx - 1 if term != current
                                  else max(index, nextNodeIdx - 1))
        super()._SyncObj__sendNextNodeIdx(node, reset=reset, nextNodeIdx=nextNodeIdx,  # type: ignore[misc]
                                          success=success)

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:  # noqa: N802 (pysyncobj's name)
        """Fix 5: a committed membership entry was applied when it was appended (or replayed
        on restart); running it again here would undo any later change."""
        conf = self._SyncObj__conf  # type: ignore[attr-defined]
        parse = self._SyncObj__parseChangeClusterRequest  # type: ignore[attr-defined]
        if conf.dynamicMembershipChange and parse(command) is not None:
            return None
        return super()._SyncObj__doApplyCommand(command)  # type: ignore[misc]

    def _replay_membership(self, after: int) -> None:
        """Fix 5: re-apply the journal's membership changes past index `after`, in order."""
        if not self._SyncObj__conf.dynamicMembershipChange:  # type: ignore[attr-defined]
            return
        for command, idx, _term in self._SyncObj__raftLog[:]:  # type: ignore[attr-defined]
            if idx > after:
                request = self._SyncObj__parseChangeClusterRequest(command)  # type: ignore[attr-defined]
                if request is not None:
                    self._SyncObj__doChangeCluster(request)  # type: ignore[attr-defined]

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:  # noqa: N802
        if (message.get("type") == "next_node_idx" and message.get("success")
                and not message.get("reset") and self._isLeader()):  # type: ignore[attr-defined]
            before = self._SyncObj__raftNextIndex.get(node)  # type: ignore[attr-defined]
            super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
            after = self._SyncObj__raftNextIndex.get(node)  # type: ignore[attr-defined]
            if before is not None and after is not None and after < before:
                self._SyncObj__raftNextIndex[node] = before  # type: ignore[attr-defined]  # fix 2
            return
        if (message.get("type") == "next_node_idx" and message.get("reset")
                and self._isLeader()):  # type: ignore[attr-defined]
            before = self._SyncObj__raftNextIndex.get(node)  # type: ignore[attr-defined]
            super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
            after = self._SyncObj__raftNextIndex.get(node)  # type: ignore[attr-defined]
            if self._stale_reset(before, after):  # fix 8
                self._SyncObj__raftNextIndex[node] = before  # type: ignore[attr-defined]
            return
        # A snapshot message is an append_entries without prevLogIdx ('serialized' carries a
        # chunk, or None while the leader's dump is still being written).
        snapshot = message.get("type") == "append_entries" and "prevLogIdx" not in message
        if not snapshot:
            message = self._finish_when_complete(message)  # fix 7
            message = self._keeping_acknowledged(message)  # fix 6
            super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
            return
        before = self.raftCommitIndex  # type: ignore[attr-defined]
        self._snapshot_installed = False
        super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
        if not self._snapshot_installed and self.raftCommitIndex > before:  # type: ignore[attr-defined]
            # Our log past `before` may be stale: only the installed snapshot may move us on.
            self._SyncObj__raftCommitIndex = before
            self._SyncObj__raftLog.setRaftCommitIndex(before)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------- 3


class _DurableMeta(pjournal.MetaStorer):
    """Term, vote and commit index: written to a temp file, fsynced, renamed, dir fsynced."""

    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802 (pysyncobj's name)
        path = self.getPath()
        with open(path + ".tmp", "wb") as fh:
            fh.write(pjournal.dumps(meta))
            fh.flush()
            os.fsync(fh.fileno())
        shutil.move(path + ".tmp", path)
        _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableJournal(pjournal.FileJournal):
    """FileJournal whose every change is on disk before pysyncobj acts on it (msync)."""

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._FileJournal__metaStorer = _DurableMeta(journal_file + ".meta")

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.flush()

    def clear(self) -> None:
        super().clear()
        self.flush()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802
        super().deleteEntriesFrom(entryFrom)
        self.flush()


def _create_journal(journal_file: str | None = None) -> pjournal.Journal:
    if journal_file is None:
        return pjournal.MemoryJournal()
    return DurableJournal(journal_file)


# ---------------------------------------------------------------------------------------- 4


class EpollPoller(Poller):
    """pysyncobj's Poller interface over epoll; ``fileno()`` is readable when any socket is."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[int, int], None]] = {}

    def fileno(self) -> int:
        return self._epoll.fileno()

    def subscribe(self, descr: int, callback: Callable[[int, int], None], eventMask: int) -> None:
        mask = 0
        if eventMask & POLL_EVENT_TYPE.READ:
            mask |= select.EPOLLIN
        if eventMask & POLL_EVENT_TYPE.WRITE:
            mask |= select.EPOLLOUT
        if eventMask & POLL_EVENT_TYPE.ERROR:
            mask |= select.EPOLLERR
        if descr in self._callbacks:
            self._epoll.modify(descr, mask)
        else:
            self._epoll.register(descr, mask)
        self._callbacks[descr] = callback

    def unsubscribe(self, descr: int) -> None:
        if self._callbacks.pop(descr, None) is not None:
            try:
                self._epoll.unregister(descr)
            except OSError:
                pass  # already closed: the kernel dropped it from the set

    def poll(self, timeout: float) -> None:
        for descr, event in self._epoll.poll(timeout if timeout > 0 else 0):
            mask = 0
            if event & select.EPOLLIN:
                mask |= POLL_EVENT_TYPE.READ
            if event & select.EPOLLOUT:
                mask |= POLL_EVENT_TYPE.WRITE
            if event & (select.EPOLLERR | select.EPOLLHUP):
                mask |= POLL_EVENT_TYPE.ERROR
            callback = self._callbacks.get(descr)
            if callback is not None:
                callback(descr, mask)

    def close(self) -> None:
        self._epoll.close()


_original_create_poller = psyncobj.createPoller


def _create_poller(poller_type: str) -> Poller:
    if poller_type == "epoll":
        return EpollPoller()
    return _original_create_poller(poller_type)


def install() -> None:
    """Route pysyncobj's journal and poller factories through the fixes above (idempotent).

    SyncObj.__init__ calls these module-level factories, so this is the one hook point; it
    changes nothing for code that does not ask for pollerType='epoll' or a journal file.
    """
    psyncobj.createJournal = _create_journal
    psyncobj.createPoller = _create_poller
