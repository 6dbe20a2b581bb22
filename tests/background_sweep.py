"""The fixed set of simulator seeds `make test` runs: one `simulation sweep`, started when the
session starts, at idle CPU priority, and checked by a test that runs last.

Issue 5 asks for as many seeds as fit in about five minutes on 2 cores. Run in the foreground
they would add those five minutes to a suite that is already over its 15-minute budget; but
most of the suite waits on real processes (portage phases, Raft and lease timeouts) with a
core idle. The sweep runs in that idle time at the lowest priority there is: it takes no CPU
another process wants (it still shares caches and memory bandwidth, so timings shift a
little), and what is not done when its test comes runs then, alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulation.procs import die_with_parent

REPO = Path(__file__).resolve().parents[1]
#: 140 seeds with every fault, ~4 CPU seconds each: about five minutes on 2 cores.
SEEDS = range(5, 145)
TEST_NAME = "test_a_fixed_sweep_of_seeds_with_every_fault_passes"


def _idle_and_tied_to_pytest() -> None:
    """In the sweep's process, before exec: lowest CPU priority (inherited by its workers),
    and killed if pytest dies (a CI timeout) rather than left running seeds.

    SCHED_IDLE alone is not enough where the kernel groups tasks by session (autogroup,
    the default on desktop kernels and on this machine): the scheduler first shares the CPU
    between sessions, and only within one by priority. Builds run in sessions of their own,
    so an idle-priority sweep in pytest's session took a third of the CPU from two of them
    (measured). In a session of its own, whose group has the lowest weight (nice 19), it
    took none.
    """
    os.setsid()
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write("19")
    except OSError:  # no autogroup (CONFIG_SCHED_AUTOGROUP off): SCHED_IDLE is global then
        pass
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    die_with_parent()


@dataclass
class BackgroundSweep:
    proc: subprocess.Popen[bytes]
    output: Path

    @classmethod
    def start(cls) -> BackgroundSweep:
        output = Path(tempfile.mkdtemp(prefix="swarm-sweep-")) / "sweep.out"
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "simulation", "sweep", "--faults", "all",
                 "--start", str(SEEDS.start), "--seeds", str(len(SEEDS)), "--workers", "2"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_idle_and_tied_to_pytest)
        return cls(proc, output)

    def result(self, timeout_s: float) -> tuple[int, str]:
        """Wait for the sweep to end: (exit status, everything it printed)."""
        rc = self.proc.wait(timeout_s)
        return rc, self.output.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # its workers end with it (simulation/procs.py)
            self.proc.wait()
        self.output.unlink(missing_ok=True)
        self.output.parent.rmdir()


KEY = pytest.StashKey[BackgroundSweep]()


def run_last(items: list[pytest.Item]) -> None:
    """Move the sweep's test to the end, so the sweep has the whole suite's idle time."""
    items.sort(key=lambda item: item.name == TEST_NAME)  # stable: the rest keep their order


def start_if_selected(session: pytest.Session) -> None:
    if any(item.name == TEST_NAME for item in session.items):
        session.config.stash[KEY] = BackgroundSweep.start()


def stop(session: pytest.Session) -> None:
    sweep = session.config.stash.get(KEY, None)
    if sweep is not None:
        sweep.stop()
