"""Many bench runs at once: every workload × every seed, side by side, with one summary.

One run is one sample of a chaotic schedule (two seeds of one workload differ by up to 0.2×
the bound, see simulation/bench/README.md), so a scheduler is judged — and a change to it
read — over many workloads and seeds: the worst ratio, the mean and how many miss the target.
``python -m simulation bench --workload DIR --seed 1-3 --out OUT`` runs each pair in its own
process (``--jobs``), writes each run's ``result.json`` and plot under
``OUT/<workload>/seed-<n>/`` and the table of all of them to ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .bench import TARGET_RATIO, TARGET_SPEEDUP, BenchConfig, run_bench, write_outputs
from .workload import BenchInputError, NodeSpec, fleet_string, load_workload

#: Most runs one command starts: a typo in a seed range must not start a week of work.
MAX_RUNS = 2000
MAX_SEED = 2**31 - 1


def parse_seeds(text: str) -> list[int]:
    """``1``, ``1,4,9`` or ``1-3`` (ranges and lists mix: ``1-3,7``) → the seeds, in order,
    each once."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise BenchInputError(f"bad --seed {text!r}: expected a seed, a list or a range "
                                  "of seeds ≥ 0, e.g. 1, 1,4,9 or 1-3")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or last > MAX_SEED or last - first >= MAX_RUNS:
            raise BenchInputError(f"bad --seed range {part!r}: expected FIRST-LAST with "
                                  f"FIRST ≤ LAST ≤ {MAX_SEED} and at most {MAX_RUNS} seeds")
        seeds.extend(s for s in range(first, last + 1) if s not in seeds)
    return seeds


