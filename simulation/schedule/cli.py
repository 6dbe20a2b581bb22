"""``python -m simulation bench``: argument parsing and the run (see simulation/__main__.py)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .bench import BenchConfig, run_bench, summary_table, write_outputs
from .matrix import (Run, default_jobs, parse_seeds, plan_runs, run_matrix, summarize,
                     summary_lines, workload_files, write_summary)
from .model import load_override
from .swarm import ALL_CORES, HALF_CORES, SwarmSettings
from .workload import BenchInputError, NodeSpec, load_workload, parse_fleet

REFERENCE_FLEET = "16,8,14,24,8s"


def _max_jobs(text: str) -> int:
    if text == "auto":
        return 0
    if text == "cores":
        return ALL_CORES
    if text == "half":
        return HALF_CORES
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected auto, half, cores or a number ≥ 1 "
                                     f"(got {text!r})")


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "bench", help="scheduling quality of the real scheduler at scale, on virtual time",
        description="Run a workload through the real SwarmState scheduler and through the "
                    "reference policy (4-core slots, emerge order) on a simulated fleet; "
                    "write OUT/result.json and OUT/timeline.svg.")
    p.add_argument("--workload", type=Path, required=True, action="append",
                   help="JSON file in the format of shared/data/workloads/desktop.json, or a "
                        "directory of them; repeat it for several (each workload × each "
                        "seed is one run, see --seed)")
    p.add_argument("--fleet", default=REFERENCE_FLEET,
                   help=f"cores per node, comma-separated; 's' marks a sweeper "
                        f"(default {REFERENCE_FLEET})")
    p.add_argument("--out", type=Path, required=True, help="directory for the results")
    p.add_argument("--seed", default="1", metavar="N|N,M|FIRST-LAST",
                   help="same inputs + seed → same result (default 1); several seeds, or "
                        "several workloads, run side by side with one summary")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="several runs: how many at once, each in its own process "
                        "(default: one per CPU)")
    p.add_argument("--serial-fraction", type=Path, metavar="FILE.json",
                   help='override the serial-fraction model: {"default": {...}, '
                        '"packages": {"name": s}}')
    p.add_argument("--max-jobs", type=_max_jobs, default=0, metavar="auto|half|cores|N",
                   help="builds a node runs at once: auto = the daemon's default "
                        "max(1, cores // 4), half = cores // 2, cores = one per core")
    p.add_argument("--warmup-cycles", type=int, default=1,
                   help="cycles run first so the scheduler has learned durations (default 1)")
    p.add_argument("--history", action="store_true",
                   help="before the measured cycle, teach the swarm the workload's durations "
                        "as `swarmnode history` does from an emerge log (with "
                        "--warmup-cycles 0: a new swarm's first cycle)")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                   help="log-normal spread of real build times around the model (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 after a run (targets met or not: this is a measurement), 2 on bad input."""
    try:
        if args.warmup_cycles < 0 or args.noise < 0:
            raise BenchInputError("--warmup-cycles and --noise must be ≥ 0")
        if args.jobs < 0:
            raise BenchInputError("--jobs must be ≥ 1 (or 0: one per CPU)")
        seeds = parse_seeds(args.seed)
        files = workload_files(args.workload)
        fleet = parse_fleet(args.fleet)
        override = load_override(args.serial_fraction) if args.serial_fraction else None
        config = BenchConfig(seed=seeds[0], serial_override=override,
                             settings=SwarmSettings(max_jobs=args.max_jobs,
                                                    warmup_cycles=args.warmup_cycles,
                                                    noise=args.noise, history=args.history))
        if len(files) * len(seeds) > 1 or any(p.is_dir() for p in args.workload):
            return _run_matrix(plan_runs(files, seeds, args.out), fleet, config,
                               args.jobs or default_jobs(), args.out)
        workload = load_workload(files[0])
        result = run_bench(workload, fleet, replace(config, workload_path=str(files[0])))
    except BenchInputError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    try:
        write_outputs(result, workload, fleet, args.out)
    except OSError as exc:
        print(f"bench: cannot write to {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(summary_table(result))
    print(f"  wrote {args.out / 'result.json'} and {args.out / 'timeline.svg'}")
    return 0


def _run_matrix(runs: list[Run], fleet: list[NodeSpec], config: BenchConfig, jobs: int,
                out: Path) -> int:
    """Several runs: each run's outputs in its own directory, one table, summary.json. A
    run whose workload is bad is reported in its row; the others still run (exit 2 then)."""
    rows = run_matrix(runs, fleet, config, jobs)
    summary = summarize(rows, fleet, config)
    try:
        path = write_summary(summary, out)
    except OSError as exc:
        print(f"bench: cannot write to {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(summary)))
    print(f"  wrote {path} and each run's result.json and timeline.svg under {out}/")
    if summary["failed_runs"]:
        print(f"bench: {summary['failed_runs']} of {summary['runs']} runs could not run; "
              f"their errors are in the table above", file=sys.stderr)
        return 2
    return 0
