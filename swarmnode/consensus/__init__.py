"""How commands reach the state machine: the Raft log (pysyncobj) in `raft.py`.

`ReplicatedLog` is the face the node's loops and the API use; `RaftLog` implements it. A swarm
of one machine is a Raft group of one, so there is one code path for every size.
"""

from __future__ import annotations

from typing import Any, Protocol

from swarmnode.state import SwarmState


class ReplicatedLog(Protocol):
    state: SwarmState  # the local replica, for reads (see freshness())

    @property
    def applied_index(self) -> int: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> str | None: ...

    async def submit(self, cmd: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        """Apply `cmd` through the log; retrying with the same `rid` is always safe."""

    async def wait_changed(self, timeout: float) -> None:
        """Return when the local replica applies something new, or after `timeout`."""

    def freshness(self) -> dict[str, Any]:
        """How current local reads are (applied vs committed index, leader, quorum)."""

    def close(self) -> None: ...
