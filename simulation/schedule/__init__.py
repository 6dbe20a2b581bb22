"""`python -m simulation bench`: scheduling quality of the real state machine on virtual time.

workload.py (input, fleet) → model.py (Amdahl durations) → bounds.py (lower bound),
reference.py (the seed's fixed-slot policy), swarm.py (the real SwarmState and the worker's
claim decision) → bench.py (figures, result.json), svg.py (timeline). synth.py writes
workloads of other shapes; cli.py is the subcommand. See simulation/bench/README.md,
"Scheduling bench".
"""
