"""The fault kinds this tier accepts on the command line; the plan itself lives in
:mod:`simulation.faultplan` (shared with the simulator) and is re-exported here.

The simulator's ``failures`` and ``joins`` are not timed faults of a running cluster and are
refused here.
"""

from __future__ import annotations

from simulation.faultplan import (GAP_S, KINDS, LEADER, NODE_KINDS, SECONDS, Fault,
                                  describe, from_json, plan, to_json, validate)
from simulation.sim.faults import parse_faults

__all__ = ["GAP_S", "KINDS", "LEADER", "NODE_KINDS", "SECONDS", "Fault", "describe",
           "from_json", "parse_kinds", "plan", "to_json", "validate"]


def parse_kinds(text: str) -> frozenset[str]:
    """``partitions,crashes`` / ``all`` → kinds this tier can inject (others refused)."""
    kinds = parse_faults(text)
    if text.strip() in ("all", "ALL"):
        return frozenset(k for k in kinds if k in KINDS)
    unsupported = sorted(kinds - set(KINDS))
    if unsupported:
        raise ValueError(f"the multi-process tier cannot inject {', '.join(unsupported)}; "
                         f"choose from {', '.join(KINDS)} or all")
    return kinds
