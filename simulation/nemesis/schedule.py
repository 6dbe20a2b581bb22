"""The seeded fault schedule of a multi-process run, planned up front over wall time.

The kinds are the simulator's timed faults (``simulation/sim/faults.py``), made real:

* ``partitions`` — every link between two sides blackholed both ways: a majority/minority
  split (``halves``), the current leader alone (``leader``), or two halves only one node sees
  both of (``bridge``);
* ``crashes`` — ``kill -9`` of a node's process group (sometimes the leader's), restarted
  from its data dir after a while;
* ``pauses`` — ``SIGSTOP`` of a node's process group, ``SIGCONT`` after a while;
* ``flaky`` — bursts of RSTs: random links reset both ways for a moment, again and again;
* ``slow`` — every link to and from one node delayed (the real tier cannot slow a process's
  clock, so a slow node is a slow network around it);
* ``restart-all`` — every node killed at once, restarted one by one.

The simulator's ``failures`` and ``joins`` are not timed faults of a running cluster and are
refused here. Unlike the simulator's nemesis, which draws as it goes, the plan is a list made
before the run: it can be printed, and a test can ask for a fixed one. Every chosen kind occurs
at least once (in a seeded order) when the window is long enough; ``leader`` targets are
resolved when the fault starts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from simulation.sim.faults import parse_faults

KINDS = ("partitions", "crashes", "pauses", "flaky", "slow", "restart-all")
NODE_KINDS = ("crashes", "pauses", "slow")  # one node at a time: never two on the same node
#: seconds a fault of each kind lasts (uniform), before the window's end clips it
SECONDS = {"partitions": (3.0, 7.0), "crashes": (2.0, 5.0), "pauses": (2.0, 5.0),
           "flaky": (2.0, 4.0), "slow": (3.0, 6.0), "restart-all": (0.0, 0.0)}
GAP_S = (0.5, 2.0)  # between the starts of two faults (when they may overlap)
LEADER = "leader"


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


@dataclass(frozen=True)
class Fault:
    """One planned fault: what, when (seconds into the window), for how long, where."""

    at: float
    kind: str
    seconds: float
    shape: str = ""               # partitions: halves|leader|bridge; node kinds: leader|node
    nodes: tuple[int, ...] = ()   # node indexes: the victim, or side A (and the bridge last)
    delay_ms: float = 0.0         # slow: the added delay per chunk

    def describe(self, names: list[str]) -> str:
        who = ",".join(names[i] for i in self.nodes) if self.nodes else ""
        if self.shape == LEADER:
            who = "the leader"
        elif self.kind == "partitions":
            who = f"{self.shape} {who}"
        extra = f" {self.delay_ms:g}ms" if self.kind == "slow" else ""
        return " ".join(x for x in (f"{self.at:6.2f}s {self.kind}", who, extra.strip(),
                                    f"for {self.seconds:.2f}s" if self.seconds else "") if x)


def _node_fault(rng: random.Random, kind: str, at: float, seconds: float, n: int,
                free: list[int]) -> Fault | None:
    delay_ms = float(rng.choice((50, 100, 200, 300))) if kind == "slow" else 0.0
    if kind in ("crashes", "pauses") and rng.random() < 0.3:
        return Fault(at, kind, seconds, LEADER, (), delay_ms)  # resolved when it starts
    if not free:
        return None
    return Fault(at, kind, seconds, "node", (rng.choice(free),), delay_ms)


def _partition(rng: random.Random, at: float, seconds: float, n: int) -> Fault:
    shape = rng.choice(("halves", LEADER, "bridge"))
    order = list(range(n))
    rng.shuffle(order)
    if shape == LEADER:
        return Fault(at, "partitions", seconds, LEADER)
    if shape == "bridge" and n >= 3:
        bridge, rest = order[0], order[1:]
        side = sorted(rest[: rng.randrange(1, len(rest))])
        return Fault(at, "partitions", seconds, "bridge", (*side, bridge))
    return Fault(at, "partitions", seconds, "halves", tuple(sorted(order[: max(1, n // 2)])))


def plan(seed: int, nodes: int, kinds: Iterable[str], window_s: float,
         max_active: int = 2) -> list[Fault]:
    """The faults of one run: each chosen kind once in a seeded order, then random ones,
    at most ``max_active`` at a time, never two node faults on one node, ``restart-all``
    alone; nothing starts or lasts past ``window_s``."""
    chosen = sorted(set(kinds))
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(KINDS)}")
    if nodes < 1 or max_active < 1:
        raise ValueError("a plan needs at least one node and one active fault")
    rng = random.Random(f"nemesis:{seed}")
    order = list(chosen)
    rng.shuffle(order)
    out: list[Fault] = []
    active: list[tuple[float, Fault]] = []  # (end, fault)
    t = rng.uniform(*GAP_S)
    while chosen and t < window_s:
        kind = order[len(out)] if len(out) < len(order) else rng.choice(chosen)
        active = [(end, f) for end, f in active if end > t]
        alone = [end for end, f in active if f.kind == "restart-all"]
        if alone:  # nothing else while every node restarts
            t = max(alone) + rng.uniform(*GAP_S)
            continue
        if len(active) >= max_active or (kind == "restart-all" and active):
            t = min(end for end, _ in active) if kind != "restart-all" else \
                max(end for end, _ in active)
            t += rng.uniform(*GAP_S)
            continue
        lo, hi = SECONDS[kind]
        seconds = min(rng.uniform(lo, hi), window_s - t)
        if kind != "restart-all" and seconds < lo / 2:
            break
        if kind == "partitions":
            fault: Fault | None = _partition(rng, t, seconds, nodes)
        elif kind in NODE_KINDS:
            busy = {i for _, f in active for i in f.nodes if f.kind in NODE_KINDS}
            if any(f.kind in NODE_KINDS and f.shape == LEADER for _, f in active):
                busy = set(range(nodes))  # an unresolved leader victim could be anyone
            fault = _node_fault(rng, kind, t, seconds, nodes,
                                [i for i in range(nodes) if i not in busy])
            if fault is not None and fault.shape == LEADER and busy:
                fault = None  # the leader may be the busy node
        else:
            fault = Fault(t, kind, seconds)
        if fault is not None:
            out.append(fault)
            end = t + (2.0 * nodes if kind == "restart-all" else seconds)  # restarts take time
            active.append((end, fault))
        t += rng.uniform(*GAP_S)
    return out
