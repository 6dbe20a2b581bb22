"""`python -m simulation bench`: scheduling quality of the real state machine on virtual time.

workload.py (input) → model.py (Amdahl durations) → bounds.py (lower bound), reference.py (the
seed's fixed-slot policy), swarm.py (the real SwarmState + decisions) → report.py, timeline.py.
See simulation/bench/README.md, section "Scheduling bench".
"""
