"""Virtual time: an asyncio event loop whose clock only moves when nothing is ready to run.

Why asyncio: the node logic mirrors the daemon's asyncio loops (and reuses
:meth:`RaftLog.submit`), so the discrete-event scheduler *is* asyncio's — a heap of timer
handles ordered by time plus a FIFO ready queue — with its I/O poll replaced by "jump to the
next timer". Nothing here blocks or reads a real clock; one process, one thread, so the same
inputs give the same order of callbacks, and the same seed the same run.

:func:`patched_pysyncobj` points pysyncobj's module-level clock and ``random`` at this run's
virtual clock and seeded generator, and its journal/poller factories at the simulated disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import pysyncobj.syncobj as psyncobj
from pysyncobj.poller import Poller

#: Wall-clock time at virtual time 0 (commands carry ``ts`` = EPOCH + virtual seconds).
EPOCH = 1_700_000_000.0
GRID = 1_000_000  # timers fire on whole microseconds


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is pending: the simulation cannot make progress."""


class _NoIO:
    """The loop's selector: there is no I/O, so a poll just advances the virtual clock."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise Deadlock("no callback is ready and no timer is pending")
        if timeout > 0:
            self._loop.advance(timeout)
        return []

    def close(self) -> None:
        pass


def on_grid(when: float) -> float:
    """The first point of the 1 µs grid at or after ``when``.

    Timers live on this grid so that the loop never runs a timer before its time: asyncio
    runs every timer due within ``_clock_resolution`` of now, which on a continuous virtual
    clock lets a waiter whose deadline is a few ulps ahead spin forever at the same instant.
    """
    k = math.ceil(when * GRID)
    if (k - 1) / GRID >= when:
        k -= 1
    return k / GRID


class _Timer(asyncio.TimerHandle):
    """A timer ordered by (time, sequence): timers due at the same instant run in the order
    they were scheduled (asyncio's own orders them by time only)."""

    __slots__ = ("_key",)

    def __init__(self, seq: int, when: float, callback: Callable[..., Any], args: Any,
                 loop: asyncio.AbstractEventLoop, context: Any) -> None:
        super().__init__(when, callback, args, loop, context)
        self._key = (when, seq)

    # Only _Timers are ever scheduled on a VirtualLoop (call_later goes through call_at), and
    # the heap compares them millions of times in a desktop-sized run: no type checks here.
    def __lt__(self, other: object) -> bool:
        return self._key < other._key  # type: ignore[attr-defined,no-any-return]

    def __le__(self, other: object) -> bool:
        return self._key <= other._key  # type: ignore[attr-defined,no-any-return]


class VirtualLoop(asyncio.BaseEventLoop):
    """asyncio on virtual time: ``time()`` is the simulation clock, sleeping costs nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._seq = 0
        self._selector = _NoIO(self)  # type: ignore[assignment]
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,  # type: ignore[override]
                context: Any = None) -> asyncio.TimerHandle:
        self._check_closed()  # type: ignore[attr-defined]
        self._seq += 1
        timer = _Timer(self._seq, on_grid(when), callback, args, self, context)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def advance(self, timeout: float) -> None:
        """Jump to the earliest pending timer (exactly, so it is due without rounding)."""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        target = self._now + timeout
        if scheduled:
            target = max(self._now, min(target, scheduled[0].when()))
        self._now = target

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass


def derive(seed: int, purpose: str) -> random.Random:
    """An independent generator per purpose, so adding draws in one place does not shift the
    draws of another (a fault schedule stays the same when the workload changes)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class SimPoller(Poller):
    """pysyncobj's poller with nothing to poll: the simulated transport delivers messages."""

    def subscribe(self, descr: int, callback: Callable[[int, int], None], eventMask: int) -> None:
        pass

    def unsubscribe(self, descr: int) -> None:
        pass

    def poll(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def patched_pysyncobj(loop: VirtualLoop, rng: random.Random,
                      journals: dict[str, Any]) -> Iterator[None]:
    """Route pysyncobj's clock, randomness, journal and poller through the simulation.

    * ``monotonicTime`` (election deadlines, append period, leader fallback, compaction) reads
      the virtual clock; ``random`` (election timeouts) is the run's seeded generator.
    * ``createJournal(path)`` returns the simulated disk's journal registered under ``path``.
    * ``pollerType="sim"`` gets a poller without descriptors, and the pipe notifier (a real
      pipe that only wakes a blocked poll) is off: the simulation ticks a node whenever a
      command is queued instead.
    """
    saved = {name: getattr(psyncobj, name) for name in
             ("monotonicTime", "random", "createJournal", "createPoller",
              "PIPE_NOTIFIER_ENABLED")}
    previous_journal = saved["createJournal"]
    previous_poller = saved["createPoller"]

    def create_journal(journal_file: str | None = None) -> Any:
        if journal_file is not None and journal_file in journals:
            return journals[journal_file]
        return previous_journal(journal_file)

    def create_poller(poller_type: str) -> Poller:
        return SimPoller() if poller_type == "sim" else previous_poller(poller_type)

    psyncobj.monotonicTime = loop.time  # type: ignore[attr-defined]
    psyncobj.random = rng  # type: ignore[attr-defined]
    psyncobj.createJournal = create_journal  # type: ignore[attr-defined]
    psyncobj.createPoller = create_poller  # type: ignore[attr-defined]
    psyncobj.PIPE_NOTIFIER_ENABLED = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(psyncobj, name, value)
