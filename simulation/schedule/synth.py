"""Synthetic workloads of other shapes, so the scheduler is not judged (or tuned) on one file.

``python -m simulation.schedule.synth SHAPE --seed N --out FILE`` writes a workload in the
format of ``desktop.json``. Shapes:

* ``chain-fanout`` — a deep toolchain-like chain of long builds, each link fanning out to
  many small packages, and a few browser-sized leaves hanging off the end of the chain;
* ``tiny`` — thousands of short packages (seconds to minutes) in a wide layered graph;
* ``huge-cpp`` — a handful of multi-hour C++ builds, each behind its own chain of large
  libraries, among a hundred-odd small packages;
* ``subset`` (needs ``--from FILE``) — a real-shaped one: the dependency closure of a random
  40 % of FILE's top-level packages (those nothing depends on), every duration scaled by a
  random 0.7–1.3 as if measured on another machine.

``variants --from FILE --count N --out DIR`` writes the set the scheduler is judged on near a
real workload (simulation/bench/README.md), into a directory that ``simulation bench
--workload DIR`` takes whole: ``jitter-K`` (every package, durations scaled), ``closure70-K``
(the closure of 70 % of the top-level packages) and ``subset-K`` (40 %), for K = 1..N.

Durations are log-normal; installed sizes follow durations (~15 KiB per second of build, the
ratio of desktop.json) with their own spread, so the serial-fraction formula sees realistic
pairs. A few deps name packages outside the file, which the bench ignores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Pkg = dict[str, Any]


def _pkg(rng: random.Random, name: str, duration_s: float, deps: list[str]) -> Pkg:
    kib = max(12.0, duration_s * 15.0 * math.exp(rng.gauss(0.0, 0.6)))
    return {"name": name, "duration_s": round(max(3.0, duration_s)), "deps": sorted(set(deps)),
            "installed_kib": round(kib)}


def _lognormal(rng: random.Random, median: float, sigma: float, cap: float) -> float:
    return min(cap, median * math.exp(rng.gauss(0.0, sigma)))


def chain_fanout(rng: random.Random) -> list[Pkg]:
    pkgs: list[Pkg] = []
    chain: list[str] = []
    for i in range(14):
        name = f"tool{i:02d}"
        big = rng.random() < 0.3
        dur = _lognormal(rng, 3000.0 if big else 400.0, 0.6, 14000.0)
        pkgs.append(_pkg(rng, name, dur, chain[-1:] + ["virtual-libc"]))
        chain.append(name)
        for j in range(rng.randint(15, 45)):
            extra = [p["name"] for p in rng.sample(pkgs, k=min(len(pkgs), rng.randint(0, 3)))]
            pkgs.append(_pkg(rng, f"lib{i:02d}-{j:02d}", _lognormal(rng, 45.0, 0.9, 2500.0),
                             [name, *extra]))
    for k in range(4):
        late = chain[-rng.randint(1, 4)]
        extra = [p["name"] for p in rng.sample(pkgs, k=6)]
        pkgs.append(_pkg(rng, f"browser{k}", rng.uniform(8000.0, 26000.0), [late, *extra]))
    return pkgs


def tiny(rng: random.Random) -> list[Pkg]:
    pkgs: list[Pkg] = []
    layers: list[list[str]] = []
    for layer in range(30):
        names = []
        for j in range(rng.randint(40, 120)):
            name = f"t{layer:02d}-{j:03d}"
            earlier = [n for lay in layers[-4:] for n in lay]
            deps = rng.sample(earlier, k=min(len(earlier), rng.randint(1, 5))) if earlier else []
            pkgs.append(_pkg(rng, name, _lognormal(rng, 20.0, 0.8, 400.0), deps))
            names.append(name)
        layers.append(names)
    return pkgs


def huge_cpp(rng: random.Random) -> list[Pkg]:
    pkgs: list[Pkg] = [_pkg(rng, f"base{i}", _lognormal(rng, 60.0, 0.7, 600.0), [])
                       for i in range(20)]
    for i in range(110):
        deps = [p["name"] for p in rng.sample(pkgs, k=rng.randint(1, 4))]
        pkgs.append(_pkg(rng, f"small{i:03d}", _lognormal(rng, 50.0, 1.0, 1800.0), deps))
    for h in range(6):
        below: list[str] = []
        for k in range(rng.randint(2, 4)):
            deps = below[-1:] + [p["name"] for p in rng.sample(pkgs, k=3)]
            name = f"biglib{h}-{k}"
            pkgs.append(_pkg(rng, name, rng.uniform(900.0, 3500.0), deps))
            below.append(name)
        pkgs.append(_pkg(rng, f"huge{h}", rng.uniform(9000.0, 30000.0),
                         below[-1:] + ["virtual-toolchain"]))
    return pkgs


#: ``subset``: share of the top-level packages whose closure is kept, unless told.
DEFAULT_SHARE = 0.4


def subset(rng: random.Random, source: list[Pkg], share: float = DEFAULT_SHARE) -> list[Pkg]:
    names = {p["name"]: p for p in source}
    wanted = {d for p in source for d in p["deps"]}
    tops = [p["name"] for p in source if p["name"] not in wanted]
    todo = rng.sample(tops, max(1, round(len(tops) * share)))
    keep: set[str] = set()
    while todo:
        name = todo.pop()
        if name in names and name not in keep:
            keep.add(name)
            todo.extend(names[name]["deps"])
    return [{**p, "duration_s": round(p["duration_s"] * rng.uniform(0.7, 1.3))}
            for p in source if p["name"] in keep]


SHAPES: dict[str, Callable[[random.Random], list[Pkg]]] = {
    "chain-fanout": chain_fanout, "tiny": tiny, "huge-cpp": huge_cpp}


def generate(shape: str, seed: int, source: list[Pkg] | None = None,
             share: float = DEFAULT_SHARE) -> dict[str, Any]:
    """The workload document for ``shape`` and ``seed`` (same arguments → same bytes);
    ``subset`` draws from ``source`` (the packages of another workload), keeping the
    closure of ``share`` of its top-level packages (1.0: all of it, only the durations
    change)."""
    rng = random.Random(f"{shape}:{seed}")
    command = f"simulation.schedule.synth {shape} --seed {seed}"
    if shape == "subset":
        if source is None:
            raise ValueError("the subset shape needs a source workload")
        pkgs = subset(rng, source, share)
        command += f" --share {share:g}"
    else:
        pkgs = SHAPES[shape](rng)
        rng.shuffle(pkgs)  # file order is not a topological order in real files either
    return {"source": command, "packages": pkgs}


#: ``variants``: file-name prefix → share of the top-level packages kept.
VARIANTS = {"jitter": 1.0, "closure70": 0.7, "subset": DEFAULT_SHARE}


def variants(source: list[Pkg], count: int) -> dict[str, dict[str, Any]]:
    """File stem → workload document: ``count`` of each kind in VARIANTS (seeds 1..count)."""
    return {f"{kind}-{seed}": generate("subset", seed, source, share)
            for kind, share in VARIANTS.items() for seed in range(1, count + 1)}


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--share is a fraction in (0, 1] (got {text!r})")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.schedule.synth",
                                     description="Write a synthetic bench workload.")
    parser.add_argument("shape", choices=sorted([*SHAPES, "subset", "variants"]))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--from", dest="source", type=Path,
                        help="workload the subset shape draws from")
    parser.add_argument("--share", type=_share, default=None,
                        help="subset: share of the top-level packages whose closure is kept "
                             f"(default {DEFAULT_SHARE:g}; 1 keeps every package, durations "
                             "still scaled)")
    parser.add_argument("--count", type=int, default=None,
                        help="variants: how many of each kind (default 6)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the file to write (variants: a directory)")
    args = parser.parse_args(argv)
    drawn = args.shape in ("subset", "variants")
    if drawn != (args.source is not None):
        parser.error("--from goes with the subset and variants shapes, and only with them")
    if args.share is not None and args.shape != "subset":
        parser.error("--share goes with the subset shape only")
    if args.count is not None and (args.shape != "variants" or not 1 <= args.count <= 1000):
        parser.error("--count goes with the variants shape only, and is 1..1000")
    try:
        source = json.loads(args.source.read_text())["packages"] if args.source else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"cannot read the packages of {args.source}: {exc}")
    if args.shape == "variants":
        assert source is not None
        docs = variants(source, 6 if args.count is None else args.count)
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            for stem, doc in docs.items():
                (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            parser.error(f"cannot write to {args.out}: {exc.strerror or exc}")
        print(f"{args.out}: {len(docs)} workloads ({', '.join(VARIANTS)}, "
              f"1..{len(docs) // len(VARIANTS)} each) drawn from {args.source}")
        return 0
    doc = generate(args.shape, args.seed, source,
                   DEFAULT_SHARE if args.share is None else args.share)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{args.out}: {args.shape}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
