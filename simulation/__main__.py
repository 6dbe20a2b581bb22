"""``python -m simulation {run,sweep,bench,nemesis}``.

``nemesis`` (the same kinds of faults against real ``swarmnode serve`` processes, needs root)
lives in ``simulation.nemesis.cli``.

``bench`` (scheduling quality at scale) lives in ``simulation.schedule.cli``. ``run`` and
``sweep`` (the deterministic Raft simulator) live in ``simulation.sim.cli``, which provides
``add_parsers(subparsers)``: it adds both subcommands, each with ``set_defaults(func=...)``, a
handler taking the parsed arguments and returning the exit code. That module is imported only
when one of its commands is asked for, so ``bench`` never pays for (or breaks on) it.
"""

from __future__ import annotations

import argparse
import os
import sys

from simulation.schedule import cli as bench_cli

SIM_COMMANDS = ("run", "sweep")


def _sim_parsers(subparsers: argparse._SubParsersAction) -> bool:  # type: ignore[type-arg]
    """Add run/sweep from simulation.sim.cli; False if that module does not exist (yet)."""
    try:
        from simulation.sim.cli import add_parsers
    except ModuleNotFoundError as exc:
        if exc.name not in ("simulation.sim", "simulation.sim.cli"):
            raise  # a missing dependency of an existing module is a real error
        return False
    add_parsers(subparsers)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m simulation",
        description="The real swarm on virtual time: Raft simulation (run, sweep) and "
                    "scheduling quality at scale (bench).")
    sub = parser.add_subparsers(dest="command", metavar="{run,sweep,bench,nemesis}",
                                required=True)
    if argv[:1] == ["nemesis"]:
        from simulation.nemesis.cli import add_parsers as add_nemesis
        add_nemesis(sub)
    else:
        sub.add_parser("nemesis", help="faults against real swarmnode processes (root); see "
                                       "python -m simulation nemesis --help")
    if argv[:1] and argv[0] in SIM_COMMANDS:
        if not _sim_parsers(sub):
            print("run/sweep: not available (simulation/sim is not installed in this tree)",
                  file=sys.stderr)
            return 2
    else:  # listed in --help without importing the simulator
        for name in SIM_COMMANDS:
            sub.add_parser(name, help=f"deterministic Raft simulator ({name}); "
                                      f"see python -m simulation {name} --help")
    bench_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
