"""Records of the replicated state: plain dataclasses that round-trip through msgpack.

Every record has ``to_dict()`` / ``from_dict()``. ``to_dict`` returns fresh containers (never
aliases of live state, so a caller mutating a result cannot change the state) and emits maps of
records with sorted keys, so equal states serialise to equal bytes on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

VOTER, NONVOTER, REMOVED = "voter", "nonvoter", "removed"
ROLES = (VOTER, NONVOTER, REMOVED)
DISCOVERY_SOURCES = ("static", "mdns", "tailscale", "cli")

PLANNED = "planned"
READY = "ready"
LEASED = "leased"
BUILT = "built"
FAILED = "failed"
BLOCKED = "blocked"
JOB_STATES = (PLANNED, READY, LEASED, BUILT, FAILED, BLOCKED)
#: A cycle with a job in one of these states still has work to do.
UNFINISHED = (PLANNED, READY, LEASED)

R = TypeVar("R")


#: Values copied as they are: immutable, and packed by msgpack as themselves.
_LEAVES = frozenset({str, int, float, bool, type(None), bytes})
#: record class → its public field names: in declaration order (to_dict), and sorted (plain).
_DECLARED: dict[type, tuple[str, ...]] = {}
_SORTED: dict[type, tuple[str, ...]] = {}


def _names(cls: type, table: dict[type, tuple[str, ...]]) -> tuple[str, ...]:
    names = table.get(cls)
    if names is None:
        public = [f.name for f in fields(cls) if not f.name.startswith("_")]  # type: ignore[arg-type]
        _DECLARED[cls], _SORTED[cls] = tuple(public), tuple(sorted(public))
        names = table[cls]
    return names


def _copy(value: Any, table: dict[type, tuple[str, ...]]) -> Any:
    """A fresh msgpack-ready copy: records as dicts with fields in ``table``'s order, every
    other dict's keys sorted, tuples as lists; leaves are copied inline rather than by a call
    each (the whole state is copied like this for every digest and snapshot)."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is list or kind is tuple:
        return [v if type(v) in _LEAVES else _copy(v, table) for v in value]
    if isinstance(value, dict):
        return {k: v if type(v) in _LEAVES else _copy(v, table)
                for k, v in sorted(value.items())}
    if isinstance(value, _Record):
        out = {}
        for name in _names(kind, table):
            v = getattr(value, name)
            out[name] = v if type(v) in _LEAVES else _copy(v, table)
        return out
    return value


def plain(value: Any) -> Any:
    """The canonical copy of ``value``: sorted keys at every level, records included, so its
    msgpack bytes depend on content only, never on insertion or declaration order."""
    return _copy(value, _SORTED)


class _Record:
    """Generic to_dict/from_dict over the dataclass fields (private `_` fields are skipped)."""

    def to_dict(self) -> dict[str, Any]:
        """Fields in declaration order (what API answers show); nested maps sorted."""
        return _copy(self, _DECLARED)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """Build from a fresh dict (msgpack output or a ``to_dict()``); unknown keys are ignored."""
        names = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Node(_Record):
    """A registered machine; its circuit breaker lives here too.

    ``up``/``down_since`` are the leader's view of reachability (set by ``node_status``): a
    down node may not claim and does not count as a holder of artifacts. ``tree_versions``,
    ``sync_id`` and ``sync_error`` are the node's last ``tree_report`` (profile → portage tree
    version, the sync request it answers, and why that sync failed, if it did).
    """

    node_id: str
    url: str
    cores: int
    profiles: list[str]
    sweeper: bool = False
    tree_versions: dict[str, str] = field(default_factory=dict)
    last_seen: float = 0.0
    consecutive_failures: int = 0
    grounded_until: float | None = None
    probation: bool = False
    raft: str = ""  # canonical Raft address host:port
    up: bool = True
    down_since: float | None = None
    sync_id: str = ""
    sync_error: str = ""
    # Raft membership the swarm wants: "voter", "nonvoter" (a worker that replicates but does
    # not vote) or "removed"; "" for a node registered before roles existed. The leader moves
    # pysyncobj's voter set towards it; `role_ts` is when it last changed, `role_reason` why.
    role: str = ""
    role_ts: float = 0.0
    role_reason: str = ""
    discovery: str = "static"  # how it joined: static (config peers), mdns, tailscale, cli
    slots: int = 0  # builds it runs at once (build.max_parallel_jobs)
    site: str = ""  # where it stands (node.site), for people reading `swarmnode nodes`

    def breaker(self, ts: float) -> str:
        """``grounded`` (may not claim), ``probation`` (one job at a time) or ``ok``."""
        if self.grounded_until is not None:
            return "grounded" if ts < self.grounded_until else "probation"
        return "probation" if self.probation else "ok"


@dataclass
class Artifact(_Record):
    """A built binary package; ``build_id`` is allocated by the state so it never collides."""

    cpv: str
    sha256: str
    size: int
    build_id: int
    slot: str = "0"
    subslot: str = ""
    use: list[str] = field(default_factory=list)
    repo: str = "gentoo"
    holders: list[str] = field(default_factory=list)

    def copy(self) -> Artifact:
        return Artifact.from_dict(self.to_dict())


