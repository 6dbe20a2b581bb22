"""Building commands for the state machine: time and request ids come in from here."""

from __future__ import annotations

import time
import uuid
from typing import Any


def command(op: str, **fields: Any) -> dict[str, Any]:
    """A state-machine command stamped with a fresh request id and this node's clock.

    The state machine never reads a clock or makes ids itself (it must be deterministic), so
    every proposer stamps its commands; retrying with the same dict is deduplicated by `rid`.
    """
    return {"op": op, "rid": uuid.uuid4().hex, "ts": time.time(), **fields}
