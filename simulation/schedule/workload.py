"""Workload files (the format of ``shared/data/workloads/desktop.json``) and fleet strings.

Both are user input, so every problem is a :class:`BenchInputError` with one line that names
the offending entry; the CLI prints it and exits 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from swarmnode.state.scheduling import package_key, topo_order

#: Jobs get made-up but stable cpvs: ``bench/<name>-1.0`` (the state machine learns per cat/pn).
#: A name in Gentoo's ``category/name`` form (or a whole ``category/name-version``) keeps its
#: category as a prefix, ``bench/category.name-1.0``: every name stays one cat/pn of its own.
CATEGORY = "bench"
VERSION = "1.0"
#: Size of a built package whose workload entry has no ``installed_kib`` (only the artifact
#: records need one; the desktop median is ~600 KiB).
UNKNOWN_SIZE_KIB = 1024


class BenchInputError(ValueError):
    """Bad bench input: the message is the whole explanation, shown to the user as is."""


@dataclass(frozen=True)
class Package:
    name: str
    duration_s: float          # wall seconds measured with ~4 cores (see model.py)
    deps: tuple[str, ...]      # only names that are packages of the workload, sorted
    installed_kib: float | None   # None: not in the file (the model then uses duration only)
    index: int                 # position in the file: emerge order breaks ties with it

    @property
    def pn(self) -> str:
        return self.name.replace("/", ".")

    @property
    def cpv(self) -> str:
        return f"{CATEGORY}/{self.pn}-{VERSION}"


@dataclass(frozen=True)
class Workload:
    name: str
    sha256: str                # of the file's bytes: which workload a result is about
    packages: tuple[Package, ...]
    ignored_deps: int          # deps naming packages not in the file (ignored, as documented)
    cycle_deps_dropped: tuple[tuple[str, str], ...] = ()   # (package, dep): closed a cycle

    def by_name(self) -> dict[str, Package]:
        return {p.name: p for p in self.packages}

    def dependents(self) -> dict[str, list[str]]:
        """name → names that depend on it (file order)."""
        out: dict[str, list[str]] = {p.name: [] for p in self.packages}
        for p in self.packages:
            for d in p.deps:
                out[d].append(p.name)
        return out


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    cores: int
    sweeper: bool


def _number(raw: dict[str, Any], key: str, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BenchInputError(f"{where}: '{key}' must be a number ≥ 0 (got {value!r})")
    return float(value)


def parse_workload(data: Any, name: str, sha256: str) -> Workload:
    """Validate a decoded workload; deps on unknown packages are dropped, and so is one edge
    of every dependency cycle (:func:`cycle_edges`)."""
    if not isinstance(data, dict) or not isinstance(data.get("packages"), list):
        raise BenchInputError(f"workload {name}: expected {{\"packages\": [...]}}")
    raw_pkgs: list[Any] = data["packages"]
    if not raw_pkgs:
        raise BenchInputError(f"workload {name}: 'packages' is empty")
    names: dict[str, int] = {}
    for i, raw in enumerate(raw_pkgs):
        if not isinstance(raw, dict):
            raise BenchInputError(f"workload {name}: packages[{i}] must be an object")
        pname = raw.get("name")
        if not isinstance(pname, str) or not all(parts := pname.split("/")) or len(parts) > 2 \
                or any(c.isspace() for c in pname):
            raise BenchInputError(f"workload {name}: packages[{i}] has a bad 'name' "
                                  f"{pname!r} (non-empty, no spaces; 'name' or "
                                  "'category/name')")
        if pname in names:
            raise BenchInputError(f"workload {name}: package {pname!r} is listed twice "
                                  f"(packages[{names[pname]}] and [{i}])")
        names[pname] = i
    pkgs: list[Package] = []
    keys: dict[str, str] = {}  # pn → the name it came from
    ignored = 0
    for i, raw in enumerate(raw_pkgs):
        where = f"workload {name}: package {raw['name']!r}"
        deps = raw.get("deps", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise BenchInputError(f"{where}: 'deps' must be a list of names")
        known = sorted({d for d in deps if d in names})
        ignored += sum(1 for d in deps if d not in names)
        pkg = Package(name=raw["name"], duration_s=_number(raw, "duration_s", where),
                      deps=tuple(known),
                      installed_kib=(None if raw.get("installed_kib") is None
                                     else _number(raw, "installed_kib", where)),
                      index=i)
        if package_key(pkg.cpv) != f"{CATEGORY}/{pkg.pn}":
            raise BenchInputError(f"{where}: name cannot be made into a cpv")
        if (other := keys.setdefault(pkg.pn, pkg.name)) != pkg.name:
            raise BenchInputError(f"{where}: its cpv would be that of {other!r} "
                                  "('/' becomes '.'); rename one of them")
        pkgs.append(pkg)
    dropped = cycle_edges({p.name: p.deps for p in pkgs})
    if dropped:
        cut = set(dropped)
        pkgs = [replace(p, deps=tuple(d for d in p.deps if (p.name, d) not in cut))
                for p in pkgs]
    return Workload(name=name, sha256=sha256, packages=tuple(pkgs), ignored_deps=ignored,
                    cycle_deps_dropped=tuple(dropped))


def cycle_edges(deps: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """The (package, dep) edges to ignore so that no dependency cycle is left: the back edges
    of a depth-first walk in file order, deps in name order (deterministic).

    Real dependency closures have cycles (Debian's do; in Gentoo, PDEPEND and runtime loops),
    and whatever builds them builds one member first, without the other; a scheduling bench
    has to do the same rather than refuse the file. Which edges went is printed and kept in
    result.json.
    """
    if not topo_order(deps)[1]:
        return []
    state: dict[str, int] = {}   # 1: on the walk's current path, 2: done
    dropped: list[tuple[str, str]] = []
    for root in deps:
        if root in state:
            continue
        state[root] = 1
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack[-1]
            if i == len(deps[node]):
                stack.pop()
                state[node] = 2
                continue
            stack[-1] = (node, i + 1)
            dep = deps[node][i]
            if state.get(dep) == 1:
                dropped.append((node, dep))
            elif dep not in state:
                state[dep] = 1
                stack.append((dep, 0))
    return dropped


def load_workload(path: Path) -> Workload:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BenchInputError(f"cannot read workload {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BenchInputError(f"workload {path} is not valid JSON: {exc}") from None
    return parse_workload(data, path.stem, hashlib.sha256(raw).hexdigest())


def parse_fleet(text: str) -> list[NodeSpec]:
    """``16,8,14,24,8s`` → nodes n01..: cores per node, ``s`` marks a sweeper."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise BenchInputError(f"bad fleet {text!r}: expected cores per node, comma-separated, "
                              "e.g. 16,8,14,24,8s")
    width = max(2, len(str(len(parts))))
    out: list[NodeSpec] = []
    for i, part in enumerate(parts, 1):
        sweeper = part.lower().endswith("s")
        digits = part[:-1] if sweeper else part
        if not digits.isdigit() or int(digits) < 1:
            raise BenchInputError(f"bad fleet entry {part!r} in {text!r}: expected a core count "
                                  "≥ 1, optionally followed by 's' (sweeper), e.g. 8s")
        out.append(NodeSpec(node_id=f"n{i:0{width}d}", cores=int(digits), sweeper=sweeper))
    return out


def fleet_string(fleet: list[NodeSpec]) -> str:
    return ",".join(f"{n.cores}{'s' if n.sweeper else ''}" for n in fleet)
