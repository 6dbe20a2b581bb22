"""Benchmarks of the swarm with real processes on loopback (see README.md)."""
