"""Build times a Gentoo host has already recorded: its ``/var/log/emerge.log``.

A swarm learns how long each package takes from its own builds, but before its first cycle it
knows nothing, and a scheduler that thinks every package is equally small builds the
toolchain and the browsers on a slot's few cores. Every Gentoo machine that ever compiled its
own ``@world`` has the answer in its emerge log::

    1518448080:  >>> emerge (5 of 5) www-client/chromium-64.0.3282.140 to /
    1518476642:  ::: completed emerge (5 of 5) www-client/chromium-64.0.3282.140 to /

A build is a ``>>> emerge (i of n) CPV to ROOT`` line and its ``::: completed emerge`` line
in the same emerge run; one that never completed (failed, interrupted) and a binary package's
install (``Merging Binary``) are not builds and are skipped. The log does not say with how
many make jobs a package was built; the caller says (``MAKEOPTS -jN``, by default the cores
of the machine it ran on).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from portage.versions import catpkgsplit, cpv_getkey

from swarmnode.errors import UserError
from swarmnode.state.scheduling import one_core_seconds

#: Builds of one package that count: the latest few (machines and versions change).
RECENT = 5
#: A build longer than this is a log whose end was lost (a crash), not a build.
MAX_BUILD_S = 7 * 24 * 3600.0
#: Packages per learn_history command / API request (a desktop's closure fits in one).
BATCH = 1000
#: Largest log read (a busy machine writes ~1 MB per 10 000 lines, years of history).
MAX_LOG_BYTES = 512 * 1024 * 1024

_LINE = re.compile(r"^(\d+):\s+(>>> emerge|::: completed emerge|=== )\s*"
                   r"\((\d+) of (\d+)\)\s+(.*)$")
_CPV_TO = re.compile(r"^(\S+) to (\S+)$")


@dataclass(frozen=True)
class Build:
    """One package built from source, as the log recorded it."""

    cpv: str
    started: int          # unix time
    seconds: float


def parse(lines: Iterable[str]) -> list[Build]:
    """Every completed source build in the log, in log order."""
    builds: list[Build] = []
    open_: dict[tuple[str, str, str, str], tuple[int, bool]] = {}  # (i, n, cpv, root) → start
    for line in lines:
        if "Started emerge on:" in line:
            open_.clear()  # a new emerge run: whatever was open never completed
            continue
        m = _LINE.match(line.rstrip("\n"))
        if m is None:
            continue
        stamp, kind, i, n, rest = int(m[1]), m[2], m[3], m[4], m[5]
        if kind == "=== ":
            if rest.startswith("Merging Binary"):  # an install of a binpkg, not a build
                for key in [k for k in open_ if k[:2] == (i, n)]:
                    open_[key] = (open_[key][0], True)
            continue
        target = _CPV_TO.match(rest)
        if target is None or catpkgsplit(target[1]) is None:
            continue
        key = (i, n, target[1], target[2])
        if kind == ">>> emerge":
            open_[key] = (stamp, False)
            continue
        started = open_.pop(key, None)
        if started is None or started[1]:
            continue
        seconds = float(stamp - started[0])
        if 0 <= seconds <= MAX_BUILD_S:
            builds.append(Build(target[1], started[0], seconds))
    return builds


def read_log(path: Path) -> list[Build]:
    """:func:`parse` of a log file, with a clear error for a file that is not one."""
    try:
        size = path.stat().st_size
        if size > MAX_LOG_BYTES:
            raise UserError(f"{path} is {size} bytes; an emerge log of more than "
                            f"{MAX_LOG_BYTES} bytes is not read (trim it, e.g. `tail -n "
                            f"200000 {path} > recent.log`)")
        with path.open(encoding="utf-8", errors="replace") as fh:
            builds = parse(fh)
    except OSError as exc:
        raise UserError(f"cannot read emerge log {path}: {exc.strerror or exc}") from None
    if not builds:
        raise UserError(f"{path} records no completed build from source (an emerge log has "
                        "lines like '>>> emerge (1 of 5) cat/pkg-1.0 to /')")
    return builds


def wall_seconds(builds: Iterable[Build]) -> dict[str, float]:
    """cat/pn → the median of its latest RECENT builds' wall seconds (at least 1)."""
    per: dict[str, list[Build]] = {}
    for b in builds:
        per.setdefault(cpv_getkey(b.cpv), []).append(b)
    return {key: max(1.0, statistics.median(x.seconds for x in sorted(
                bs, key=lambda x: x.started)[-RECENT:]))
            for key, bs in sorted(per.items())}


def batches(walls: dict[str, float]) -> list[dict[str, float]]:
    """``walls`` split by package name into maps of at most BATCH packages, each one
    request / command."""
    keys = sorted(walls)
    return [{k: walls[k] for k in keys[i:i + BATCH]} for i in range(0, len(keys), BATCH)]


def core_seconds(walls: dict[str, float], jobs: int) -> dict[str, float]:
    """Wall seconds measured with ``jobs`` make jobs → one-core seconds, the state's unit
    (through the scheduler's own speed-up prior, as it learns from its own builds)."""
    return {key: one_core_seconds(wall, jobs) for key, wall in walls.items()}
