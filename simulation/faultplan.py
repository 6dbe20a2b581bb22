"""One fault plan for both tiers: a seeded, pure list of timed faults made before a run.

The deterministic simulator (``python -m simulation run --plan`` / ``--plan-file``) and the
multi-process nemesis (``python -m simulation nemesis``) execute the same list, so a schedule
that breaks one tier can be replayed against the other. A plan is data: it can be printed
(``--print-plan``), saved (``plan.json``), edited by hand and loaded back (:func:`from_json`
checks it and says what is wrong).

Kinds (each tier's execution is in its own module: ``sim/faults.py``, ``nemesis/inject.py``):

* ``partitions`` — every link between two sides cut both ways: ``halves`` (``nodes`` is side
  A), ``leader`` (the leader when the fault starts, alone) or ``bridge`` (``nodes`` is side A
  and, last, the one node that sees both sides);
* ``crashes`` — kill -9 of one node (``node``: ``nodes[0]``; ``leader``: resolved when the
  fault starts), restarted from its disk after ``seconds``;
* ``pauses`` — SIGSTOP of one node, SIGCONT after ``seconds``;
* ``flaky`` — for ``seconds``, one random link after another reset;
* ``slow`` — one node slowed for ``seconds``: its links delayed ``delay_ms`` (real processes),
  or ticking late and building slower (the simulator, a factor of ``1 + delay_ms / 100``);
* ``restart-all`` — every node killed at once, restarted one by one.

Times are seconds from the start of the fault window (wall time for real processes, virtual
time in the simulator); node indexes are 0-based positions (index *i* is node ``n{i+1}`` in
both tiers). At the end of the window every tier heals everything, whatever still runs.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

KINDS = ("partitions", "crashes", "pauses", "flaky", "slow", "restart-all")
NODE_KINDS = ("crashes", "pauses", "slow")  # one node at a time: never two on the same node
#: seconds a fault of each kind lasts (uniform), before the window's end clips it
SECONDS = {"partitions": (3.0, 7.0), "crashes": (2.0, 5.0), "pauses": (2.0, 5.0),
           "flaky": (2.0, 4.0), "slow": (3.0, 6.0), "restart-all": (0.0, 0.0)}
GAP_S = (0.5, 2.0)  # between the starts of two faults (when they may overlap)
RESTART_ALL_S_PER_NODE = 2.0  # what a restart-all occupies: its nodes restart one by one
LEADER = "leader"
SHAPES = {"partitions": ("halves", LEADER, "bridge"), "crashes": ("node", LEADER),
          "pauses": ("node", LEADER), "slow": ("node", LEADER), "flaky": ("",),
          "restart-all": ("",)}
FIELDS = ("at", "kind", "seconds", "shape", "nodes", "delay_ms")


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


def describe(faults: Iterable[Fault], names: list[str]) -> list[str]:
    """One line per fault, ``names[i]`` for node index *i* (what both tiers print)."""
    return [f.describe(names) for f in faults]


def end_s(fault: Fault, nodes: int) -> float:
    """When a fault stops occupying its nodes (a restart-all takes its restarts' time)."""
    if fault.kind == "restart-all":
        return fault.at + RESTART_ALL_S_PER_NODE * nodes
    return fault.at + fault.seconds


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
    alone; nothing starts or lasts past ``window_s``. Pure: the same arguments give the
    same list."""
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
            active.append((end_s(fault, nodes), fault))
        t += rng.uniform(*GAP_S)
    return out


# -- checking a plan (a user may have written it) ------------------------------------------------

def _where(k: int, fault: Fault) -> str:
    return f"fault {k} ({fault.kind} at {fault.at:g}s)"


def _check_one(k: int, f: Fault, nodes: int, window_s: float | None) -> None:
    where = _where(k, f)
    if f.kind not in KINDS:
        raise ValueError(f"fault {k}: unknown kind {f.kind!r}; choose from {', '.join(KINDS)}")
    for name in ("at", "seconds", "delay_ms"):
        value = getattr(f, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {name} must be a number >= 0 (got {value!r})")
    if window_s is not None and f.at >= window_s:
        raise ValueError(f"{where}: starts after the {window_s:g}s fault window ends")
    if f.kind != "restart-all" and f.seconds <= 0:
        raise ValueError(f"{where}: seconds must be greater than 0")
    if f.shape not in SHAPES[f.kind]:
        raise ValueError(f"{where}: shape {f.shape!r} is not one of "
                         f"{', '.join(repr(s) for s in SHAPES[f.kind])}")
    bad = [i for i in f.nodes if not 0 <= i < nodes]
    if bad:
        raise ValueError(f"{where}: node index {bad[0]} out of range: {nodes} nodes are "
                         f"0..{nodes - 1}")
    if len(set(f.nodes)) != len(f.nodes):
        raise ValueError(f"{where}: a node index appears twice in {list(f.nodes)}")
    want = {"node": (1, 1), LEADER: (0, 0), "halves": (1, nodes), "bridge": (2, nodes),
            "": (0, 0)}[f.shape]
    if not want[0] <= len(f.nodes) <= want[1]:
        what = {"node": "exactly one node index", LEADER: "no node indexes (the leader is "
                "found when it starts)", "halves": "side A's node indexes",
                "bridge": "side A's node indexes and the bridge last", "": "no node indexes"}
        raise ValueError(f"{where}: shape {f.shape!r} takes {what[f.shape]} "
                         f"(got {list(f.nodes)})")
    if f.kind == "slow" and f.delay_ms <= 0:
        raise ValueError(f"{where}: a slow node needs delay_ms > 0")


def _occupies(f: Fault, nodes: int) -> set[int] | None:
    """The nodes a node fault holds (None: not a node fault); everyone for an unresolved
    leader or a restart-all."""
    if f.kind == "restart-all" or (f.kind in NODE_KINDS and f.shape == LEADER):
        return set(range(nodes))
    if f.kind in NODE_KINDS:
        return set(f.nodes)
    return None


def validate(faults: Iterable[Fault], nodes: int, window_s: float | None = None) -> list[Fault]:
    """The faults, if every one is well formed and no two node faults hold one node at once
    (a leader victim or a restart-all holds them all); ValueError naming the fault otherwise.
    With ``window_s``, a fault starting after the window is refused too."""
    out = list(faults)
    for k, f in enumerate(out):
        _check_one(k, f, nodes, window_s)
    held = [(k, f, _occupies(f, nodes)) for k, f in enumerate(out)]
    held = [(k, f, occ) for k, f, occ in held if occ is not None]
    for i, (k1, f1, occ1) in enumerate(held):
        for k2, f2, occ2 in held[i + 1:]:
            assert occ1 is not None and occ2 is not None
            common = occ1 & occ2
            if common and f1.at < end_s(f2, nodes) and f2.at < end_s(f1, nodes):
                if "restart-all" in (f1.kind, f2.kind):
                    why = "a restart-all takes every node until they have all restarted"
                elif LEADER in (f1.shape, f2.shape):
                    why = "the leader victim could be any node"
                else:
                    why = f"node {min(common)} would take two node faults at once"
                raise ValueError(f"{_where(k1, f1)} and {_where(k2, f2)} overlap: {why}")
    return out


# -- JSON ----------------------------------------------------------------------------------------

def to_json(faults: Iterable[Fault]) -> list[dict[str, Any]]:
    """Plain dicts (``json.dumps`` them); :func:`from_json` reads them back equal."""
    return [{"at": f.at, "kind": f.kind, "seconds": f.seconds, "shape": f.shape,
             "nodes": list(f.nodes), "delay_ms": f.delay_ms} for f in faults]


def dumps(faults: Iterable[Fault]) -> str:
    """The JSON text of a plan, one fault per line (easy to read and edit by hand)."""
    lines = [json.dumps(d) for d in to_json(faults)]
    return "[\n" + ",\n".join(f"  {line}" for line in lines) + "\n]" if lines else "[]"


def _number(k: int, item: dict[str, Any], name: str, default: float | None) -> float:
    value = item.get(name, default)
    if value is None:
        raise ValueError(f"fault {k}: {name!r} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fault {k}: {name!r} must be a number (got {value!r})")
    return float(value)


def _fault(k: int, item: Any) -> Fault:
    if not isinstance(item, dict):
        raise ValueError(f"fault {k}: expected an object with {', '.join(FIELDS)} "
                         f"(got {item!r})")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise ValueError(f"fault {k}: unknown field {unknown[0]!r}; a fault has "
                         f"{', '.join(FIELDS)}")
    kind, shape, nodes = item.get("kind"), item.get("shape", ""), item.get("nodes", [])
    if not isinstance(kind, str):
        raise ValueError(f"fault {k}: 'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    if not isinstance(shape, str):
        raise ValueError(f"fault {k}: 'shape' must be a string (got {shape!r})")
    if not isinstance(nodes, list) or any(isinstance(i, bool) or not isinstance(i, int)
                                          for i in nodes):
        raise ValueError(f"fault {k}: 'nodes' must be a list of node indexes (got {nodes!r})")
    return Fault(_number(k, item, "at", None), kind,
                 _number(k, item, "seconds", 0.0 if kind == "restart-all" else None),
                 shape, tuple(nodes), _number(k, item, "delay_ms", 0.0))


def from_json(data: Any, nodes: int, window_s: float | None = None) -> list[Fault]:
    """A plan from :func:`to_json`'s form — or a nemesis ``result.json``, whose ``plan`` it
    takes — checked by :func:`validate` for a cluster of ``nodes``."""
    if isinstance(data, dict) and "plan" in data:
        data = data["plan"]
    if not isinstance(data, list):
        raise ValueError("a plan is a JSON list of faults (or an object with a 'plan' list)")
    return validate([_fault(k, item) for k, item in enumerate(data)], nodes, window_s)


def read(path: str, nodes: int, window_s: float | None = None) -> list[Fault]:
    """:func:`from_json` of a file, with the file named in every error."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return from_json(data, nodes, window_s)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
