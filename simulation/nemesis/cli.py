"""``python -m simulation.nemesis``: one multi-process nemesis run from the command line.

``simulation/__main__.py`` may route ``nemesis`` here through :func:`add_parsers`. The handler
returns the exit code: 0 if every invariant held, 1 if one did not (seed, invariant and the
history tail are printed), 2 if the run could not start (not root, no ``ip``, a bad plan file).

The faults are a :mod:`simulation.faultplan` plan: seeded (``--seed``, ``--faults``,
``--duration``, ``--max-active``) or read from ``--plan-file``; ``--print-plan`` prints it as
JSON and runs nothing (no root needed), and every run saves it as ``plan.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from simulation.argtypes import checked, positive
from simulation.faultplan import Fault, dumps, plan, read

from .nodes import Timings
from .runner import NemesisConfig, example_profile, run, write_out, write_plan
from .schedule import parse_kinds


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=positive(int), default=5, help="cluster size (default 5)")
    p.add_argument("--faults", type=checked(parse_kinds),
                   default=parse_kinds("partitions,crashes,pauses"),
                   help="comma list of partitions,crashes,pauses,flaky,slow,restart-all, "
                        "or all (default partitions,crashes,pauses)")
    p.add_argument("--duration", type=positive(float), default=40.0,
                   help="seconds of faults (wall time) before everything is healed")
    p.add_argument("--max-active", type=positive(int), default=2, help="faults at once (default 2)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep data dirs, node logs, history.txt and result.json here "
                        "(default: a temporary directory, kept only if a check fails)")
    p.add_argument("--profile-toml", type=Path, default=None,
                   help="a TOML file with [profiles.NAME] tables to build (default: the "
                        "bundled example repository's desktop profile)")
    p.add_argument("--profile", default=None,
                   help="the profile to build (default: the first table in --profile-toml)")
    p.add_argument("--plan-file", type=Path, default=None, metavar="FILE.json",
                   help="run this fault plan (a plan.json of an earlier run, --print-plan's "
                        "output, or one written by hand) instead of the seeded one; "
                        "--faults and --max-active are then unused")
    p.add_argument("--print-plan", action="store_true",
                   help="print the plan as JSON and exit without running anything")
    p.set_defaults(func=cmd_nemesis)


DESCRIPTION = ("Start real `swarmnode serve` processes, each in its own network namespace "
               "behind a per-link TCP proxy; build a cycle while partitions, delays, resets, "
               "kill -9, SIGSTOP and restarts follow a seeded schedule; heal, finalize and "
               "check the invariants over the recorded history. Needs root.")


def add_parsers(subparsers: Any) -> None:
    """Add ``nemesis`` to the ``python -m simulation`` dispatcher."""
    p = subparsers.add_parser("nemesis", help="the fault schedule against real swarmnode "
                                              "processes", description=DESCRIPTION)
    _configure(p)


def _first_profile(text: str) -> str:
    import tomllib
    profiles = tomllib.loads(text).get("profiles", {})
    if not profiles:
        raise SystemExit("--profile-toml has no [profiles.NAME] table")
    return str(next(iter(profiles)))


def faults_of(args: argparse.Namespace) -> list[Fault]:
    """The run's plan: ``--plan-file`` (checked against ``--nodes`` and ``--duration``), or
    the seeded one. ValueError says what is wrong with a file."""
    if args.plan_file is not None:
        return read(str(args.plan_file), args.nodes, args.duration)
    return plan(args.seed, args.nodes, args.faults, args.duration, args.max_active)


def cmd_nemesis(args: argparse.Namespace) -> int:
    try:
        faults = faults_of(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_plan:
        print(dumps(faults))
        return 0
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("nemesis needs root and `ip` (iproute2): it makes network namespaces",
              file=sys.stderr)
        return 2
    if args.nodes < 2:
        print("--nodes must be at least 2", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        print(f"--out {args.out} is not empty: the nodes would restart from an old run's "
              "data; give a new or empty directory", file=sys.stderr)
        return 2
    root = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="nemesis-"))
    if args.profile_toml is not None:
        toml = args.profile_toml.read_text()
        profile = args.profile or _first_profile(toml)
    else:
        profile = args.profile or "desktop"
        toml = example_profile(root, profile)
    plan_path = write_plan(faults, root)
    config = NemesisConfig(root=root, profiles_toml=toml, profile=profile, seed=args.seed,
                           nodes=args.nodes, kinds=args.faults, window_s=args.duration,
                           max_active=args.max_active, plan=tuple(faults), timings=Timings())
    result = run(config)
    print(result.report())
    write_out(result, root)
    if result.ok and args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"run directory (node logs, history.txt, result.json, plan.json): {root}")
    if not result.ok:
        how = (f"--plan-file {args.plan_file}" if args.plan_file is not None else
               f"--faults {','.join(sorted(args.faults))} --max-active {args.max_active}")
        print(f"replay: python -m simulation.nemesis --seed {args.seed} --nodes {args.nodes} "
              f"--duration {args.duration:g} {how}")
        print(f"the same plan in the simulator: python -m simulation run --seed {args.seed} "
              f"--nodes {args.nodes} --fault-window {args.duration:g} --plan-file {plan_path}")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.nemesis",
                                     description=DESCRIPTION)
    _configure(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))
