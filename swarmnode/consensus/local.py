"""Single-node command log: the state machine behind an fsynced journal and a snapshot.

This is the consensus layer of a one-node swarm. It has the same face as the Raft adapter
(`submit(cmd) -> result`, `state`, `applied_index`), so the node's loops do not care which one
they run on. A command is acknowledged only after its journal record is on disk; a restart
loads the snapshot and replays the journal, which gives back exactly the acknowledged state
because `SwarmState.apply` is deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path
from typing import Any

import msgpack

from swarmnode.state import SwarmState

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")  # length prefix of each journal record


class LocalLog:
    """The replicated-state interface, backed by one node's disk."""

    def __init__(self, data_dir: Path, snapshot_every: int = 1000) -> None:
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.snapshot_path = self.dir / "state.snapshot"
        self.journal_path = self.dir / "state.journal"
        self.snapshot_every = snapshot_every
        self.state = SwarmState()
        self.applied_index = 0
        self._since_snapshot = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._load()
        self._journal = open(self.journal_path, "ab")

    # -- recovery ---------------------------------------------------------------------------
    def _load(self) -> None:
        if self.snapshot_path.exists():
            snap = msgpack.unpackb(self.snapshot_path.read_bytes(), raw=False)
            self.state = SwarmState.from_bytes(snap["state"])
            self.applied_index = snap["index"]
        if not self.journal_path.exists():
            return
        data = self.journal_path.read_bytes()
        pos = good = 0
        while pos + _HEADER.size <= len(data):
            (length,) = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if end > len(data):
                break  # a torn final record: it was never acknowledged
            index, cmd, live = msgpack.unpackb(data[pos + _HEADER.size:end], raw=False)
            if index > self.applied_index:
                result = self.state.apply(cmd)
                self.applied_index = index
                if live is not None and result.get("ok") != live:
                    # apply is deterministic, so this means a bug: say so loudly.
                    log.error("journal replay diverged at index %d (%s): the live result was "
                              "ok=%s, the replay gives %s", index, cmd.get("op"), live, result)
            pos = good = end
        if good != len(data):
            log.warning("journal: dropping a torn record at byte %d (never acknowledged)", good)
            with open(self.journal_path, "r+b") as fh:
                fh.truncate(good)
        self._since_snapshot = 0

    # -- the consensus interface -------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader_id(self) -> str | None:
        return None

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Apply `cmd`, make it durable and return its result."""
        async with self._lock:
            index = self.applied_index + 1
            # Apply, write the record, then wait for the disk. Nothing can interrupt the steps
            # before the await, so memory and journal never disagree: a caller cancelled while
            # waiting for fsync (a heartbeat task stopped mid-call, say) leaves a command that
            # is applied AND journaled, just not acknowledged — a retry with its rid is a no-op.
            # (Journal first and apply after the await would lose the apply on cancellation,
            # and a restart would then replay a command the live node never applied.)
            result = self.state.apply(cmd)
            self.applied_index = index
            record = msgpack.packb([index, cmd, bool(result.get("ok"))], use_bin_type=True)
            try:
                self._journal.write(_HEADER.pack(len(record)) + record)
                self._journal.flush()
            except OSError:
                self._reload()  # the disk refused the record: forget the apply too
                raise
            try:
                await asyncio.to_thread(os.fsync, self._journal.fileno())
            finally:  # also when the caller is cancelled: the command is applied either way
                self._since_snapshot += 1
                self._changed.set()
                self._changed = asyncio.Event()
            if self._since_snapshot >= self.snapshot_every:
                self._snapshot()
            return result

    async def wait_changed(self, timeout: float) -> None:
        """Return when the state changes or after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _reload(self) -> None:
        """Rebuild the state from disk alone (after a failed journal write)."""
        self._journal.close()
        self.state, self.applied_index = SwarmState(), 0
        self._load()
        self._journal = open(self.journal_path, "ab")

    def _snapshot(self) -> None:
        tmp = self.snapshot_path.with_suffix(".tmp")
        blob = msgpack.packb({"index": self.applied_index, "state": self.state.to_bytes()},
                             use_bin_type=True)
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.snapshot_path)
        # The snapshot covers every journal record, so start a new journal.
        self._journal.close()
        self._journal = open(self.journal_path, "wb")
        os.fsync(self._journal.fileno())
        self._since_snapshot = 0

    def close(self) -> None:
        self._journal.close()
