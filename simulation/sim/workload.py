"""What the simulated swarm builds: a package graph with build durations.

Two sources: a workload file (the format of ``../shared/data/workloads/desktop.json``:
``{"packages": [{"name", "duration_s", "deps", "installed_kib"}]}``) or a small synthetic
graph drawn from the seed (quick enough for hundreds of seeds in a test run). A simulated
build takes ``duration_s × time_scale`` on any node (a slow node takes longer); how cores
change a build's time is the scheduling bench's model, not this one's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulation.schedule.workload import UNKNOWN_SIZE_KIB, load_workload

CATEGORY = "sim-pkgs"
PROFILE = "sim"
REPO_ROOT = Path(__file__).resolve().parents[2]
# The repository carries a copy of ../shared/data/workloads/desktop.json: any checkout has it.
NAMED = {"desktop": "tests/data/workloads/desktop.json"}


@dataclass(frozen=True)
class Package:
    cpv: str
    duration_s: float
    deps: tuple[str, ...]  # cpvs
    size: int              # bytes of the built package


@dataclass(frozen=True)
class Workload:
    name: str
    packages: dict[str, Package]  # cpv → package, deps before dependents

    def job_specs(self, cpvs: list[str]) -> list[dict[str, Any]]:
        """``start_cycle`` jobs for ``cpvs``; deps outside the set are reused, so dropped."""
        chosen = set(cpvs)
        return [{"cpv": c, "deps": sorted(d for d in self.packages[c].deps if d in chosen)}
                for c in sorted(chosen)]

    def dependents_closure(self, roots: list[str]) -> list[str]:
        """``roots`` and everything that (transitively) depends on them: what a change to
        ``roots`` makes the planner rebuild."""
        users: dict[str, list[str]] = {c: [] for c in self.packages}
        for cpv in sorted(self.packages):
            for dep in self.packages[cpv].deps:
                users[dep].append(cpv)
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            cpv = stack.pop()
            if cpv not in seen:
                seen.add(cpv)
                stack.extend(users[cpv])
        return sorted(seen)

    def critical_path_s(self, cpvs: list[str] | None = None) -> float:
        chosen = set(self.packages if cpvs is None else cpvs)
        longest: dict[str, float] = {}
        for cpv in self.packages:  # deps come first
            if cpv in chosen:
                pkg = self.packages[cpv]
                longest[cpv] = pkg.duration_s + max(
                    (longest[d] for d in pkg.deps if d in longest), default=0.0)
        return max(longest.values(), default=0.0)

    def total_s(self, cpvs: list[str] | None = None) -> float:
        chosen = self.packages if cpvs is None else cpvs
        return sum(self.packages[c].duration_s for c in chosen)


def _topological(graph: dict[str, tuple[str, ...]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}
    for root in sorted(graph):
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(node) == 2:
                    continue
                state[node] = 1
            deps = sorted(graph[node])
            if i < len(deps):
                stack.append((node, i + 1))
                if state.get(deps[i]) is None:
                    stack.append((deps[i], 0))
            else:
                state[node] = 2
                order.append(node)
    return order


def synthetic(rng: random.Random, packages: int = 30, time_scale: float = 1.0) -> Workload:
    """A seeded DAG: a few roots, each package depending on up to three earlier ones, build
    times from 1 s to 60 s (a long tail, like real builds, but short enough that a run takes
    a second or two of wall time)."""
    cpvs = [f"{CATEGORY}/p{i:03d}-1.0" for i in range(packages)]
    graph: dict[str, Package] = {}
    for i, cpv in enumerate(cpvs):
        ndeps = 0 if i < 3 else rng.choice((0, 1, 1, 2, 2, 3))
        deps = tuple(sorted({cpvs[rng.randrange(i)] for _ in range(ndeps)})) if i else ()
        duration = min(60.0, 1.0 + rng.expovariate(1 / 10.0)) * time_scale
        graph[cpv] = Package(cpv, round(duration, 3), deps, rng.randrange(10_000, 5_000_000))
    return Workload(f"synthetic-{packages}", graph)


def resolve(name: str) -> Path:
    """A named workload (``desktop``) relative to the repository, or a file path."""
    path = REPO_ROOT / NAMED[name] if name in NAMED else Path(name)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"workload {name!r}: no file {path}; give `desktop` or the "
                                "path of a JSON file like tests/data/workloads/desktop.json")
    return path


def load(path: Path, time_scale: float = 1.0) -> Workload:
    """A workload file, read and checked by the scheduling bench's parser (the same errors;
    deps outside the file ignored, one dep of every cycle dropped); durations × ``time_scale``,
    names made into cpvs."""
    parsed = load_workload(path)
    cpv = {p.name: f"{CATEGORY}/{p.pn}-1" for p in parsed.packages}
    deps = {cpv[p.name]: tuple(sorted(cpv[d] for d in p.deps)) for p in parsed.packages}
    by_cpv = {cpv[p.name]: p for p in parsed.packages}
    graph: dict[str, Package] = {}
    for c in _topological(deps):
        p = by_cpv[c]
        kib = UNKNOWN_SIZE_KIB if p.installed_kib is None else p.installed_kib
        graph[c] = Package(c, round(p.duration_s * time_scale, 3), deps[c],
                           max(1, int(kib) * 1024))
    return Workload(path.stem, graph)
