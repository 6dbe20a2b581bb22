"""The fixes swarmnode carries for pysyncobj 0.3.17 (swarmnode/consensus/pysyncobj_fixes.py).

Each test fails without its fix; the commit-index test also shows the unfixed library doing
the wrong thing on the same input, so the scenario is real and not a strawman.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _COMMAND_TYPE

from harness import free_port
from swarmnode.consensus import pysyncobj_fixes
from swarmnode.consensus.pysyncobj_fixes import DurableJournal, EpollPoller, RaftFixes

pysyncobj_fixes.install()


class Guarded(RaftFixes, SyncObj):
    pass


def _follower(cls: type[SyncObj], leader: str) -> SyncObj:
    """A follower (never ticked: no timers fire) whose log holds stale entries 2..5 of term 1
    — say, written while it led a minority — that the cluster never committed."""
    obj = cls(f"127.0.0.1:{free_port()}", [leader], SyncObjConf(autoTick=False))
    raft_log = obj._SyncObj__raftLog
    for idx in range(2, 6):
        raft_log.add(bytes([_COMMAND_TYPE.NO_OP]), idx, 1)
    obj._SyncObj__raftCurrentTerm = 1
    return obj


def _snapshot_chunk(commit_index: int) -> dict:
    """The new leader (term 2) compacted its log and starts sending a snapshot: first chunk."""
    return {"type": "append_entries", "term": 2, "commit_index": commit_index,
            "serialized": (b"first chunk of the dump", True, False)}


@pytest.mark.parametrize("cls,expected", [(SyncObj, 5), (Guarded, 1)])
def test_commit_index_does_not_advance_over_stale_entries_during_a_snapshot(
        cls: type[SyncObj], expected: int) -> None:
    leader = f"127.0.0.1:{free_port()}"
    obj = _follower(cls, leader)
    try:
        assert obj.raftCommitIndex == 1
        obj._SyncObj__onMessageReceived(TCPNode(leader), _snapshot_chunk(commit_index=10))
        # Unfixed: commit index jumps to 5, so the stale entries 2..5 would be applied (and an
        # ex-leader would tell its clients they succeeded). Fixed: it waits for the snapshot.
        assert obj.raftCommitIndex == expected
    finally:
        obj._doDestroy()


def test_a_completed_snapshot_still_moves_the_commit_index(tmp_path: Path) -> None:
    """The guard only holds back a half-received snapshot: regular appends still commit."""
    leader = f"127.0.0.1:{free_port()}"
    obj = _follower(Guarded, leader)
    try:
        obj._SyncObj__onMessageReceived(TCPNode(leader), {
            "type": "append_entries", "term": 1, "commit_index": 4, "entries": [],
            "prevLogIdx": 5, "prevLogTerm": 1})
        assert obj.raftCommitIndex == 4
    finally:
        obj._doDestroy()


def test_journal_changes_are_synced_before_pysyncobj_acts(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    flushed: list[int] = []
    monkeypatch.setattr(journal._FileJournal__journalFile, "flush",
                        lambda: flushed.append(len(journal)))
    journal.add(b"\x01cmd", 2, 1)
    assert flushed == [1]  # synced right after the append, before any reply can be sent
    journal.deleteEntriesFrom(0)
    assert len(flushed) == 2
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    journal.setCurrentTerm(7, "127.0.0.1:1")  # a vote: durable before it is sent
    assert fsyncs
    reopened = DurableJournal(str(tmp_path / "raft.journal"))
    assert reopened.getCurrentTerm() == 7 and reopened.getVotedForNodeId() == "127.0.0.1:1"


def test_syncobj_uses_the_durable_journal_and_epoll(tmp_path: Path) -> None:
    obj = SyncObj(f"127.0.0.1:{free_port()}", [], SyncObjConf(
        autoTick=False, journalFile=str(tmp_path / "j"), pollerType="epoll"))
    try:
        assert isinstance(obj._SyncObj__raftLog, DurableJournal)
        assert isinstance(obj._poller, EpollPoller)
    finally:
        obj._doDestroy()


def test_epoll_poller_reports_readiness_through_one_fd() -> None:
    import select

    poller = EpollPoller()
    a, b = socket.socketpair()
    seen: list[tuple[int, int]] = []
    try:
        poller.subscribe(a.fileno(), lambda fd, ev: seen.append((fd, ev)), 1 | 4)
        assert select.select([poller.fileno()], [], [], 0)[0] == []
        b.send(b"x")
        assert select.select([poller.fileno()], [], [], 1)[0] == [poller.fileno()]
        poller.poll(0)
        assert seen == [(a.fileno(), 1)]
        poller.unsubscribe(a.fileno())
        poller.unsubscribe(a.fileno())  # twice is harmless
    finally:
        a.close()
        b.close()
        poller.close()


@pytest.mark.parametrize("cls,expected_next", [(SyncObj, 6), (Guarded, 9)])
def test_a_late_acknowledgement_does_not_rewind_the_followers_next_index(
        cls: type[SyncObj], expected_next: int) -> None:
    """Entries up to 8 were sent to the follower (next index 9) when its ack for 5 arrives."""
    follower = f"127.0.0.1:{free_port()}"
    obj = cls(f"127.0.0.1:{free_port()}", [follower], SyncObjConf(autoTick=False))
    node = TCPNode(follower)
    try:
        obj._SyncObj__raftState = 2  # leader
        obj._SyncObj__raftNextIndex[node] = 9
        obj._SyncObj__raftMatchIndex[node] = 4
        obj._SyncObj__lastResponseTime[node] = 0.0
        obj._SyncObj__onMessageReceived(node, {"type": "next_node_idx", "next_node_idx": 6,
                                               "reset": False, "success": True})
        assert obj._SyncObj__raftMatchIndex[node] == 5  # the ack counts either way
        # Unfixed: rewound to 6, so 6..8 are resent and the follower truncates and re-adds
        # entries it already acknowledged. Fixed: it keeps going from 9.
        assert obj._SyncObj__raftNextIndex[node] == expected_next
        obj._SyncObj__onMessageReceived(node, {"type": "next_node_idx", "next_node_idx": 3,
                                               "reset": True, "success": False})
        assert obj._SyncObj__raftNextIndex[node] == 3  # a real gap still rewinds
    finally:
        obj._doDestroy()


@pytest.mark.parametrize("cls,remembers", [(SyncObj, False), (Guarded, True)])
def test_a_restarted_node_keeps_the_membership_changes_in_its_journal(
        tmp_path: Path, cls: type[SyncObj], remembers: bool) -> None:
    """A voter joined (discovery admitted it) and another left, both after the last dump; the
    node restarts with the list it was first started with."""
    me, old, joined = (f"127.0.0.1:{free_port()}" for _ in range(3))
    conf = SyncObjConf(autoTick=False, dynamicMembershipChange=True,
                       journalFile=str(tmp_path / "raft.journal"))
    obj = cls(me, [old], conf)
    raft_log = obj._SyncObj__raftLog
    raft_log.add(bytes([_COMMAND_TYPE.MEMBERSHIP]) + pickle.dumps(["add", joined]), 2, 1)
    raft_log.add(bytes([_COMMAND_TYPE.MEMBERSHIP]) + pickle.dumps(["rem", old]), 3, 1)
    obj._doDestroy()

    again = cls(me, [old], SyncObjConf(autoTick=False, dynamicMembershipChange=True,
                                       journalFile=str(tmp_path / "raft.journal")))
    try:
        members = {n.id for n in again._SyncObj__otherNodes}
        # Unfixed: still the constructor's list — it would wait for votes from the node that
        # left and never talk to the one that joined.
        assert members == ({joined} if remembers else {old})
    finally:
        again._doDestroy()


@pytest.mark.parametrize("cls,remembers", [(SyncObj, False), (Guarded, True)])
def test_a_voter_removed_and_added_back_is_still_a_voter_after_a_restart(
        tmp_path: Path, cls: type[SyncObj], remembers: bool) -> None:
    """The removal is committed, the re-add is not yet: the restarted node must use the
    latest configuration in its log (the re-add), not re-run the committed removal after it."""
    me, other, back = (f"127.0.0.1:{free_port()}" for _ in range(3))

    def conf() -> SyncObjConf:
        return SyncObjConf(autoTick=False, dynamicMembershipChange=True,
                           journalFile=str(tmp_path / "raft.journal"))

    obj = cls(me, [other, back], conf())
    raft_log = obj._SyncObj__raftLog
    raft_log.add(bytes([_COMMAND_TYPE.MEMBERSHIP]) + pickle.dumps(["rem", back]), 2, 1)
    raft_log.add(bytes([_COMMAND_TYPE.MEMBERSHIP]) + pickle.dumps(["add", back]), 3, 1)
    raft_log.setRaftCommitIndex(2)
    obj._doDestroy()

    # Restarted with the voter list saved before the re-add (membership.json lags a little).
    again = cls(me, [other], conf())
    try:
        again._SyncObj__raftCommitIndex = 2
        again._SyncObj__applyLogEntries()  # what its first ticks do with the committed entry
        members = {n.id for n in again._SyncObj__otherNodes}
        assert members == ({other, back} if remembers else {other})
    finally:
        again._doDestroy()
