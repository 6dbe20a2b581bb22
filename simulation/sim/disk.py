"""A node's disk: what survives its crash.

The Raft journal is an in-memory list standing for the file, with the durability of the
daemon's ``DurableJournal`` (pysyncobj_fixes fix 3): every entry change and every term/vote
change is on disk before pysyncobj acts on it; the commit index, as in pysyncobj's
FileJournal, is written lazily (on its one-second timer), so a crash can lose the last second
of it. The full dump is a real file in the node's directory, written and read by the daemon's
own serializer (``RaftLog._write_dump`` / ``_read_dump``). The artifact store and the saved
membership (``membership.json`` in the daemon) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj.journal import Journal

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's journal record


class SimJournal(Journal):
    """pysyncobj's Journal over a list that *is* the disk (it outlives every SyncObj)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.term = 0
        self.voted_for: str | None = None
        self.commit_index = 1      # durable value
        self._commit_pending = 1   # what pysyncobj set; persisted on its one-second timer

    def add(self, command: bytes, idx: int, term: int) -> None:
        self.entries.append((command, idx, term))

    def clear(self) -> None:
        self.entries = []

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        del self.entries[entryFrom:]

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        self.entries = self.entries[entryTo:]

    def __getitem__(self, item: Any) -> Any:
        return self.entries[item]

    def __len__(self) -> int:
        return len(self.entries)

    def _destroy(self) -> None:
        pass

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802
        self._commit_pending = raftCommitIndex

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self.commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802
        self.term, self.voted_for = term, votedForNodeId

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self.term

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        return self.voted_for

    def onOneSecondTimer(self) -> None:  # noqa: N802
        self.commit_index = self._commit_pending

    def lose_unsynced(self) -> None:
        """A crash: the commit index written since the last timer never reached the disk."""
        self._commit_pending = self.commit_index


@dataclass
class SimDisk:
    """Everything of one node that survives a crash or a whole-cluster restart."""

    node_id: str
    dir: Path
    journal: SimJournal = field(default_factory=SimJournal)
    store: set[str] = field(default_factory=set)           # sha256 of objects held
    membership: dict[str, Any] | None = None                # the daemon's membership.json

    @property
    def journal_key(self) -> str:
        """The journalFile name pysyncobj is given; the sim's factory maps it to ``journal``."""
        return str(self.dir / "raft.journal")

    @property
    def dump_file(self) -> Path:
        return self.dir / "raft.dump"

    def wipe_replica(self) -> None:
        """RaftLog.wipe: journal, term, vote and dump gone (the journal object stays the one
        pysyncobj's journal factory hands out for this node)."""
        j = self.journal
        j.entries, j.term, j.voted_for = [], 0, None
        j.commit_index = j._commit_pending = 1
        self.dump_file.unlink(missing_ok=True)

    def crash(self) -> None:
        self.journal.lose_unsynced()
