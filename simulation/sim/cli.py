"""``python -m simulation run`` and ``sweep``: one seed with a summary, or many seeds in parallel.

``simulation/__main__.py`` calls :func:`add_parsers` to add both subcommands; until it exists,
``python -m simulation.sim.cli run ...`` works the same. A handler returns the exit code: 0 if
every invariant held, 1 if one did not (the seed, the invariant and a short history are
printed, with the command that replays it).

pysyncobj iterates Python sets of nodes, so a run is only reproducible with a fixed
PYTHONHASHSEED: the handlers re-exec the interpreter with PYTHONHASHSEED=0 when it is not set.

``--plan`` runs the seeded :mod:`simulation.faultplan` plan (the multi-process nemesis's) for
the timed kinds of ``--faults``; ``run --plan-file FILE.json`` runs a saved one (its kinds are
added to ``--faults``); ``run --print-plan`` prints the plan as JSON and runs nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from simulation.argtypes import checked, positive
from simulation.faultplan import Fault, dumps, read
from simulation.procs import die_with_parent

from .faults import parse_faults
from .history import Event
from .raftnode import SWITCHABLE_FIXES
from .simulation import RunResult, SimConfig, fault_plan, fault_window, run
from .workload import load, resolve

HASH_SEED = "0"


def ensure_hash_seed() -> None:
    """Re-exec this command with PYTHONHASHSEED=0 unless it is already fixed."""
    if os.environ.get("PYTHONHASHSEED") == HASH_SEED:
        return
    env = dict(os.environ, PYTHONHASHSEED=HASH_SEED)
    os.execve(sys.executable, list(sys.orig_argv), env)


def _fixes(text: str) -> frozenset[int]:
    try:
        fixes = frozenset(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--no-fix takes fix numbers like 1,2 (got {text!r})")
    bad = sorted(fixes - set(SWITCHABLE_FIXES))
    if bad:
        raise argparse.ArgumentTypeError(
            f"--no-fix: no switchable fix {bad}; the RaftFixes fixes are "
            f"{', '.join(map(str, SWITCHABLE_FIXES))} (3 and 4 are I/O-level)")
    return fixes


def _workload(text: str) -> str:
    """``--workload``: checked here (the file read and parsed) so that a bad file is one line
    of error before anything runs, not a traceback from inside a run or a sweep's worker."""
    if text != "synthetic":
        try:
            load(resolve(text))
        except (OSError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=positive(int), default=5, help="cluster size (default 5)")
    p.add_argument("--workload", default="synthetic", type=_workload,
                   help="synthetic (seeded, small), desktop "
                        "(tests/data/workloads/desktop.json, 709 packages) or a workload JSON file")
    p.add_argument("--packages", type=positive(int), default=30,
                   help="size of the synthetic workload (default 30)")
    p.add_argument("--time-scale", type=positive(float), default=None,
                   help="multiply build durations (default 1; 0.01 for desktop)")
    p.add_argument("--cycles", type=positive(int), default=2,
                   help="build cycles the operator runs and finalizes (default 2)")
    p.add_argument("--faults", type=checked(parse_faults), default=frozenset(),
                   help="comma list of partitions,crashes,pauses,flaky,failures,slow,"
                        "restart-all,joins — or all, or none (default none)")
    p.add_argument("--no-fix", type=_fixes, default=frozenset(), metavar="N[,N]",
                   help="switch off RaftFixes fix N (1, 2, 5, 6, 7 or 8) to see what it prevents")
    p.add_argument("--fault-window", type=positive(float), default=None,
                   help="seconds of virtual time with faults (default: from the workload)")
    p.add_argument("--append-batch-bytes", type=positive(int), default=2 ** 16,
                   help="pysyncobj's appendEntriesBatchSizeBytes (default 65536, the daemon's); "
                        "small values split resends into many messages")


def _plan_options(p: argparse.ArgumentParser, files: bool) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--plan", action="store_true",
                       help="timed faults from the seeded plan the multi-process nemesis "
                            "runs (simulation/faultplan.py) instead of drawn as the run goes")
    if files:
        group.add_argument("--plan-file", default=None, metavar="FILE.json",
                           help="timed faults from this plan (a nemesis run's plan.json, "
                                "--print-plan's output, or one written by hand); its kinds "
                                "are added to --faults")
        p.add_argument("--print-plan", action="store_true",
                       help="print the plan (--plan-file's, or the seeded one) as JSON and "
                            "exit without running")


