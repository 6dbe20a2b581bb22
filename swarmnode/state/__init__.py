"""The replicated state machine: records, commands, scheduling policy — pure, no I/O.

``SwarmState.apply(cmd)`` is the only mutator; Raft replicates it and the simulator drives it.
"""

from .machine import DEDUP_LIMIT, DEFAULT_CONFIG, SwarmState
from .records import (BLOCKED, BUILT, FAILED, JOB_STATES, LEASED, PLANNED, READY, UNFINISHED,
                      Artifact, Cycle, Job, Lease, Node, Production, Release)
from .risk import SAFE_BELOW, risk_score

__all__ = [
    "SwarmState", "DEDUP_LIMIT", "DEFAULT_CONFIG",
    "Artifact", "Cycle", "Job", "Lease", "Node", "Production", "Release",
    "PLANNED", "READY", "LEASED", "BUILT", "FAILED", "BLOCKED", "JOB_STATES", "UNFINISHED",
    "risk_score", "SAFE_BELOW",
]