def workload_files(paths: Iterable[Path]) -> list[Path]:
    """Each ``--workload``: a file, or a directory whose ``*.json`` files are all taken
    (sorted). Every file once, in the order given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise BenchInputError(f"workload directory {path} holds no .json file")
        else:
            found = [path]
        files.extend(f for f in found if f not in files)
    return files


@dataclass(frozen=True)
class Run:
    """One (workload, seed) pair and where its outputs go."""

    workload: Path
    label: str        # the workload's name, made unique among the runs' workloads
    seed: int
    out: Path


def plan_runs(files: Sequence[Path], seeds: Sequence[int], out: Path) -> list[Run]:
    """Every file × every seed; two files with one name (``a/w.json``, ``b/w.json``) get
    ``w``, ``w-2`` so their outputs never overwrite each other."""
    if len(files) * len(seeds) > MAX_RUNS:
        raise BenchInputError(f"{len(files)} workloads × {len(seeds)} seeds is "
                              f"{len(files) * len(seeds)} runs; at most {MAX_RUNS} at once")
    labels: list[str] = []
    for f in files:
        label, n = f.stem, 1
        while label in labels:
            n += 1
            label = f"{f.stem}-{n}"
        labels.append(label)
    return [Run(f, label, seed, out / label / f"seed-{seed}")
            for f, label in zip(files, labels) for seed in seeds]


def _one(run: Run, fleet: list[NodeSpec], config: BenchConfig) -> dict[str, Any]:
    """Run one pair and write its outputs; the row of the summary (or its error)."""
    row: dict[str, Any] = {"workload": run.label, "path": str(run.workload), "seed": run.seed,
                           "out": str(run.out)}
    try:
        workload = load_workload(run.workload)
        result = run_bench(workload, fleet, replace(config, seed=run.seed,
                                                    workload_path=str(run.workload)))
        write_outputs(result, workload, fleet, run.out)
    except BenchInputError as exc:
        return {**row, "error": str(exc)}
    except OSError as exc:
        return {**row, "error": f"cannot write to {run.out}: {exc.strerror or exc}"}
    return {**row, "packages": result["workload"]["packages"],
            "lower_bound_s": result["lower_bound_s"], "makespan_s": result["makespan_s"],
            "ratio_to_lower_bound": result["ratio_to_lower_bound"],
            "tighter_bound_ratio": result["tighter_bound"]["ratio"],
            "speedup_vs_reference": result["speedup_vs_reference"],
            "met": result["targets"]["met"]}


def run_matrix(runs: Sequence[Run], fleet: list[NodeSpec], config: BenchConfig,
               jobs: int) -> list[dict[str, Any]]:
    """Every run, ``jobs`` at a time in child processes (one at a time in this process if
    ``jobs`` is 1); rows in the order of ``runs``, whatever order they finish in."""
    if jobs <= 1 or len(runs) <= 1:
        return [_one(r, fleet, config) for r in runs]
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs))) as pool:
        futures = [pool.submit(_one, r, fleet, config) for r in runs]
        return [f.result() for f in futures]


def summarize(rows: Sequence[dict[str, Any]], fleet: list[NodeSpec],
              config: BenchConfig) -> dict[str, Any]:
    """``summary.json``: every row, and over the runs that ran: worst and mean ratio, how
    many missed a target, the smallest speed-up."""
    done = [r for r in rows if "error" not in r]
    worst = max(done, key=lambda r: r["ratio_to_lower_bound"], default=None)
    slowest = min(done, key=lambda r: r["speedup_vs_reference"], default=None)
    settings = config.settings
    return {
        "fleet": fleet_string(fleet),
        "targets": {"ratio_to_lower_bound_at_most": TARGET_RATIO,
                    "speedup_vs_reference_at_least": TARGET_SPEEDUP},
        "scheduler": {"max_jobs": settings.describe_max_jobs(),
                      "warmup_cycles": settings.warmup_cycles, "noise": settings.noise,
                      "history": settings.history},
        "runs": len(rows), "failed_runs": len(rows) - len(done),
        "met": sum(1 for r in done if r["met"]),
        "over_ratio_target": sum(1 for r in done if r["ratio_to_lower_bound"] > TARGET_RATIO),
        "mean_ratio": round(sum(r["ratio_to_lower_bound"] for r in done) / len(done), 4)
        if done else None,
        # against a bound no schedule beats either: how far from optimal at most
        "mean_tighter_ratio": round(sum(r["tighter_bound_ratio"] for r in done) / len(done), 4)
        if done else None,
        "worst_tighter_ratio": max((r["tighter_bound_ratio"] for r in done), default=None),
        "worst": {k: worst[k] for k in ("workload", "seed", "ratio_to_lower_bound")}
        if worst else None,
        "smallest_speedup": {k: slowest[k] for k in ("workload", "seed",
                                                     "speedup_vs_reference")}
        if slowest else None,
        "rows": list(rows),
    }


def write_summary(summary: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return path


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The table printed after a matrix run: one line per run, then the aggregate."""
    width = max([8, *(len(r["workload"]) for r in summary["rows"])])
    lines = [f"{'workload':<{width}} {'seed':>5} {'pkgs':>5} {'bound s':>8} {'ours s':>8} "
             f"{'ratio':>6} {'tight':>6} {'vs ref':>6}  targets"]
    for r in summary["rows"]:
        if "error" in r:
            lines.append(f"{r['workload']:<{width}} {r['seed']:>5}  error: {r['error']}")
            continue
        lines.append(f"{r['workload']:<{width}} {r['seed']:>5} {r['packages']:>5} "
                     f"{r['lower_bound_s']:>8.0f} {r['makespan_s']:>8.0f} "
                     f"{r['ratio_to_lower_bound']:>6.3f} {r['tighter_bound_ratio']:>6.3f} "
                     f"{r['speedup_vs_reference']:>5.2f}x  "
                     f"{'met' if r['met'] else 'NOT met'}")
    if summary["worst"] is not None:
        w, s = summary["worst"], summary["smallest_speedup"]
        lines.append(
            f"{summary['runs'] - summary['failed_runs']} runs on {summary['fleet']}: "
            f"targets met by {summary['met']}; ratio worst {w['ratio_to_lower_bound']:.3f} "
            f"({w['workload']} seed {w['seed']}), mean {summary['mean_ratio']:.3f}, "
            f"{summary['over_ratio_target']} over {TARGET_RATIO}×; smallest speed-up "
            f"{s['speedup_vs_reference']:.2f}× ({s['workload']} seed {s['seed']}); against "
            f"the tighter bound mean {summary['mean_tighter_ratio']:.3f}, worst "
            f"{summary['worst_tighter_ratio']:.3f}")
    if summary["failed_runs"]:
        lines.append(f"{summary['failed_runs']} run(s) could not run (see above)")
    return lines


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)))
