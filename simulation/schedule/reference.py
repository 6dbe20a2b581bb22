"""The seed system's policy, the baseline: fixed 4-core slots fed in emerge order.

A node of C cores has max(1, C // 4) slots and every build gets 4 cores (C on a node with
fewer). Jobs are queued in emerge order — each package right after its dependencies, packages
otherwise in file order (the depth-first merge list emerge prints) — and a free slot takes the
first job of the queue whose dependencies are built. Slots are filled in fleet order; the
sweeper is an ordinary node here (the seed's sweeper only re-ran stuck builds).
"""

from __future__ import annotations

import heapq

from .model import DurationModel
from .timeline import Build
from .workload import NodeSpec, Workload

SLOT_CORES = 4


def emerge_order(workload: Workload) -> list[str]:
    """Depth-first post-order from each package in file order, deps in file order."""
    pkgs = workload.by_name()
    order: list[str] = []
    done: set[str] = set()
    for root in workload.packages:
        stack: list[tuple[str, int]] = [(root.name, 0)]
        while stack:
            name, i = stack.pop()
            if name in done:
                continue
            deps = sorted(pkgs[name].deps, key=lambda d: pkgs[d].index)
            while i < len(deps) and deps[i] in done:
                i += 1
            if i < len(deps):
                stack.append((name, i + 1))
                stack.append((deps[i], 0))
            else:
                done.add(name)
                order.append(name)
    return order


def simulate_reference(workload: Workload, model: DurationModel,
                       fleet: list[NodeSpec]) -> list[Build]:
    position = {name: i for i, name in enumerate(emerge_order(workload))}
    missing = {p.name: len(p.deps) for p in workload.packages}
    dependents = workload.dependents()
    slots = [(n.node_id, min(SLOT_CORES, n.cores)) for n in fleet
             for _ in range(max(1, n.cores // SLOT_CORES))]
    free = list(range(len(slots)))                   # slot indices, a heap
    ready = [position[n] for n, c in missing.items() if c == 0]  # emerge positions, a heap
    heapq.heapify(ready)
    names = sorted(position, key=position.__getitem__)
    running: list[tuple[float, int, str, int]] = []  # (end, seq, name, slot)
    builds: list[Build] = []
    now, seq = 0.0, 0
    while ready or running:
        while ready and free:
            name = names[heapq.heappop(ready)]
            slot = heapq.heappop(free)
            node_id, cores = slots[slot]
            end = now + model.duration(name, cores)
            heapq.heappush(running, (end, seq, name, slot))
            builds.append(Build(name, node_id, cores, now, end))
            seq += 1
        now = running[0][0]
        while running and running[0][0] == now:
            _, _, name, slot = heapq.heappop(running)
            heapq.heappush(free, slot)
            for d in dependents[name]:
                missing[d] -= 1
                if missing[d] == 0:
                    heapq.heappush(ready, position[d])
    return builds
