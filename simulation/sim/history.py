"""The recorded history of a run: what happened, when, where — the input of the invariant
checks, what a violation prints, and (hashed) the proof that a seed replays exactly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    t: float
    node: str
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.t:11.6f} {self.node:<6} {self.kind:<14} {self.detail}"


@dataclass(frozen=True)
class Violation:
    """An invariant that did not hold: which, when, and why (one line a person can act on)."""

    invariant: str
    t: float
    message: str


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


@dataclass
class History:
    """Append-only event log; every field is rendered to text at once (order is the record)."""

    events: list[Event] = field(default_factory=list)

    def record(self, t: float, node: str, kind: str, /, **fields: Any) -> None:
        detail = " ".join(f"{k}={_text(fields[k])}" for k in sorted(fields))
        self.events.append(Event(round(t, 6), node, kind, detail))

    def digest(self, extra: str = "") -> str:
        """sha256 over every event (and ``extra``): equal for equal runs, byte for byte."""
        h = hashlib.sha256()
        for ev in self.events:
            h.update(ev.line().encode())
            h.update(b"\n")
        h.update(extra.encode())
        return h.hexdigest()

    def tail(self, n: int = 30) -> list[str]:
        return [ev.line() for ev in self.events[-n:]]

    def count(self, kind: str) -> int:
        return sum(1 for ev in self.events if ev.kind == kind)
