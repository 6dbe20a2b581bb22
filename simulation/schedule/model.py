"""How long a build takes on ``c`` cores: Amdahl's law with a per-package serial fraction.

The workload's ``duration_s`` (``d4``) were measured with about 4 cores. With serial fraction
``s`` (the share of the 4-core time that does not parallelise: configure, linking, install)::

    duration(c) = d4 * (s + (1 - s) * 4 / c) / (s + (1 - s) * 4 / 4)
                = d4 * (s + (1 - s) * 4 / c)            so duration(4) == d4

Its cost in core-seconds, ``c * duration(c) = d4 * (s*c + 4*(1 - s))``, grows with ``c``: more
cores always finish sooner but waste more, which is the trade-off a scheduler has to make.

The serial fraction is not in the workload, so it is derived from what is: small, quick
packages are configure-bound (mostly serial), large long builds are big C++ code bases (mostly
parallel). Each of the two signals is placed on a log scale between a "small" and a "large"
anchor and clamped to [0, 1]::

    x_d = clamp(log(d4 / duration_lo_s) / log(duration_hi_s / duration_lo_s), 0, 1)
    x_k = clamp(log(kib / size_lo_kib)  / log(size_hi_kib  / size_lo_kib),  0, 1)
    x   = (1 - size_weight) * x_d + size_weight * x_k
    s   = serial_max - (serial_max - serial_min) * x      (no installed_kib: x = x_d)

With the defaults a 14 s, 73 KiB package gets s = 0.90, the median one (41 s, 604 KiB) 0.80,
gtk+3 (1930 s, 36 MiB) 0.15 and chromium 0.05. Override either the parameters or single
packages with a JSON file: ``{"default": {"serial_max": 0.85, ...}, "packages": {"name": s}}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .workload import BenchInputError, Package, Workload

#: Cores the workload's durations were measured with.
MEASURED_CORES = 4


@dataclass(frozen=True)
class SerialParams:
    """Parameters of the serial-fraction formula (module docstring)."""

    serial_max: float = 0.90      # smallest, configure-bound packages
    serial_min: float = 0.05      # largest C++ builds
    duration_lo_s: float = 30.0   # at or below: "small" on the duration scale
    duration_hi_s: float = 3600.0  # at or above: "large"
    size_lo_kib: float = 256.0
    size_hi_kib: float = 65536.0
    size_weight: float = 0.5      # share of the installed size in x (the rest: duration)

    def check(self) -> None:
        if not 0.0 <= self.serial_min <= self.serial_max <= 1.0:
            raise BenchInputError("serial fraction: need 0 ≤ serial_min ≤ serial_max ≤ 1 "
                                  f"(got {self.serial_min}, {self.serial_max})")
        if not 0 < self.duration_lo_s < self.duration_hi_s:
            raise BenchInputError("serial fraction: need 0 < duration_lo_s < duration_hi_s")
        if not 0 < self.size_lo_kib < self.size_hi_kib:
            raise BenchInputError("serial fraction: need 0 < size_lo_kib < size_hi_kib")
        if not 0.0 <= self.size_weight <= 1.0:
            raise BenchInputError("serial fraction: size_weight must be within [0, 1]")


def _scale(value: float, lo: float, hi: float) -> float:
    if value <= lo:
        return 0.0
    return min(1.0, math.log(value / lo) / math.log(hi / lo))


def serial_fraction(pkg: Package, params: SerialParams) -> float:
    x = _scale(pkg.duration_s, params.duration_lo_s, params.duration_hi_s)
    if pkg.installed_kib is not None:  # else: duration is the only signal
        x = ((1.0 - params.size_weight) * x
             + params.size_weight * _scale(pkg.installed_kib, params.size_lo_kib,
                                           params.size_hi_kib))
    return params.serial_max - (params.serial_max - params.serial_min) * x


def duration(d4: float, serial: float, cores: int) -> float:
    """Wall seconds of a build measured at ``d4`` on 4 cores, run on ``cores``."""
    return d4 * (serial + (1.0 - serial) * MEASURED_CORES / cores)


@dataclass
class DurationModel:
    """Every package's serial fraction, fixed up front: duration(name, cores) is a lookup."""

    params: SerialParams
    serial: dict[str, float]
    d4: dict[str, float]
    overrides: dict[str, float] = field(default_factory=dict)

    def duration(self, name: str, cores: int) -> float:
        return duration(self.d4[name], self.serial[name], cores)

    def min_core_seconds(self, name: str, max_cores: int) -> float:
        """The cheapest way to build it: min over 1..max_cores of c × duration(c)."""
        return min(c * self.duration(name, c) for c in range(1, max_cores + 1))

    def describe(self) -> dict[str, Any]:
        """For result.json: the formula's parameters and what the overrides changed."""
        values = sorted(self.serial.values())
        return {"formula": "duration(c) = d4 * (s + (1 - s) * 4 / c)",
                "params": asdict(self.params), "overrides": dict(sorted(self.overrides.items())),
                "serial_fraction": {"min": values[0], "median": values[len(values) // 2],
                                    "max": values[-1]}}


def build_model(workload: Workload, override: dict[str, Any] | None = None) -> DurationModel:
    """The model for ``workload``, with an override (the decoded JSON file) applied."""
    override = override or {}
    if not isinstance(override, dict) or set(override) - {"default", "packages"}:
        raise BenchInputError("serial-fraction file: expected "
                              '{"default": {param: value}, "packages": {name: s}}')
    raw_params = override.get("default", {})
    known = {f.name for f in fields(SerialParams)}
    if not isinstance(raw_params, dict) or set(raw_params) - known:
        bad = sorted(set(raw_params) - known) if isinstance(raw_params, dict) else raw_params
        raise BenchInputError(f"serial-fraction file: unknown 'default' parameter(s) {bad}; "
                              f"known: {', '.join(sorted(known))}")
    for key, value in raw_params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BenchInputError(f"serial-fraction file: default.{key} must be a number")
    params = SerialParams(**{k: float(v) for k, v in raw_params.items()})
    params.check()
    per_pkg = override.get("packages", {})
    if not isinstance(per_pkg, dict):
        raise BenchInputError("serial-fraction file: 'packages' must map names to fractions")
    names = workload.by_name()
    applied: dict[str, float] = {}
    for name, value in per_pkg.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise BenchInputError(f"serial-fraction file: packages.{name} must be a number "
                                  f"within [0, 1] (got {value!r})")
        if name in names:  # a file shared between workloads may name other packages
            applied[name] = float(value)
    serial = {p.name: applied.get(p.name, serial_fraction(p, params))
              for p in workload.packages}
    return DurationModel(params=params, serial=serial,
                         d4={p.name: p.duration_s for p in workload.packages},
                         overrides=applied)


def load_override(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise BenchInputError(f"cannot read serial-fraction file {path}: "
                              f"{exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BenchInputError(f"serial-fraction file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BenchInputError(f"serial-fraction file {path}: expected a JSON object")
    return data
