"""One bench run: both policies on one workload and fleet, the figures, result.json, the plot."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .bounds import big_node_bound, gate_bound, lower_bound
from .model import build_model
from .reference import SLOT_CORES, simulate_reference
from .svg import timeline_svg
from .swarm import SwarmSettings, simulate_swarm
from .timeline import Build, ChainLink, NodeFigures, finishing_chain, makespan, node_figures
from .workload import NodeSpec, Workload, fleet_string

#: The issue's targets for a held-out workload on the reference fleet.
TARGET_RATIO = 1.3
TARGET_SPEEDUP = 2.0


@dataclass(frozen=True)
class BenchConfig:
    seed: int = 1
    settings: SwarmSettings = SwarmSettings()
    serial_override: dict[str, Any] | None = None
    workload_path: str = ""


def _nodes(figures: list[NodeFigures]) -> list[dict[str, Any]]:
    return [{**asdict(f), "utilisation": round(f.utilisation, 4),
             "busy_core_s": round(f.busy_core_s, 1)} for f in figures]


def _builds(builds: list[Build]) -> list[dict[str, Any]]:
    return [{"name": b.name, "node": b.node_id, "cores": b.cores, "start_s": round(b.start, 3),
             "end_s": round(b.end, 3)} for b in sorted(builds, key=lambda b: (b.start, b.name))]


def _chain(links: list[ChainLink]) -> dict[str, Any]:
    return {"waited_s": round(sum(c.wait for c in links), 3),
            "builds": [{"name": c.name, "node": c.node_id, "cores": c.cores,
                        "ready_s": round(c.ready, 3), "start_s": round(c.start, 3),
                        "end_s": round(c.end, 3), "waited_s": round(c.wait, 3)}
                       for c in links]}


def run_bench(workload: Workload, fleet: list[NodeSpec], config: BenchConfig) -> dict[str, Any]:
    """Simulate both policies and return the result document (see README for the keys)."""
    started = time.perf_counter()
    model = build_model(workload, config.serial_override)
    bound = lower_bound(workload, model, fleet)
    gate = gate_bound(workload, model, fleet)
    big = big_node_bound(workload, model, fleet)
    tighter = max(bound.value, gate.value_s, big.value_s)
    binding = ("lower_bound" if tighter <= bound.value
               else "gate" if gate.value_s >= big.value_s else "big_node")
    t0 = time.perf_counter()
    ref_builds = simulate_reference(workload, model, fleet)
    t1 = time.perf_counter()
    run = simulate_swarm(workload, model, fleet, config.seed, config.settings)
    t2 = time.perf_counter()
    span, ref_span = makespan(run.builds), makespan(ref_builds)
    ratio = span / bound.value if bound.value > 0 else float("inf")
    speedup = ref_span / span if span > 0 else float("inf")
    settings = config.settings
    return {
        "makespan_s": round(span, 3),
        "lower_bound_s": round(bound.value, 3),
        "reference_policy_makespan_s": round(ref_span, 3),
        "ratio_to_lower_bound": round(ratio, 4),
        "speedup_vs_reference": round(speedup, 4),
        "reference_ratio_to_lower_bound": round(ref_span / bound.value, 4)
        if bound.value > 0 else None,
        "targets": {"ratio_to_lower_bound_at_most": TARGET_RATIO,
                    "speedup_vs_reference_at_least": TARGET_SPEEDUP,
                    "met": ratio <= TARGET_RATIO and speedup >= TARGET_SPEEDUP},
        "lower_bound": {"critical_path_s": round(bound.critical_path_s, 3),
                        "work_s": round(bound.work_s, 3), "max_cores": bound.max_cores,
                        "total_cores": bound.total_cores,
                        "critical_path": list(bound.critical_path)},
        # not the bound, but no schedule beats it either: how far from optimal at most
        "tighter_bound": {"value_s": round(tighter, 3), "binding": binding,
                          "gate": gate.gate, "gate_s": round(gate.value_s, 3),
                          "gate_done_s": round(gate.gate_done_s, 3),
                          "work_behind_core_s": round(gate.work_behind_core_s, 1),
                          "big_node": {"value_s": round(big.value_s, 3),
                                       "builds": list(big.builds),
                                       "small_cores": big.small_cores},
                          "ratio": round(span / tighter, 4) if tighter > 0 else None},
        "fleet": {"spec": fleet_string(fleet), "total_cores": sum(n.cores for n in fleet),
                  "nodes": [{"node_id": n.node_id, "cores": n.cores, "sweeper": n.sweeper,
                             "max_jobs": settings.jobs_for(n.cores),
                             "reference_slots": max(1, n.cores // SLOT_CORES)}
                            for n in fleet]},
        "finishing_chain": _chain(finishing_chain(
            run.builds, {p.name: p.deps for p in workload.packages})),
        "nodes": _nodes(node_figures(fleet, run.builds)),
        "reference_nodes": _nodes(node_figures(fleet, ref_builds)),
        "workload": {"name": workload.name, "path": config.workload_path,
                     "packages": len(workload.packages), "sha256": workload.sha256,
                     "total_duration_s": round(sum(p.duration_s for p in workload.packages), 3),
                     "ignored_deps": workload.ignored_deps,
                     "cycle_deps_dropped": [list(e) for e in workload.cycle_deps_dropped]},
        "seed": config.seed,
        "model": model.describe(),
        "scheduler": {"state_machine": "swarmnode.state.SwarmState (claim/complete)",
                      "max_jobs": settings.describe_max_jobs(),
                      "warmup_cycles": settings.warmup_cycles, "noise": settings.noise,
                      "history": settings.history,
                      "lease_ttl_s": settings.lease_ttl_s, "commands": run.commands,
                      "refused_claims": run.refused_claims,
                      "learned_estimates": run.learned_estimates,
                      "state_digest": run.digest},
        "wall_time_s": {"total": round(time.perf_counter() - started, 3),
                        "reference": round(t1 - t0, 3), "swarm": round(t2 - t1, 3)},
        "builds": _builds(run.builds),
        "reference_builds": _builds(ref_builds),
    }


def write_outputs(result: dict[str, Any], workload: Workload, fleet: list[NodeSpec],
                  out: Path) -> None:
    """``out/result.json`` and ``out/timeline.svg``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")

    def builds(key: str) -> list[Build]:
        return [Build(b["name"], b["node"], b["cores"], b["start_s"], b["end_s"])
                for b in result[key]]

    title = (f"{workload.name} ({len(workload.packages)} packages) on {fleet_string(fleet)}, "
             f"seed {result['seed']}: makespan {result['makespan_s']:.0f} s = "
             f"{result['ratio_to_lower_bound']:.2f}× the lower bound, "
             f"{result['speedup_vs_reference']:.2f}× faster than the reference")
    svg = timeline_svg(
        [(f"swarmnode scheduler — makespan {result['makespan_s']:.0f} s", builds("builds")),
         (f"reference: {SLOT_CORES}-core slots, emerge order — makespan "
          f"{result['reference_policy_makespan_s']:.0f} s", builds("reference_builds"))],
        fleet, {p.name: p.duration_s for p in workload.packages}, result["lower_bound_s"], title)
    (out / "timeline.svg").write_text(svg)


