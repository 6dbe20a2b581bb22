"""The deterministic simulator: the real swarm (state machine, decisions, pysyncobj with the
project's fixes) on virtual time, a simulated network and disks, seeded faults, and
invariants checked on every run. See simulation/README.md; entry points in ``cli``."""

from .simulation import RunResult, SimConfig, Simulation, run

__all__ = ["RunResult", "SimConfig", "Simulation", "run"]
