"""How commands reach the state machine.

`ReplicatedLog` is what the node's loops use; `LocalLog` (one node, an fsynced journal) is the
implementation today, and the Raft adapter (pysyncobj) will be another with the same face, so
the worker, the maintenance loop and the API do not change when replication arrives.
"""

from __future__ import annotations

from typing import Any, Protocol

from swarmnode.state import SwarmState


class ReplicatedLog(Protocol):
    state: SwarmState  # the local replica, for reads
    applied_index: int  # how far the local replica has applied the log

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> str | None: ...

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Apply `cmd` through the log; retrying with the same `rid` is always safe."""

    async def wait_changed(self, timeout: float) -> None:
        """Return when the local replica applies something new, or after `timeout`."""

    def close(self) -> None: ...