def _config(args: argparse.Namespace, seed: int,
            loaded: tuple[Fault, ...] | None = None) -> SimConfig:
    """``loaded``: the ``--plan-file``'s faults (read once by the caller)."""
    scale = args.time_scale
    if scale is None:
        scale = 0.01 if args.workload != "synthetic" else 1.0
    faults = args.faults
    plan_file = getattr(args, "plan_file", None)
    if loaded is not None:
        faults = faults | {f.kind for f in loaded}
    return SimConfig(seed=seed, nodes=args.nodes, workload=args.workload,
                     packages=args.packages, time_scale=scale, cycles=args.cycles,
                     faults=faults, no_fix=args.no_fix, fault_window_s=args.fault_window,
                     append_batch_bytes=args.append_batch_bytes,
                     planned=bool(getattr(args, "plan", False)), plan=loaded,
                     plan_file=plan_file if loaded is not None else None)


def _run_config(args: argparse.Namespace) -> tuple[SimConfig, list[Fault] | None]:
    """``run``'s config and the plan it will execute (None: drawn as it goes); ValueError
    for a plan file that does not fit this cluster or its fault window."""
    loaded = None
    if args.plan_file is not None:
        loaded = tuple(read(args.plan_file, args.nodes))
    config = _config(args, args.seed, loaded)
    if args.print_plan and loaded is None:
        config = dataclasses.replace(config, planned=True)  # what --plan would run
    if config.plan is None and not config.planned:
        return config, None
    window = fault_window(config)
    try:
        return config, fault_plan(config, window)
    except ValueError as exc:
        raise ValueError(f"{args.plan_file}: {exc} (the window is --fault-window, or 60 % of "
                         "the expected build time)") from None


def add_parsers(subparsers: Any) -> None:
    """Add ``run`` and ``sweep`` to the ``python -m simulation`` dispatcher."""
    p = subparsers.add_parser("run", help="one deterministic simulation of a swarm",
                              description="Run the real swarm logic and pysyncobj on virtual "
                                          "time; print what happened and whether every "
                                          "invariant held. The same seed replays exactly.")
    p.add_argument("--seed", type=int, default=1)
    _common(p)
    _plan_options(p, files=True)
    p.add_argument("--history", action="store_true", help="print the whole event history")
    p.set_defaults(func=cmd_run)
    s = subparsers.add_parser("sweep", help="many seeds in parallel; list the failing ones",
                              description="Run seeds START..START+SEEDS-1 (2 processes) and "
                                          "list every failing seed with the command that "
                                          "replays it.")
    s.add_argument("--seeds", type=positive(int), default=100, help="how many seeds")
    s.add_argument("--start", type=int, default=1, help="first seed (default 1)")
    s.add_argument("--workers", type=positive(int), default=2)
    _common(s)
    _plan_options(s, files=False)
    s.set_defaults(func=cmd_sweep)


def print_result(result: RunResult, history: list[str] | None = None) -> None:
    s = result.summary
    c = result.config
    print(f"seed {result.seed}: {s['nodes']} nodes, workload {s['workload']} "
          f"({s['packages']} packages, time scale {c.time_scale:g}), faults "
          f"{','.join(sorted(c.faults)) or 'none'}"
          + (f", without fix {','.join(map(str, sorted(c.no_fix)))}" if c.no_fix else ""))
    print(f"  virtual time      {result.virtual_s:10.1f} s   (wall {result.wall_s:.2f} s)")
    print(f"  leaders / terms   {s['leaders']:>6} / {s['terms']}")
    faults = ", ".join(f"{k} {v}" for k, v in s["faults"].items()) or "none"
    if "planned" in s:
        source = c.plan_file or ("seeded, --plan" if c.planned else "given")
        faults += f"  (a plan of {s['planned']}: {source})"
    print(f"  faults injected   {faults}")
    if s["faults_healed_at_s"] is not None:
        conv = s["converged_at_s"]
        print(f"  healed at         {s['faults_healed_at_s']:10.1f} s   converged at "
              + (f"{conv:.1f} s" if conv is not None else "never"))
    print(f"  commands          {s['commands_committed']} committed, {s['acknowledged']} "
          f"acknowledged, {s['messages']} Raft messages, {s['snapshots_installed']} "
          "snapshots installed")
    print(f"  claims refused    {s['refused_claims']} (each still a Raft commit)")
    print(f"  jobs              {s['jobs_built']} built, {s['jobs_failed']} failed, "
          f"{s['jobs_blocked']} blocked in {s['cycles']} cycles; {s['releases']} releases")
    print(f"  history           {result.history_hash[:16]}")
    if history:
        print("  --- history ---")
        for line in history:
            print("  " + line)
    if result.ok:
        print("  invariants:       OK")
        return
    print("  invariants:       VIOLATED")
    for v in result.violations[:10]:
        print(f"    {v.invariant} at {v.t:.3f}s: {v.message}")
    print("  last events:")
    for line in result.tail:
        print("    " + line)
    print(f"  replay: {result.replay_command()}")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config, faults = _run_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_plan:
        print(dumps(faults or []))
        return 0
    ensure_hash_seed()
    result = _run_with_history(config) if args.history else (run(config), None)
    print_result(*result)
    return 0 if result[0].ok else 1


