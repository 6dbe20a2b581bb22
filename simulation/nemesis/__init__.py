"""The multi-process nemesis: the simulator's fault schedule against real ``swarmnode serve``
processes (one network namespace each, a per-link TCP proxy between them), checked with the
simulator's invariants over the recorded history. See README.md; entry point ``cli``."""