def _chain_line(result: dict[str, Any]) -> str:
    """Where the swarm's makespan was lost: the waits on the chain that ended it."""
    chain = result["finishing_chain"]
    worst = max(chain["builds"], key=lambda b: b["waited_s"], default=None)
    longest = (f" (longest: {worst['name']}, {worst['waited_s']:.0f} s)"
               if worst and worst["waited_s"] > 0 else "")
    return (f"  finishing chain    {len(chain['builds'])} builds, "
            f"{chain['waited_s']:.0f} s ready but not started{longest}")


def _tighter_line(result: dict[str, Any]) -> list[str]:
    """The tighter bound and what makes it, when it is above the issue's bound."""
    t = result["tighter_bound"]
    if t["binding"] == "gate":
        why = (f"{t['gate']} done ≥ {t['gate_done_s']:.0f} s, then "
               f"{t['work_behind_core_s']:.0f} core-s behind it")
    elif t["binding"] == "big_node":
        x, y = t["big_node"]["builds"]
        why = (f"{x} and {y} both need the {result['lower_bound']['max_cores']}-core node: "
               f"in turn, or one on ≤ {t['big_node']['small_cores']} cores")
    else:
        return []
    return [f"  tighter bound      {t['value_s']:>10.0f} s   ({why})"]


def summary_table(result: dict[str, Any]) -> str:
    """The few lines printed after a run."""
    cut = result["workload"]["cycle_deps_dropped"]
    lines = [
        f"workload {result['workload']['name']} ({result['workload']['packages']} packages), "
        f"fleet {result['fleet']['spec']} ({result['fleet']['total_cores']} cores), "
        f"seed {result['seed']}",
        *([f"  dependency cycles: ignored {len(cut)} dep(s) to break them: "
           + ", ".join(f"{p} → {d}" for p, d in cut[:5])
           + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")] if cut else []),
        f"  lower bound        {result['lower_bound_s']:>10.0f} s   (critical path "
        f"{result['lower_bound']['critical_path_s']:.0f} s at {result['lower_bound']['max_cores']}"
        f" cores, work {result['lower_bound']['work_s']:.0f} s)",
        *_tighter_line(result),
        f"  swarmnode          {result['makespan_s']:>10.0f} s   "
        f"{result['ratio_to_lower_bound']:.3f}× bound"
        + (f", {result['tighter_bound']['ratio']:.3f}× the tighter one"
           if result["tighter_bound"]["value_s"] > result["lower_bound_s"] else ""),
        f"  reference policy   {result['reference_policy_makespan_s']:>10.0f} s   "
        f"{result['reference_ratio_to_lower_bound']:.3f}× bound; swarmnode is "
        f"{result['speedup_vs_reference']:.2f}× faster",
        f"  targets (≤ {TARGET_RATIO}× bound, ≥ {TARGET_SPEEDUP}× faster): "
        f"{'met' if result['targets']['met'] else 'NOT met'}",
        _chain_line(result),
        "  node   cores  jobs  util   | reference jobs  util",
    ]
    for ours, ref in zip(result["nodes"], result["reference_nodes"]):
        tag = f"{ours['cores']}{'s' if ours['sweeper'] else ''}"
        lines.append(f"  {ours['node_id']:<6} {tag:>5} {ours['dispatches']:>5} "
                     f"{ours['utilisation']:>5.0%}  | {ref['dispatches']:>14} "
                     f"{ref['utilisation']:>5.0%}")
    lines.append(f"  wall time {result['wall_time_s']['total']:.1f} s")
    return "\n".join(lines)
