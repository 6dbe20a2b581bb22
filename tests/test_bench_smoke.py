"""The Raft/swarm benchmark (simulation/bench) runs end to end and writes a complete result.

A smoke run only: real processes on loopback in ``--quick`` mode; it checks the shape and the
sanity of result.json (samples present, positive, summaries consistent, replicas converged,
no child left behind), never a timing threshold.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # `simulation` is not an installed package

from simulation.bench.bench_node import job_duration, job_spec  # noqa: E402
from simulation.bench.cluster_bench import QUICK, percentile, summarize  # noqa: E402

KEYS = {"meta", "commit_latency_ms", "commands_per_s", "failover_s", "requeue_s",
        "replicas_agree", "log_problems", "targets", "checks", "meets_targets"}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0, 1.0], 99) == 7.0
    assert summarize([]) == {"n": 0}
    assert summarize([2.0, 4.0]) == {"n": 2, "min": 2.0, "p50": 2.0, "p99": 4.0, "max": 4.0,
                                     "mean": 3.0}


def test_job_duration_travels_in_the_job() -> None:
    assert job_duration(job_spec("bench/p0001-1", 0.25)) == 0.25
    assert job_duration({"cpv": "a/b-1", "reason": "planned"}) == 0.0
    assert job_duration({"cpv": "a/b-1", "reason": "bench-duration-s=oops"}) == 0.0


def _positive_samples(fig: dict, expected: int | None = None) -> list[float]:
    samples = fig["samples"]
    assert samples, fig
    if expected is not None:
        assert len(samples) == expected
    assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in samples), samples
    s = fig["summary"]
    assert s["n"] == len(samples)
    assert s["min"] <= s["p50"] <= s["p99"] <= s["max"]
    assert s["max"] == max(samples) and s["min"] == min(samples)
    return samples


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "simulation.bench.cluster_bench", "--nodes", "3", "--out",
         str(out), "--quick"], cwd=PROJECT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "meets targets:" in proc.stdout

    result = json.loads((out / "result.json").read_text())
    assert KEYS <= set(result)
    assert result["meta"]["nodes"] == [3] and result["meta"]["quick"] is True

    commit = result["commit_latency_ms"]["3"]
    for role in ("leader", "follower"):
        _positive_samples(commit[role], QUICK.commit_samples)
    load = result["commands_per_s"]["3"]
    _positive_samples(load, QUICK.load_rounds)
    assert load["concurrency"] == QUICK.concurrency and load["latency_ms"]["n"] > 0

    failover = result["failover_s"]["3"]
    assert failover["timeouts"] == 0  # every kill of the leader was followed by a claim
    _positive_samples(failover, QUICK.failover_rounds)
    assert failover["election_s"]["n"] == QUICK.failover_rounds
    requeue = result["requeue_s"]["3"]
    assert requeue["timeouts"] == 0  # every job of the killed worker was leased again
    _positive_samples(requeue)
    assert requeue["detection_s"]["n"] == QUICK.requeue_rounds

    assert result["replicas_agree"] == {"3": True}  # kills and restarts left no divergence
    assert result["targets"] == {"failover_p99_s": 2.0, "requeue_p99_s": 10.0,
                                 "commit_p50_ms": 5.0}
    assert len(result["checks"]) == 4
    assert all(isinstance(c["pass"], bool) for c in result["checks"])
    assert result["meets_targets"] == all(c["pass"] for c in result["checks"])
    assert _processes_mentioning(str(out)) == []  # every child was killed