def _run_with_history(config: SimConfig) -> tuple[RunResult, list[str]]:
    result, events = _run_events(config)
    return result, [e.line() for e in events]


def _run_events(config: SimConfig) -> tuple[RunResult, list[Event]]:
    from .simulation import Simulation
    import shutil
    import tempfile
    from pathlib import Path
    workdir = Path(tempfile.mkdtemp(prefix="swarm-sim-"))
    try:
        sim = Simulation(config, workdir)
        result = sim.run()
        return result, list(sim.history.events)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_with_events(config: SimConfig) -> tuple[RunResult, list[Event]]:
    """One run and its whole history, in a fresh process with the fixed hash seed: the run
    ``run --seed N --history`` replays, whatever this interpreter's PYTHONHASHSEED (a run in
    a process with another hash seed may order equal-ranked choices differently)."""
    with _hash_seed_env(), _pool(1) as pool:
        return pool.submit(_run_events, config).result()


@contextmanager
def _hash_seed_env() -> Iterator[None]:
    """Spawned workers start a fresh interpreter: give it the fixed hash seed."""
    old = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = HASH_SEED
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = old


def _die_with(parent: int) -> None:
    """Worker initializer: end when the process that started the pool does. A sweep stopped
    with SIGTERM (``timeout``, a CI job's end) cannot shut its pool down, and its workers
    would go on running seeds nobody reads."""
    if die_with_parent() and os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with, initargs=(os.getpid(),))


def run_many(configs: Iterable[SimConfig], workers: int = 2) -> Iterator[RunResult]:
    """Run configs in ``workers`` fresh processes (PYTHONHASHSEED=0), results in order."""
    configs = list(configs)
    with _hash_seed_env(), _pool(workers) as pool:
        yield from pool.map(run, configs)


def run_unordered(configs: Iterable[SimConfig], workers: int = 2) -> Iterator[RunResult]:
    """Like :func:`run_many`, each result as soon as it is ready."""
    configs = list(configs)
    with _hash_seed_env(), _pool(workers) as pool:
        futures = [pool.submit(run, c) for c in configs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def cmd_sweep(args: argparse.Namespace) -> int:
    ensure_hash_seed()
    seeds = range(args.start, args.start + args.seeds)
    started = time.perf_counter()
    failing: list[RunResult] = []
    for done, result in enumerate(run_unordered((_config(args, s) for s in seeds),
                                                args.workers), 1):
        status = "ok" if result.ok else f"FAILED {result.violations[0].invariant}"
        print(f"[{done}/{len(seeds)}] seed {result.seed}: {status} ({result.virtual_s:.0f}s "
              f"virtual, {result.wall_s:.1f}s wall, {result.summary['commands_committed']} "
              "commands)", flush=True)
        if not result.ok:
            failing.append(result)
            print(f"    {result.violations[0].message}", flush=True)
    wall = time.perf_counter() - started
    print(f"{len(seeds)} seeds ({args.start}..{args.start + len(seeds) - 1}) in {wall:.0f}s: "
          f"{len(seeds) - len(failing)} passed, {len(failing)} failed")
    for result in sorted(failing, key=lambda r: r.seed):
        print(f"  seed {result.seed}: {result.violations[0].invariant} — replay: "
              f"{result.replay_command()}")
    return 1 if failing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.sim.cli",
                                     description="Deterministic swarm simulator")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