@dataclass
class Lease(_Record):
    """Permission for one node to build one job until ``expires_at``; ``fence`` fences stale results."""

    fence: int
    node_id: str
    cycle_id: str
    cpv: str
    cores: int
    expires_at: float
    started_at: float
    build_id: int = 0  # allocated at claim: the builder stamps it into the binpkg

    def live(self, ts: float) -> bool:
        return self.expires_at >= ts


@dataclass
class Job(_Record):
    """One package to build in a cycle. ``lease`` is the fence of the live lease, if any."""

    cpv: str
    slot: str = "0"
    subslot: str = ""
    use: list[str] = field(default_factory=list)
    repo: str = "gentoo"
    deps: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    reason: str = ""
    state: str = PLANNED
    lease: int | None = None
    attempts: int = 0
    failed_nodes: list[str] = field(default_factory=list)
    blocked_by: list[str] = field(default_factory=list)
    artifact: Artifact | None = None
    log_sha256: str | None = None
    log_node: str | None = None
    error: str = ""
    cores_used: int | None = None
    duration_s: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        if isinstance(data.get("artifact"), dict):
            data["artifact"] = Artifact.from_dict(data["artifact"])
        return super().from_dict(data)


@dataclass
class Cycle(_Record):
    """A build cycle of one profile: its jobs and the artifacts reused from production.

    Jobs change state only through :meth:`set_state`, which keeps a per-state index (not
    serialised, rebuilt on load) so counting and finding ready jobs is cheap at scale.
    """

    id: str
    profile: str
    tree_version: str = ""
    targets: list[str] = field(default_factory=list)
    created_ts: float = 0.0
    jobs: dict[str, Job] = field(default_factory=dict)
    reused: dict[str, Artifact] = field(default_factory=dict)
    closed: bool = False
    release_id: str | None = None
    # A built job of this cycle was lost and reopened (SwarmState._rebuild_lost): a job whose
    # dependencies are built may still wait for a deeper one being built again.
    reopened: bool = False
    _index: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {s: set() for s in JOB_STATES}
        for cpv, job in self.jobs.items():
            self._index.setdefault(job.state, set()).add(cpv)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cycle:
        data = dict(data)
        data["jobs"] = {k: Job.from_dict(v) for k, v in data.get("jobs", {}).items()}
        data["reused"] = {k: Artifact.from_dict(v) for k, v in data.get("reused", {}).items()}
        return super().from_dict(data)

    def set_state(self, job: Job, state: str) -> None:
        self._index[job.state].discard(job.cpv)
        self._index[state].add(job.cpv)
        job.state = state

    def cpvs_in(self, state: str) -> list[str]:
        return sorted(self._index[state])

    def unordered_in(self, state: str) -> frozenset[str]:
        """The cpvs in ``state`` in no defined order: only for order-free uses (math.fsum, max,
        membership) — anything whose result follows the order must use :meth:`cpvs_in`."""
        return frozenset(self._index[state])

    def count(self, state: str) -> int:
        return len(self._index[state])

    @property
    def counts(self) -> dict[str, int]:
        return {s: len(self._index[s]) for s in JOB_STATES}

    @property
    def planned(self) -> int:
        return self.count(PLANNED)

    @property
    def ready(self) -> int:
        return self.count(READY)

    @property
    def leased(self) -> int:
        return self.count(LEASED)

    @property
    def built(self) -> int:
        return self.count(BUILT)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    @property
    def blocked(self) -> int:
        return self.count(BLOCKED)

    @property
    def unfinished(self) -> int:
        return sum(len(self._index[s]) for s in UNFINISHED)

    @property
    def finished(self) -> bool:
        """No job left to build or in flight (failed/blocked jobs do not keep a cycle open)."""
        return self.unfinished == 0

    def startable(self, cpv: str) -> bool:
        """Every dependency of ``cpv`` is built — transitively, as its build installs them
        all. Until a job is reopened, built jobs only have built dependencies, so looking at
        the direct ones is enough."""
        deps = self.jobs[cpv].deps
        if not all(self.jobs[d].state == BUILT for d in deps):
            return False
        return not self.reopened or all(self.jobs[d].state == BUILT
                                        for d in self.closure(deps, "deps"))

    def closure(self, start: list[str], via: str) -> list[str]:
        """Every job reachable from ``start`` along ``via`` ("deps" or "dependents"),
        transitively, sorted (``start`` itself only if reachable from it)."""
        seen: set[str] = set()
        stack = list(start)
        while stack:
            cpv = stack.pop()
            if cpv not in seen:
                seen.add(cpv)
                stack.extend(getattr(self.jobs[cpv], via))
        return sorted(seen)

    def artifacts(self) -> list[Artifact]:
        """Everything this cycle has so far: reused packages plus built jobs, cpv order."""
        found = dict(self.reused)
        found.update((cpv, j.artifact) for cpv, j in self.jobs.items() if j.artifact is not None)
        return [found[cpv] for cpv in sorted(found)]


@dataclass
class Release(_Record):
    """A published set of packages for one profile (reused + built in its cycle)."""

    id: str
    profile: str
    cycle_id: str
    created_ts: float
    packages: dict[str, Artifact] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Release:
        data = dict(data)
        data["packages"] = {k: Artifact.from_dict(v) for k, v in data.get("packages", {}).items()}
        return super().from_dict(data)


@dataclass
class Production(_Record):
    """Which release a profile's binhost serves; ``timestamp`` only grows (clients cache by it)."""

    release_id: str
    timestamp: int
