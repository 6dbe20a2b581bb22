"""SwarmState: the replicated state machine of the swarm.

``apply(cmd)`` is the only mutator. It is deterministic (time arrives as ``cmd["ts"]``; no
clock, I/O or randomness; no iteration over sets or unordered maps decides anything), never
raises for bad input, and validates a command completely before touching the state, so a
refused command leaves ``digest()`` unchanged. Raft (pysyncobj) replicates this object as is and
the simulator drives it directly.

Idempotency: the result of every command that changed the state is remembered by its ``rid``
(the last :data:`DEDUP_LIMIT`); applying that rid again returns the stored result. Commands that
changed nothing (errors, "nothing to claim") are not remembered: re-running them is harmless.

Swarm: the leader reports which nodes it can reach (``node_status``); a down node loses its
leases at once and its copies do not count. ``finalize`` publishes only artifacts that
:meth:`SwarmState.replica_target` up nodes hold, and a cycle pinned to a portage tree version is
built only by nodes that reported exactly that version (``tree_report``).
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .records import (BLOCKED, BUILT, DISCOVERY_SOURCES, FAILED, LEASED, NONVOTER, PLANNED,
                      READY, REMOVED, ROLES, UNFINISHED, VOTER, Artifact, Cycle, Job, Lease, Node,
                      Production, Release, plain)
from .fields import Bad, Fields, Result, error_result, short
from .scheduling import (HORIZON_MARGIN, LEAF_MARGIN, Candidate, Capacity, cores_within,
                         estimate, fast_paths, learn, one_core_seconds, package_key, place,
                         topo_order, useful_cores, wall_time)

FORMAT_VERSION = 2
#: learn_history: packages per command (a desktop's closure is ~700, all of ::gentoo ~19 000)
#: and the largest one-core estimate taken (~3 years: anything above is a broken log).
HISTORY_LIMIT = 50_000
MAX_HISTORY_CORE_S = 1e8
#: A cat/pn as the state keeps it (lenient: the API checks names through portage, without a
#: version, before they get here; the bench's made-up names are not all valid Gentoo ones).
_PACKAGE_KEY = re.compile(r"^[A-Za-z0-9+_][A-Za-z0-9+_.-]*/[A-Za-z0-9+_][A-Za-z0-9+_.-]*$")
DEDUP_LIMIT = 10_000
#: Long builds not ready yet that a claim plans ahead for (see SwarmState._lookahead), and
#: what "long" means: at least this share of the cycle's projected remaining time.
LOOKAHEAD = 3
LOOKAHEAD_SHARE = 0.1
DEFAULT_CONFIG: dict[str, Any] = {
    "breaker_threshold": 5,      # consecutive failures that ground a node (the seed's figure)
    "breaker_cooldown_s": 300.0,  # how long it stays grounded before probation
    "fail_nodes": 2,             # distinct nodes a job must fail on before it is `failed`
    "keep_releases": 5,          # releases (and cycles) kept per profile
    "replicas": 2,               # up nodes that must hold an artifact before it is published
    "max_voters": 5,             # Raft voters; further nodes join as non-voting workers
    "voter_grace_s": 3600.0,     # a voter down this long is replaced by an up worker
    "lost_after_s": 600.0,       # a build no job waits for, on nodes down this long: rebuilt
}


@dataclass
class _CyclePaths:
    """A cycle's estimates and paths, derived from ``durations`` (cached until they change)."""

    est: dict[str, float]                 # cpv → core-seconds
    keys: dict[str, list[str]]            # cat/pn → cpvs of the cycle (what a learn touches)
    # largest node's cores → cpv → remaining critical path in wall seconds (fast_paths), its
    # own wall seconds on its useful cores, and the cpvs by those, longest first
    fast: dict[int, dict[str, float]] = field(default_factory=dict)
    own: dict[int, dict[str, float]] = field(default_factory=dict)
    by_own: dict[int, list[str]] = field(default_factory=dict)


def _plural(n: int, noun: str) -> str:
    """``1 node`` / ``2 nodes``: refusals are read by people."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class SwarmState:
    """The whole control state of the swarm (see module docstring for the contract)."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = dict(DEFAULT_CONFIG)
        self._nodes: dict[str, Node] = {}
        self.cycles: dict[str, Cycle] = {}
        self.cycle_order: list[str] = []          # creation order, oldest first
        self.leases: dict[int, Lease] = {}        # fence → live lease
        self.next_fence = 1
        self.build_ids: dict[str, int] = {}       # cpv → last allocated BUILD_ID
        self.durations: dict[str, float] = {}     # cat/pn → learned one-core seconds (EWMA)
        self._releases: dict[str, Release] = {}
        self.release_order: list[str] = []        # creation order, oldest first
        self.productions: dict[str, Production] = {}
        self.counters: dict[str, int] = {}
        self.applied: OrderedDict[str, Result] = OrderedDict()
        self.sync: dict[str, Any] = {}            # the last request_sync: {"id", "ts"}
        # The swarm's one package-signing key: {"fingerprint", "public_key", "secret"}; the
        # secret half arrives encrypted with the cluster secret (the state never sees it clear).
        self.signing: dict[str, str] = {}
        # Derived, never serialised (rebuilt on load): sha256 → every Artifact copy, and
        # cycle_id → the estimates and critical paths the claim ranks and places with.
        self._by_sha: dict[str, list[Artifact]] = {}
        self._crit: dict[str, _CyclePaths] = {}
        # under_replicated() is asked after every commit and a desktop-sized state names
        # thousands of artifacts: the short ones are kept (sha256 → entry) and only the shas
        # touched since (indexed, or a holder added) are looked at again — all of them after a
        # reindex or when the up nodes or the replica target change (the key).
        self._reindexed = 0
        self._touched: set[str] = set()
        self._short_key: tuple[Any, ...] | None = None
        self._short: dict[str, dict[str, Any]] = {}
        self._packed_applied: dict[str, bytes] = {}  # rid → msgpack of [rid, result]

    # ------------------------------------------------------------------ serialisation

    def _sections(self) -> dict[str, Any]:
        """The serialised sections except ``applied``, as live (uncopied) values."""
        return {
            "version": FORMAT_VERSION,
            "config": self.config,
            "nodes": self._nodes,
            "cycles": self.cycles,
            "cycle_order": self.cycle_order,
            "leases": [self.leases[f] for f in sorted(self.leases)],
            "next_fence": self.next_fence,
            "build_ids": self.build_ids,
            "durations": self.durations,
            "releases": self._releases,
            "release_order": self.release_order,
            "productions": self.productions,
            "counters": self.counters,
            "sync": self.sync,
            "signing": self.signing,
        }

    def to_dict(self) -> dict[str, Any]:
        # plain() copies the records too, in the same pass: sorted keys at every level, so
        # the packed bytes depend on content only, never on insertion order.
        return plain({**self._sections(),
                      "applied": [[rid, res] for rid, res in self.applied.items()]})

    def to_bytes(self) -> bytes:
        """msgpack of :meth:`to_dict` (canonical: equal states give equal bytes).

        Built section by section (a msgpack map is its header followed by each key and value
        packed): a stored result never changes, so each ``applied`` entry is packed once and
        kept — up to DEDUP_LIMIT of them are in every digest and snapshot.
        """
        packer = msgpack.Packer(use_bin_type=True)
        sections = plain(self._sections())
        packed = self._packed_applied
        self._packed_applied = {rid: packed.get(rid) or packer.pack(plain([rid, res]))
                                for rid, res in self.applied.items()}
        out = [packer.pack_map_header(len(sections) + 1)]
        for key in sorted([*sections, "applied"]):
            out.append(packer.pack(key))
            if key == "applied":
                out.append(packer.pack_array_header(len(self._packed_applied)))
                out.extend(self._packed_applied.values())
            else:
                out.append(packer.pack(sections[key]))
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> SwarmState:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if raw.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported swarm state format {raw.get('version')!r}")
        st = cls()
        st.config = {**DEFAULT_CONFIG, **raw["config"]}
        st._nodes = {k: Node.from_dict(v) for k, v in raw["nodes"].items()}
        st.cycles = {k: Cycle.from_dict(v) for k, v in raw["cycles"].items()}
        st.cycle_order = list(raw["cycle_order"])
        st.leases = {d["fence"]: Lease.from_dict(d) for d in raw["leases"]}
        st.next_fence = raw["next_fence"]
        st.build_ids = dict(raw["build_ids"])
        st.durations = dict(raw["durations"])
        st._releases = {k: Release.from_dict(v) for k, v in raw["releases"].items()}
        st.release_order = list(raw["release_order"])
        st.productions = {k: Production.from_dict(v) for k, v in raw["productions"].items()}
        st.counters = dict(raw["counters"])
        st.sync = dict(raw["sync"])
        st.signing = dict(raw.get("signing", {}))
        st.applied = OrderedDict((rid, res) for rid, res in raw["applied"])
        st._reindex_artifacts()
        return st

    def digest(self) -> str:
        """sha256 hex of :meth:`to_bytes`: replicas with equal digests hold equal state."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    # ------------------------------------------------------------------ read helpers

    def cycle(self, cycle_id: str) -> Cycle | None:
        return self.cycles.get(cycle_id)

    def _cycles_of(self, profile: str) -> list[Cycle]:
        """Cycles of a profile, newest first."""
        return [self.cycles[c] for c in reversed(self.cycle_order)
                if self.cycles[c].profile == profile]

    def latest_cycle(self, profile: str) -> Cycle | None:
        found = self._cycles_of(profile)
        return found[0] if found else None

    def active_cycles(self) -> list[Cycle]:
        """Cycles with jobs still to build or in flight, oldest first."""
        return [self.cycles[c] for c in self.cycle_order if not self.cycles[c].finished]

    def release(self, release_id: str) -> Release | None:
        return self._releases.get(release_id)

    def production(self, profile: str) -> Production | None:
        return self.productions.get(profile)

    def releases(self, profile: str) -> list[Release]:
        return [self._releases[r] for r in reversed(self.release_order)
                if self._releases[r].profile == profile]

    def node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def nodes(self) -> list[Node]:
        return [self._nodes[k] for k in sorted(self._nodes)]

    def find_job(self, profile: str, cpv: str) -> Job | None:
        """The job for ``cpv`` in the newest cycle of ``profile`` that has it."""
        for cyc in self._cycles_of(profile):
            if cpv in cyc.jobs:
                return cyc.jobs[cpv]
        return None

    def lease(self, fence: int) -> Lease | None:
        return self.leases.get(fence)

    def needs_maintenance(self, ts: float) -> bool:
        """Would an ``expire`` at ``ts`` change anything (a lease ran out, a breaker cooled, a
        build's every copy has been down ``lost_after_s``)?"""
        return any(l.expires_at < ts for l in self.leases.values()) or any(
            n.grounded_until is not None and n.grounded_until <= ts
            for n in self._nodes.values()) or self._lost_due(ts)

    def estimate(self, cpv: str) -> float:
        """Estimated core-seconds to build ``cpv`` (learned per package, default 60)."""
        return estimate(self.durations, cpv)

    def referenced_objects(self) -> set[str]:
        """sha256 of every artifact and build log the state still names (kept releases and
        cycles): what a node's store must keep; anything else can be collected."""
        found: set[str] = set()
        for release in self._releases.values():
            found.update(a.sha256 for a in release.packages.values())
        for cyc in self.cycles.values():
            found.update(a.sha256 for a in cyc.reused.values())
            for job in cyc.jobs.values():
                if job.artifact is not None:
                    found.add(job.artifact.sha256)
                if job.log_sha256:
                    found.add(job.log_sha256)
        return found

    # ------------------------------------------------------------------ durability

    def replica_target(self) -> int:
        """Copies an artifact needs: ``replicas``, but never more than there are up nodes
        (a one-node swarm can still publish) and never fewer than one."""
        up = sum(1 for n in self._nodes.values() if n.up)
        return max(1, min(self.config["replicas"], up))

    def live_holders(self, art: Artifact) -> list[str]:
        """Registered, up nodes holding ``art``'s bytes, sorted.

        Stores are content-addressed, so a holder of any copy with the same sha256 counts (a
        reused copy may name holders the others do not).
        """
        return sorted(h for h in self._holders(art)
                      if (n := self._nodes.get(h)) is not None and n.up)

    def _holders(self, art: Artifact) -> set[str]:
        """Every node named as holding ``art``'s bytes, up or not (any copy's holders)."""
        holders = set(art.holders)
        for other in self._by_sha.get(art.sha256, ()):
            holders.update(other.holders)
        return holders

    def durable(self, art: Artifact) -> bool:
        """Enough up nodes hold ``art`` that losing one does not lose it (see replica_target)."""
        return len(self.live_holders(art)) >= self.replica_target()

    def under_replicated(self) -> list[dict[str, Any]]:
        """Every artifact the state names that is not durable, by sha256: what to copy where."""
        target = self.replica_target()
        up = {node_id for node_id, n in self._nodes.items() if n.up}
        key = (self._reindexed, target, tuple(sorted(up)))
        if key != self._short_key:
            self._short_key, self._short = key, {}
            self._touched = set(self._by_sha)
        for sha in self._touched:
            entry = self._shortfall(sha, target, up)
            if entry is None:
                self._short.pop(sha, None)
            else:
                self._short[sha] = entry
        self._touched = set()
        return [{**self._short[sha], "holders": list(self._short[sha]["holders"])}
                for sha in sorted(self._short)]

    def _shortfall(self, sha: str, target: int, up: set[str]) -> dict[str, Any] | None:
        """What copying ``sha`` still needs, or None when enough up nodes hold it."""
        copies = self._by_sha.get(sha)
        if not copies:
            return None
        holders = copies[0].holders if len(copies) == 1 else \
            set().union(*(a.holders for a in copies))
        live = up.intersection(holders)
        if len(live) >= target:
            return None
        cpv, size = min((a.cpv, a.size) for a in copies)  # independent of index order
        return {"sha256": sha, "size": size, "cpv": cpv, "holders": sorted(live),
                "missing": target - len(live)}

    def summary(self) -> dict[str, Any]:
        """JSON-able overview for `swarmnode status` and the dashboard."""
        held: dict[str, list[int]] = {}
        for fence in sorted(self.leases):
            held.setdefault(self.leases[fence].node_id, []).append(fence)
        profiles = sorted({c.profile for c in self.cycles.values()} | set(self.productions)
                          | {p for n in self._nodes.values() for p in n.profiles})
        out_profiles: dict[str, Any] = {}
        for prof in profiles:
            cyc = self.latest_cycle(prof)
            prod = self.productions.get(prof)
            out_profiles[prof] = {
                "production": prod.to_dict() if prod else None,
                "releases": [r.id for r in self.releases(prof)],
                "cycle": None if cyc is None else {
                    "id": cyc.id, "tree_version": cyc.tree_version, "created_ts": cyc.created_ts,
                    "targets": list(cyc.targets), "closed": cyc.closed,
                    "release_id": cyc.release_id, "finished": cyc.finished,
                    "counts": cyc.counts, "reused": len(cyc.reused),
                    "failed": [{"cpv": j, "error": cyc.jobs[j].error,
                                "failed_nodes": list(cyc.jobs[j].failed_nodes),
                                "log_sha256": cyc.jobs[j].log_sha256,
                                "log_node": cyc.jobs[j].log_node}
                               for j in cyc.cpvs_in(FAILED)],
                    "blocked": cyc.cpvs_in(BLOCKED),
                },
            }
        return {
            "nodes": [{**n.to_dict(), "leases": held.get(n.node_id, [])}
                      for n in self.nodes()],
            "profiles": out_profiles,
            "leases": [self.leases[f].to_dict() for f in sorted(self.leases)],
            "counters": dict(sorted(self.counters.items())),
            "config": dict(self.config),
            "under_replicated": len(short := self.under_replicated()),
            "unavailable": sum(1 for entry in short if not entry["holders"]),
            "replica_target": self.replica_target(),
            "sync": dict(self.sync),
            "estimates": {"packages": len(self.durations),
                          "from_history": self.counters.get("history_learned", 0)},
        }

    # ------------------------------------------------------------------ apply

    def apply(self, cmd: dict[str, Any]) -> Result:
        """Apply one command; see the module docstring. Never raises."""
        if not isinstance(cmd, dict):
            return error_result(
                f"a command must be a map with 'op', 'rid' and 'ts' (got {short(cmd)})")
        op = cmd.get("op")
        handler = _HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            return error_result(
                f"unknown op {short(op)}; expected one of: {', '.join(sorted(_HANDLERS))}")
        rid = cmd.get("rid")
        if not isinstance(rid, str) or not rid:
            return error_result(
                f"{op}: field 'rid' must be a non-empty string (got {short(rid)})")
        if rid in self.applied:
            return copy.deepcopy(self.applied[rid])
        fields = Fields(str(op), cmd)
        try:
            ts = fields.number("ts")
            result, changed = handler(self, fields, ts)
        except Bad as exc:
            return error_result(str(exc))
        except Exception as exc:  # a bug: report it as one line rather than kill the replica
            return error_result(f"{op}: internal error: {type(exc).__name__}: {exc}")
        if changed:
            self.applied[rid] = result
            while len(self.applied) > DEDUP_LIMIT:
                self.applied.popitem(last=False)
        return copy.deepcopy(result)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ------------------------------------------------------------------ ops

    def _op_register_node(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Upsert a node (its breaker state survives re-registration); a node that registers
        is running, so it is marked up."""
        node_id = f.text("node_id")
        url = f.text("url", empty=True)
        raft = f.text("raft", default="", empty=True)
        cores = f.integer("cores", minimum=1)
        profiles = sorted(set(f.texts("profiles")))
        sweeper = f.flag("sweeper", default=False)
        tree_versions = f.text_map("tree_versions", default={})
        voter = f.flag("voter", default=None)
        slots = f.integer("slots", minimum=0, default=0)
        site = f.text("site", default="", empty=True)
        source = f.text("discovery", default="static")
        if source not in DISCOVERY_SOURCES:
            raise Bad(f"register_node: field 'discovery' must be one of "
                      f"{', '.join(DISCOVERY_SOURCES)} (got {short(source)})")
        node = self._nodes.get(node_id)
        new = node is None
        if node is None:
            node = self._nodes[node_id] = Node(node_id=node_id, url=url, cores=cores,
                                              profiles=profiles)
        node.url, node.cores, node.profiles = url, cores, profiles
        node.sweeper, node.tree_versions, node.last_seen = sweeper, tree_versions, ts
        node.raft, node.up, node.down_since = raft, True, None
        node.slots, node.site = slots, site
        if not node.role and voter is not None:  # a statically configured node says what it is
            self._set_role(node, VOTER if voter else NONVOTER, ts, "registered")
            node.discovery = source
        return {"ok": True, "node": node.to_dict(), "new": new}, True

    def voters(self) -> list[Node]:
        return [n for n in self.nodes() if n.role == VOTER]

    def _set_role(self, node: Node, role: str, ts: float, reason: str) -> None:
        node.role, node.role_ts, node.role_reason = role, ts, reason

    def _op_admit_node(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Admit a node that proved it knows the cluster secret (discovery's join handshake).

        The role is decided here, in log order, so concurrent joins through different nodes
        never admit more than ``max_voters`` voters. A node admitted again (restarted with an
        empty data dir, a new address) keeps its role unless it had been removed.
        """
        node_id = f.text("node_id")
        raft = f.text("raft")
        url = f.text("url")
        cores = f.integer("cores", minimum=1)
        source = f.text("discovery")
        if source not in DISCOVERY_SOURCES:
            raise Bad(f"admit_node: field 'discovery' must be one of "
                      f"{', '.join(DISCOVERY_SOURCES)} (got {short(source)})")
        clash = [n.node_id for n in self.nodes() if n.raft == raft and n.node_id != node_id
                 and n.role != REMOVED]
        if clash:
            raise Bad(f"admit_node: Raft address {raft} already belongs to node {clash[0]}; "
                      "give every node its own node.raft")
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = Node(node_id=node_id, url=url, cores=cores,
                                              profiles=[], last_seen=ts)
        changed = (node.url, node.raft, node.discovery) != (url, raft, source)
        node.url, node.raft, node.discovery = url, raft, source
        if node.role in ("", REMOVED):
            full = len(self.voters()) >= self.config["max_voters"]
            self._set_role(node, NONVOTER if full else VOTER, ts, f"admitted via {source}")
            changed = True
        return {"ok": True, "role": node.role, "node": node.to_dict(),
                "voters": [n.raft for n in self.voters() if n.raft]}, changed

    def _op_set_role(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Promote, demote or remove a node (the leader's membership policy or an operator);
        the leader then changes pysyncobj's voter set to match."""
        node_id = f.text("node_id")
        role = f.text("role")
        reason = f.text("reason", default="", empty=True)
        if role not in ROLES:
            raise Bad(f"set_role: field 'role' must be one of {', '.join(ROLES)} "
                      f"(got {short(role)})")
        node = self._nodes.get(node_id)
        if node is None:
            raise Bad(f"set_role: node {node_id} is not registered; see `swarmnode nodes`")
        if node.role == role:
            return {"ok": True, "node": node.to_dict(), "changed": False}, False
        if role == VOTER and len(self.voters()) >= self.config["max_voters"]:
            raise Bad(f"set_role: the swarm already has {len(self.voters())} voters "
                      f"(cluster.max_voters is {self.config['max_voters']}); demote one "
                      "first or raise max_voters")
        if role == VOTER and not node.raft:
            raise Bad(f"set_role: node {node_id} has no Raft address and cannot vote")
        self._set_role(node, role, ts, reason)
        return {"ok": True, "node": node.to_dict(), "changed": True}, True

    def _op_node_status(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """The leader's view of which nodes are reachable; a node that is down loses its leases.

        Revoking at once (rather than waiting for the leases to expire) requeues the jobs a
        dead machine held a whole lease TTL sooner; its late results are then stale.
        """
        up = sorted(set(f.texts("up", default=[])))
        down = sorted(set(f.texts("down", default=[])))
        for node_id in (*up, *down):
            if node_id not in self._nodes:
                raise Bad(f"node_status: node {node_id} is not registered; "
                          "list only registered nodes")
        both = sorted(set(up) & set(down))
        if both:
            raise Bad(f"node_status: {', '.join(both)} listed both up and down; "
                      "name each node once")
        # -- valid: mutate from here on
        came_up = [n for n in up if not self._nodes[n].up]
        went_down = [n for n in down if self._nodes[n].up]
        for node_id in came_up:
            self._nodes[node_id].up, self._nodes[node_id].down_since = True, None
        for node_id in went_down:
            self._nodes[node_id].up, self._nodes[node_id].down_since = False, ts
        revoked: list[list[Any]] = []
        for fence in sorted(self.leases):
            lease = self.leases[fence]
            holder = self._nodes.get(lease.node_id)
            if holder is not None and not holder.up and lease.live(ts):
                revoked.append(self._requeue(fence))
        if revoked:
            self._count("revoked_leases", len(revoked))
        rebuild = self._rebuild_lost(ts) if went_down else []
        return ({"ok": True, "went_down": went_down, "came_up": came_up, "revoked": revoked,
                 "rebuild": rebuild}, bool(went_down or came_up or revoked or rebuild))

    def _rebuild_lost(self, ts: float) -> list[list[Any]]:
        """Built jobs of each profile's open cycle whose every copy is on down nodes are built
        again; returns ``[cycle_id, cpv, [jobs whose lease was revoked]]`` for each.

        A machine that dies a moment after a build, before anyone copied it, would otherwise
        hold the jobs that install it (and the release) until it comes back, which may be
        never. A lost build some unbuilt job needs (its build installs every dependency,
        transitively) is built again at once; one nothing waits for only once every holder
        has been down ``lost_after_s`` (a rebooting node's copies come back with it). Jobs
        that need a lost build wait again; those already leased are requeued (their builder
        could only wait for bytes nobody up has). Only the latest cycle of a profile is
        reopened: an older unfinalized cycle stays as it was (reopening it would block new
        cycles of the profile).
        """
        out: list[list[Any]] = []
        long_ago = ts - self.config["lost_after_s"]
        for cyc in self._open_cycles():
            gone = {cpv: art for cpv in cyc.cpvs_in(BUILT)
                    if (art := cyc.jobs[cpv].artifact) is not None
                    and not self.live_holders(art)}
            if not gone:
                continue
            due = [c for c, art in gone.items() if self._down_since(art, long_ago)]
            todo = [c for s in UNFINISHED for c in cyc.cpvs_in(s)] + due
            needed = set(cyc.closure([d for c in todo for d in cyc.jobs[c].deps], "deps"))
            lost = sorted(gone.keys() & needed | set(due))
            if not lost:
                continue
            # _learn keeps a built job's stale estimate in the cached paths (harmless while it
            # stays built); a replica restored from a snapshot has the fresh one. Both must
            # rank the job the same way once it is unbuilt again.
            self._crit.pop(cyc.id, None)
            cyc.reopened = True
            for cpv in lost:
                cyc.jobs[cpv].artifact = None
                cyc.set_state(cyc.jobs[cpv], PLANNED)
            requeued: dict[str, list[str]] = {cpv: [] for cpv in lost}
            for cpv in cyc.closure([d for c in lost for d in cyc.jobs[c].dependents],
                                   "dependents"):
                job = cyc.jobs[cpv]
                if job.state == LEASED and job.lease is not None:
                    self._requeue(job.lease)
                    for dep in sorted(set(cyc.closure(job.deps, "deps")) & set(lost)):
                        requeued[dep].append(cpv)
                if job.state == READY:
                    cyc.set_state(job, PLANNED)
            for cpv in lost:
                if cyc.startable(cpv):
                    cyc.set_state(cyc.jobs[cpv], READY)
                out.append([cyc.id, cpv, requeued[cpv]])
        if out:
            self._reindex_artifacts()
            self._count("lost_builds", len(out))
        return out

    def _open_cycles(self) -> list[Cycle]:
        """The latest cycle of each profile, if not finalized (by profile)."""
        latest = (self.latest_cycle(p) for p in sorted({c.profile for c in self.cycles.values()}))
        return [c for c in latest if c is not None and not c.closed]

    def _down_since(self, art: Artifact, ts: float) -> bool:
        """Every node holding ``art`` (any copy with its sha256) has been down since ``ts``
        or earlier (or is no longer registered)."""
        return all((n := self._nodes.get(h)) is None
                   or (not n.up and n.down_since is not None and n.down_since <= ts)
                   for h in self._holders(art))

    def _lost_due(self, ts: float) -> bool:
        """Would :meth:`_rebuild_lost` at ``ts`` find a build nothing waits for that is due?
        Cheap when no node has been down ``lost_after_s``: the usual case, asked by every
        maintenance round."""
        long_ago = ts - self.config["lost_after_s"]
        if not any(not n.up and n.down_since is not None and n.down_since <= long_ago
                   for n in self._nodes.values()):
            return False
        return any((art := cyc.jobs[c].artifact) is not None and self._down_since(art, long_ago)
                   for cyc in self._open_cycles() for c in cyc.unordered_in(BUILT))

    def _op_request_sync(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Ask every node to sync its portage tree; nodes answer with a ``tree_report``
        naming ``sync_id``, so the operator can see who has caught up."""
        sync_id = f.text("sync_id")
        if self.sync.get("id") == sync_id:
            return {"ok": True, "sync": dict(self.sync), "new": False}, False
        self.sync = {"id": sync_id, "ts": ts}
        return {"ok": True, "sync": dict(self.sync), "new": True}, True

    def _op_tree_report(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """A node's portage tree versions (profile → version), which gate pinned cycles' claims,
        and the outcome of the sync it answers."""
        node_id = f.text("node_id")
        versions = f.text_map("tree_versions")
        sync_id = f.text("sync_id", default="", empty=True)
        error = f.text("error", default="", empty=True)
        node = self._nodes.get(node_id)
        if node is None:
            raise Bad(f"tree_report: node {node_id} is not registered; register it first")
        node.tree_versions, node.sync_id, node.sync_error = versions, sync_id, error
        node.last_seen = ts
        return {"ok": True, "node": node.to_dict()}, True

    def _op_set_signing_key(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Offer a signing key; the first offer wins and every node then signs with it, so a
        client trusting one key verifies every package whichever node built it."""
        offer = {"fingerprint": f.text("fingerprint"), "public_key": f.text("public_key"),
                 "secret": f.text("secret")}
        if self.signing:
            return {"ok": True, "accepted": False, **self.signing}, False
        self.signing = offer
        return {"ok": True, "accepted": True, **offer}, True

    def _op_barrier(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Change nothing. A replica that has applied its barrier has applied everything
        committed before it, so a read after it is linearizable (a read through the log)."""
        return {"ok": True}, False

    def _op_start_cycle(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Create a cycle after checking its job graph; jobs without deps start ready."""
        cycle_id = f.text("cycle_id")
        profile = f.text("profile")
        tree_version = f.text("tree_version", default="", empty=True)
        targets = f.texts("targets", default=[])
        jobs = self._parse_jobs(f.items("jobs"))
        reused = self._parse_artifacts(f.items("reused", default=[]))
        if cycle_id in self.cycles:
            raise Bad(f"start_cycle: cycle {cycle_id} already exists; use a new cycle id")
        for cyc in self._cycles_of(profile):
            if not cyc.finished and not cyc.closed:
                raise Bad(f"start_cycle: cycle {cyc.id} for {profile} is still running; "
                           "wait, or `swarmnode reset`")
        for cpv in sorted(jobs):
            for dep in jobs[cpv].deps:
                if dep not in jobs:
                    raise Bad(f"start_cycle: job {cpv} depends on {dep}, "
                               "which is not a job of this cycle")
        _, stuck = topo_order({c: j.deps for c, j in jobs.items()})
        if stuck:
            raise Bad(f"start_cycle: dependency cycle among {', '.join(stuck[:8])}"
                       + (f" (+{len(stuck) - 8} more)" if len(stuck) > 8 else ""))
        # -- valid: mutate from here on
        for cpv in sorted(jobs):
            for dep in jobs[cpv].deps:
                jobs[dep].dependents.append(cpv)
        for job in jobs.values():
            job.state = PLANNED if job.deps else READY
        for art in reused.values():
            if not art.holders:
                art.holders = sorted({h for a in self._by_sha.get(art.sha256, [])
                                      for h in a.holders})
            self.build_ids[art.cpv] = max(self.build_ids.get(art.cpv, 0), art.build_id)
        cyc = Cycle(id=cycle_id, profile=profile, tree_version=tree_version, targets=targets,
                    created_ts=ts, jobs=jobs, reused=reused)
        self.cycles[cycle_id] = cyc
        self.cycle_order.append(cycle_id)
        for art in reused.values():
            self._index_artifact(art)
        pruned = self._prune_cycles(profile)
        return {"ok": True, "cycle_id": cycle_id, "profile": profile, "jobs": len(jobs),
                "ready": cyc.ready, "reused": len(reused), "complete": cyc.finished,
                "pruned_cycles": pruned}, True

    def _parse_jobs(self, raw_jobs: list[Any]) -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        for i, raw in enumerate(raw_jobs):
            if not isinstance(raw, dict):
                raise Bad(f"start_cycle: jobs[{i}] must be a map (got {short(raw)})")
            jf = Fields(f"start_cycle: jobs[{i}]", raw)
            cpv = jf.cpv("cpv")
            if cpv in jobs:
                raise Bad(f"start_cycle: job {cpv} is listed twice")
            jobs[cpv] = Job(cpv=cpv, slot=jf.text("slot", default="0"),
                            subslot=jf.text("subslot", default="", empty=True),
                            use=sorted(set(jf.texts("use", default=[]))),
                            repo=jf.text("repo", default="gentoo"),
                            deps=sorted(set(jf.texts("deps", default=[]))),
                            reason=jf.text("reason", default="", empty=True))
        return jobs

    def _parse_artifacts(self, raw_list: list[Any]) -> dict[str, Artifact]:
        out: dict[str, Artifact] = {}
        for i, raw in enumerate(raw_list):
            if not isinstance(raw, dict):
                raise Bad(f"start_cycle: reused[{i}] must be a map (got {short(raw)})")
            af = Fields(f"start_cycle: reused[{i}]", raw)
            art = Artifact(cpv=af.cpv("cpv"), sha256=af.text("sha256"),
                           size=af.integer("size", minimum=0), build_id=af.integer("build_id", minimum=1),
                           slot=af.text("slot", default="0"),
                           subslot=af.text("subslot", default="", empty=True),
                           use=sorted(set(af.texts("use", default=[]))),
                           repo=af.text("repo", default="gentoo"),
                           holders=sorted(set(af.texts("holders", default=[]))))
            if art.cpv in out:
                raise Bad(f"start_cycle: reused artifact {art.cpv} is listed twice")
            out[art.cpv] = art
        return out

    def _op_claim(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Lease the job this node should start now, on the cores it should get (_place).

        Candidates are ranked by remaining critical path (a sweeper picks by its own order
        among those it may start, see _rank). The answer may be "nothing" although jobs are
        ready: they finish sooner on another node, or this node keeps its cores free for one
        about to need them. The job dict in the result also carries ``cycle_id``,
        ``profile`` and ``est_core_s``.
        """
        node_id = f.text("node_id")
        free_cores = f.integer("free_cores")
        ttl = f.number("lease_ttl_s", positive=True)
        if free_cores < 1:
            raise Bad(f"claim: free_cores must be ≥ 1 (got {free_cores}): no core to build on")
        choice = self._choose(node_id, free_cores, ts)
        if isinstance(choice, str):
            return self._nothing(choice)
        node, cyc, job, cores = choice
        if node.breaker(ts) == "probation":
            node.grounded_until, node.probation = None, True
        est = estimate(self.durations, job.cpv)
        # BUILD_IDs are allocated here, in one place, so builders never collide; an id whose
        # lease expires is simply never used.
        build_id = self.build_ids.get(job.cpv, 0) + 1
        self.build_ids[job.cpv] = build_id
        lease = Lease(fence=self.next_fence, node_id=node_id, cycle_id=cyc.id, cpv=job.cpv,
                      cores=cores, expires_at=ts + ttl, started_at=ts, build_id=build_id)
        self.next_fence += 1
        self.leases[lease.fence] = lease
        job.lease, job.cores_used = lease.fence, cores
        cyc.set_state(job, LEASED)
        self._count("claims")
        # The result is kept in the dedup table (and so in every snapshot): only what a builder
        # needs, not the job's dependency lists (a library's dependents can number hundreds).
        brief = {k: v for k, v in job.to_dict().items()
                 if k in ("cpv", "slot", "subslot", "use", "repo", "reason", "attempts")}
        return {"ok": True, "job": {**brief, "cycle_id": cyc.id, "profile": cyc.profile,
                                    "est_core_s": est},
                "lease": lease.to_dict()}, True

    def claim_preview(self, node_id: str, free_cores: int, ts: float) -> dict[str, Any]:
        """What a ``claim`` by ``node_id`` with ``free_cores`` at ``ts`` would get, without
        claiming: ``{"cpv", "cycle_id", "cores"}``, or ``{"cpv": None, "reason"}``.

        A claim may get nothing although jobs are ready (see _op_claim), and every proposed
        claim is a Raft commit that wakes every node: a worker should ask this first and
        propose only when it answers a job.
        """
        if free_cores < 1:
            return {"cpv": None, "reason": "no free core"}
        choice = self._choose(node_id, free_cores, ts)
        if isinstance(choice, str):
            return {"cpv": None, "reason": choice}
        _, cyc, job, cores = choice
        return {"cpv": job.cpv, "cycle_id": cyc.id, "cores": cores}

    def _choose(self, node_id: str, free_cores: int,
                ts: float) -> tuple[Node, Cycle, Job, int] | str:
        """The job and cores a claim gives (changes nothing), or why there is none."""
        node = self._nodes.get(node_id)
        if node is None:
            return f"node {node_id} is not registered; register it first"
        if not node.up:
            return f"node {node_id} is marked down; it claims again once the leader sees it"
        breaker = node.breaker(ts)
        if breaker == "grounded":
            return (f"node {node_id} is grounded until {node.grounded_until:.0f} "
                    f"after {node.consecutive_failures} consecutive failures")
        if breaker == "probation" and any(l.node_id == node_id for l in self.leases.values()):
            return f"node {node_id} is on probation: one job at a time until a build succeeds"
        ranked: list[tuple[tuple[float, float, str, int], Cycle, Job]] = []
        any_ready = False
        tree_block = ""  # why the first cycle skipped for its tree version was skipped
        for pos, cyc in enumerate(self.active_cycles()):
            any_ready = any_ready or cyc.ready > 0
            if cyc.ready == 0 or cyc.profile not in node.profiles:
                continue
            if cyc.tree_version and node.tree_versions.get(cyc.profile) != cyc.tree_version:
                tree_block = tree_block or self._tree_mismatch(node, cyc)
                continue
            crit = self._fast(cyc, max(n.cores for n in [node, *self._builders(cyc, ts)]))
            for cpv in cyc.cpvs_in(READY):
                job = cyc.jobs[cpv]
                ranked.append((self._rank(node.sweeper, job, crit, pos), cyc, job))
        if not any(node_id not in job.failed_nodes for _, _, job in ranked):
            if not any_ready:
                return "nothing ready to build"
            if tree_block:
                return f"no ready job node {node_id} can take: {tree_block}"
            return f"no ready job node {node_id} can take (profiles, or it failed them before)"
        ranked.sort(key=lambda r: r[0])
        placed = self._place(node, free_cores, ranked, ts)
        if isinstance(placed, str):
            return f"node {node_id} waits: {placed}"
        return (node, *placed)

    @staticmethod
    def _nothing(reason: str) -> tuple[Result, bool]:
        return {"ok": True, "job": None, "reason": reason}, False

    @staticmethod
    def _tree_mismatch(node: Node, cyc: Cycle) -> str:
        """Why ``node`` may not build for pinned ``cyc``, and what fixes it."""
        have = node.tree_versions.get(cyc.profile)
        where = f"is at {have}" if have is not None else "has not been reported"
        return (f"its portage tree for {cyc.profile} {where}, the cycle is pinned to "
                f"{cyc.tree_version}; run `swarmnode sync`")

    def _rank(self, sweeper: bool, job: Job, crit: dict[str, float],
              pos: int) -> tuple[float, float, str, int]:
        """Claim order of a ready job, smallest first (ties: cpv, then older cycle).

        The longest remaining critical path first: list scheduling keeps the makespan near
        its critical-path bound, and placement (scheduling.place) sends each long build to
        the node where it finishes first, so a long build never blocks the queue. A sweeper
        takes retried work (jobs that failed or lost a lease) before anything else: they get
        a different machine at once instead of waiting behind the critical path. (A sweeper
        that took the longest builds first put critical ones on its few cores: on a
        real-shaped workload 1.41x the lower bound instead of 1.15x, see
        simulation/bench/README.md.)
        """
        retry = job.attempts > 0 or bool(job.failed_nodes)
        return (0.0 if retry or not sweeper else 1.0, -crit[job.cpv], job.cpv, pos)

    def _paths(self, cyc: Cycle) -> _CyclePaths:
        cached = self._crit.get(cyc.id)
        if cached is None:
            est = {c: estimate(self.durations, c) for c in cyc.jobs}
            keys: dict[str, list[str]] = {}
            for cpv in cyc.jobs:
                keys.setdefault(package_key(cpv), []).append(cpv)
            cached = _CyclePaths(est=est, keys=keys)
            self._crit[cyc.id] = cached
        return cached

    def _fast(self, cyc: Cycle, max_cores: int) -> dict[str, float]:
        paths = self._paths(cyc)
        if max_cores not in paths.fast:
            paths.fast[max_cores] = fast_paths(
                {c: j.deps for c, j in cyc.jobs.items()},
                {c: j.dependents for c, j in cyc.jobs.items()}, paths.est, max_cores)
            own = {c: wall_time(e, min(useful_cores(e), max_cores))
                   for c, e in paths.est.items()}
            paths.own[max_cores] = own
            paths.by_own[max_cores] = sorted(own, key=lambda c: (-own[c], c))
        return paths.fast[max_cores]

    def _builders(self, cyc: Cycle, ts: float) -> list[Node]:
        """Nodes that can take a job of ``cyc`` now or later: up, not grounded, serving its
        profile at its tree version, and (on probation) not already building."""
        busy = {l.node_id for l in self.leases.values()}
        return [n for n in self.nodes()
                if n.up and cyc.profile in n.profiles and n.breaker(ts) != "grounded"
                and not (n.breaker(ts) == "probation" and n.node_id in busy)
                and (not cyc.tree_version
                     or n.tree_versions.get(cyc.profile) == cyc.tree_version)]

    def _predicted_end(self, lease: Lease, ts: float) -> float:
        """When a running build should end. One that overran its estimate is given half its
        overrun again (at least 1 s): a build stuck for hours must not look about to free its
        node, which would keep others waiting for that node."""
        cyc = self.cycles.get(lease.cycle_id)
        est = self._paths(cyc).est.get(lease.cpv) if cyc else None
        if est is None:
            est = estimate(self.durations, lease.cpv)
        end = lease.started_at + wall_time(est, lease.cores)
        if end > ts:
            return end
        return ts + max(1.0, 0.5 * (ts - end))

    def _place(self, node: Node, free: int,
               ranked: list[tuple[tuple[float, float, str, int], Cycle, Job]],
               ts: float) -> tuple[Cycle, Job, int] | str:
        """The ranked job ``node`` starts now and its cores, or why it waits.

        Each job wants the fewest cores (up to ``useful_cores``) with which the chain behind
        it still ends within HORIZON_MARGIN (a leaf: LEAF_MARGIN) of the cycle's projected
        remaining time — the longer of its critical path (every job on its useful cores on the
        largest node) and its remaining work spread over every core that serves it. Jobs on
        the critical path get all the cores they can use; jobs with slack get fewer, which
        wastes less (builds do not speed up linearly). :func:`scheduling.place` then decides
        where each goes, with the long builds of the critical path that are not ready yet
        (_lookahead) first.
        """
        ends = {f: self._predicted_end(l, ts) for f, l in sorted(self.leases.items())}
        ending = {(l.cycle_id, l.cpv): ends[f] for f, l in self.leases.items()}
        entries: list[tuple[tuple[float, float, str, int], Cycle, Job, float]] = []
        builders: dict[str, Node] = {}
        want: dict[tuple[str, str], tuple[int, tuple[str, ...]]] = {}
        for pos, cyc in enumerate(self.active_cycles()):
            if not any(c is cyc for _, c, _ in ranked):
                continue
            nodes = self._builders(cyc, ts)
            if node not in nodes:
                nodes.append(node)
            builders.update((n.node_id, n) for n in nodes)
            max_cores = max(n.cores for n in nodes)
            paths, fast = self._paths(cyc), self._fast(cyc, max_cores)
            own = paths.own[max_cores].__getitem__
            critical = max(fast[c] for c in cyc.unordered_in(READY))
            ready_best = critical
            work = [paths.est[c] for c in cyc.unordered_in(READY) | cyc.unordered_in(PLANNED)]
            for cpv in cyc.cpvs_in(LEASED):
                end = ending.get((cyc.id, cpv), ts)
                critical = max(critical, end - ts + fast[cpv] - own(cpv))
                took = wall_time(paths.est[cpv], cyc.jobs[cpv].cores_used or 1)
                work.append(paths.est[cpv] * min(1.0, (end - ts) / max(1e-9, took)))
            horizon = max(critical, math.fsum(work) / sum(n.cores for n in nodes))
            entries += self._lookahead(cyc, pos, ts, ending, max_cores, ready_best,
                                       LOOKAHEAD_SHARE * horizon)
            entries += [(k, c, j, ts) for k, c, j in ranked if c is cyc]
            for _, c, job, _ in entries:
                if c is cyc and (cyc.id, job.cpv) not in want:
                    est, tail = paths.est[job.cpv], fast[job.cpv] - own(job.cpv)
                    margin = HORIZON_MARGIN if job.dependents else LEAF_MARGIN
                    cores = cores_within(est, margin * horizon - tail,
                                         min(useful_cores(est), max_cores))
                    allowed = tuple(n.node_id for n in nodes
                                    if n.node_id not in job.failed_nodes)
                    want[(cyc.id, job.cpv)] = (cores, allowed)
        entries.sort(key=lambda e: e[0])
        capacity: dict[str, Capacity] = {}
        for node_id, n in sorted(builders.items()):
            capacity[node_id] = cap = Capacity(n.cores, n.slots)
            for fence, lease in sorted(self.leases.items()):
                if lease.node_id == node_id:
                    cap.book(lease.started_at, ends[fence], lease.cores)
        mine = capacity[node.node_id]
        held = sum(c for s, e, c, _ in mine.busy if s <= ts < e)
        mine.cores = max(mine.cores, held + free)
        if mine.cores - held > free:  # what this node's own view says is not ours to use
            mine.book(ts, math.inf, mine.cores - held - free)
        cands = [Candidate(job.cpv, self._paths(cyc).est[job.cpv], *want[(cyc.id, job.cpv)],
                           release=release)
                 for _, cyc, job, release in entries]
        decision = place(cands, node.node_id, capacity, ts)
        if decision.index is None:
            return decision.reason
        _, cyc, job, _ = entries[decision.index]
        return cyc, job, decision.cores

    def _lookahead(self, cyc: Cycle, pos: int, ts: float, ending: dict[tuple[str, str], float],
                   max_cores: int, ready_best: float,
                   long_s: float) -> list[tuple[tuple[float, float, str, int], Cycle, Job, float]]:
        """Long builds, not ready yet, on a longer path than any ready job (the critical path
        runs through them): each with the time its dependencies should be built by
        (``release``), so a claim does not give their node to a less critical long build.
        None behind a running or ready package never built before: its end is a guess (the
        default estimate, often minutes short), and a node would keep its slot for a build
        that may be far from ready."""
        paths = self._paths(cyc)
        fast, own = paths.fast[max_cores], paths.own[max_cores].__getitem__
        finish: dict[str, float] = {}

        def done_by(cpv: str) -> float:  # when cpv should be built, its ancestors first
            stack = [cpv]
            while stack:
                c = stack[-1]
                if c in finish:
                    stack.pop()
                    continue
                job = cyc.jobs[c]
                if job.state in (LEASED, READY) and package_key(c) not in self.durations:
                    finish[c] = math.inf  # never built: when it ends is a guess
                elif job.state == LEASED:
                    finish[c] = ending.get((cyc.id, c), ts)
                elif job.state == READY:
                    finish[c] = ts + own(c)
                elif job.state != PLANNED:
                    finish[c] = ts
                else:
                    todo = [d for d in job.deps if d not in finish]
                    if todo:
                        stack.extend(todo)
                        continue
                    finish[c] = max(finish[d] for d in job.deps) + own(c)
                stack.pop()
            return finish[cpv]

        found = []
        looked = 0
        for cpv in paths.by_own[max_cores]:  # the longest few: those whose node matters most
            if own(cpv) < long_s or looked >= 4 * LOOKAHEAD:
                break
            job = cyc.jobs[cpv]
            if job.state != PLANNED:
                continue
            looked += 1
            release = max((done_by(d) for d in job.deps), default=ts)
            if release < math.inf and release - ts + fast[cpv] > ready_best:
                found.append((ts - release - fast[cpv], cpv, release))
        found.sort()
        return [((-1.0, key, cpv, pos), cyc, cyc.jobs[cpv], release)
                for key, cpv, release in found[:LOOKAHEAD]]

    def _learn(self, key: str, core_seconds: float) -> None:
        """Update an estimate; drop cached paths only where an unbuilt job uses it.

        A ready job's path involves only unbuilt jobs (itself and its dependents), so a change
        to the estimate of a just-built package leaves every ranking that matters unchanged.
        """
        self.durations[key] = learn(self.durations.get(key), core_seconds)
        for cid in sorted(self._crit):
            cyc = self.cycles[cid]
            if any(cyc.jobs[c].state != BUILT for c in self._crit[cid].keys.get(key, ())):
                del self._crit[cid]

    def _live_lease(self, fence: int, node_id: str, ts: float) -> Lease | None:
        """The lease ``fence`` if it is live at ``ts``, held by ``node_id`` and its job's current one."""
        lease = self.leases.get(fence)
        if lease is None or lease.node_id != node_id or not lease.live(ts):
            return None
        cyc = self.cycles.get(lease.cycle_id)
        job = cyc.jobs.get(lease.cpv) if cyc else None
        if job is None or job.lease != fence or job.state != LEASED:
            return None
        return lease

    def _op_heartbeat(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Extend a live lease; ``lost`` tells the builder to stop."""
        node_id = f.text("node_id")
        fence = f.integer("fence")
        ttl = f.number("lease_ttl_s", positive=True)
        node = self._nodes.get(node_id)
        if node is None:
            return error_result(f"heartbeat: node {node_id} is not registered", lost=True), False
        node.last_seen = ts
        lease = self._live_lease(fence, node_id, ts)
        if lease is None:
            return error_result(f"heartbeat: lease {fence} is no longer held by {node_id} "
                        "(expired or reassigned); stop building", lost=True), True
        lease.expires_at = max(lease.expires_at, ts + ttl)
        return {"ok": True, "lease": lease.to_dict()}, True

    def _op_complete(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Record a build result for a live lease; stale fences are counted, never recorded."""
        node_id = f.text("node_id")
        fence = f.integer("fence")
        cycle_id = f.text("cycle_id")
        cpv = f.text("cpv")
        success = f.flag("success")
        duration = f.number("duration_s", minimum=0.0)
        log_sha = f.text("log_sha256", default=None)
        error = f.text("error", default="", empty=True)
        # The node could not even start the build (its dependencies were not fetchable, say):
        # says nothing about the package, so the job is simply requeued.
        not_run = f.flag("not_run", default=False)
        # The node's portage tree changed while it built a pinned cycle's job: whatever came
        # out may not be the pinned tree's package. Requeued, and not the node's fault either.
        tree_changed = f.flag("tree_changed", default=False)
        if success and (not_run or tree_changed):
            raise Bad("complete: a build cannot both succeed and not count (not_run or "
                      "tree_changed)")
        raw_art = f.data.get("artifact")
        if success:
            if not isinstance(raw_art, dict):
                raise Bad("complete: field 'artifact' must be a map {sha256, size} "
                           f"when success is true (got {short(raw_art)})")
            af = Fields("complete: artifact", raw_art)
            sha, size = af.text("sha256"), af.integer("size", minimum=0)
        lease = self._live_lease(fence, node_id, ts)
        if lease is None or lease.cycle_id != cycle_id or lease.cpv != cpv:
            self._count("stale_completions")
            return error_result(f"complete: lease {fence} for {cpv} is not live (expired, superseded "
                        "or unknown); result discarded", stale=True), True
        # -- valid and live: mutate from here on
        if tree_changed:
            self._requeue(fence)
            self._count("builds_tree_changed")
            return {"ok": True, "state": READY, "requeued": True, "node_grounded": False}, True
        if not_run:
            # Not the package's fault, but maybe the node's (broken portage, full disk): it
            # counts towards the node's breaker, so a node that can never build is grounded.
            self._requeue(fence)
            self._count("builds_not_run")
            node = self._nodes[node_id]
            node.consecutive_failures += 1
            grounded = node.consecutive_failures >= self.config["breaker_threshold"]
            if grounded:
                node.grounded_until = ts + self.config["breaker_cooldown_s"]
                node.probation = False
            return {"ok": True, "state": READY, "requeued": True, "node_grounded": grounded}, True
        cyc = self.cycles[cycle_id]
        job = cyc.jobs[cpv]
        node = self._nodes[node_id]
        del self.leases[fence]
        job.lease = None
        job.attempts += 1
        job.log_sha256, job.log_node, job.duration_s = log_sha, node_id, duration
        job.cores_used = lease.cores
        self._count("completions")
        if success:
            build_id = lease.build_id
            job.artifact = Artifact(cpv=cpv, sha256=sha, size=size, build_id=build_id,
                                    slot=job.slot, subslot=job.subslot, use=list(job.use),
                                    repo=job.repo, holders=[node_id])
            self._index_artifact(job.artifact)
            job.error = ""
            cyc.set_state(job, BUILT)
            self._learn(package_key(cpv), one_core_seconds(duration, lease.cores))
            node.consecutive_failures, node.grounded_until, node.probation = 0, None, False
            # After a reopen, a job deeper down may have waited for this one too.
            waiting = cyc.closure(job.dependents, "dependents") if cyc.reopened \
                else job.dependents
            ready = [d for d in waiting if cyc.jobs[d].state == PLANNED and cyc.startable(d)]
            for d in ready:
                cyc.set_state(cyc.jobs[d], READY)
            return {"ok": True, "state": BUILT, "build_id": build_id, "now_ready": ready}, True
        self._count("failures")
        job.error = error
        if node_id not in job.failed_nodes:
            job.failed_nodes = sorted([*job.failed_nodes, node_id])
        node.consecutive_failures += 1
        grounded = node.consecutive_failures >= self.config["breaker_threshold"]
        if grounded:
            node.grounded_until = ts + self.config["breaker_cooldown_s"]
            node.probation = False
        serving = sum(1 for n in self._nodes.values() if cyc.profile in n.profiles)
        limit = max(1, min(self.config["fail_nodes"], serving))
        blocked: list[str] = []
        if len(job.failed_nodes) >= limit:
            cyc.set_state(job, FAILED)
            blocked = self._block_dependents(cyc, job)
        else:
            cyc.set_state(job, READY)
        return {"ok": True, "state": job.state, "blocked": blocked, "node_grounded": grounded,
                "grounded_until": node.grounded_until}, True

    @staticmethod
    def _block_dependents(cyc: Cycle, failed: Job) -> list[str]:
        """Mark every transitive dependent of ``failed`` blocked by it; returns them sorted.
        One already built stays built (a lost build that is built again can have some)."""
        blocked = [c for c in cyc.closure(failed.dependents, "dependents")
                   if cyc.jobs[c].state != BUILT]
        for cpv in blocked:
            job = cyc.jobs[cpv]
            if failed.cpv not in job.blocked_by:
                job.blocked_by = sorted([*job.blocked_by, failed.cpv])
            if job.state != BLOCKED:
                cyc.set_state(job, BLOCKED)
        return blocked

    def _op_artifact_stored(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """A node now holds a copy of an artifact (replication bookkeeping)."""
        node_id = f.text("node_id")
        sha = f.text("sha256")
        if node_id not in self._nodes:
            raise Bad(f"artifact_stored: node {node_id} is not registered")
        arts = self._by_sha.get(sha)
        if not arts:
            raise Bad(f"artifact_stored: no artifact has sha256 {sha}")
        updated = 0
        for art in arts:
            if node_id not in art.holders:
                art.holders = sorted([*art.holders, node_id])
                updated += 1
        self._touched.add(sha)
        return {"ok": True, "updated": updated}, updated > 0

    def _op_expire(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Requeue jobs whose lease ran out; grounded nodes whose time is up go on probation."""
        expired = [self._requeue(fence) for fence in sorted(self.leases)
                   if self.leases[fence].expires_at < ts]
        probation = []
        for node in self.nodes():
            if node.grounded_until is not None and node.grounded_until <= ts:
                node.grounded_until, node.probation = None, True
                probation.append(node.node_id)
        if expired:
            self._count("expired_leases", len(expired))
        rebuild = self._rebuild_lost(ts) if self._lost_due(ts) else []
        return ({"ok": True, "expired": expired, "count": len(expired), "probation": probation,
                 "rebuild": rebuild}, bool(expired or probation or rebuild))

    def _requeue(self, fence: int) -> list[Any]:
        """Drop lease ``fence``; its job, if the lease is still its, is ready again (one more
        attempt). Returns ``[cycle_id, cpv, node_id, fence]``."""
        lease = self.leases.pop(fence)
        cyc = self.cycles.get(lease.cycle_id)
        job = cyc.jobs.get(lease.cpv) if cyc else None
        if cyc is not None and job is not None and job.lease == fence:
            job.lease = None
            job.attempts += 1
            cyc.set_state(job, READY)
        return [lease.cycle_id, lease.cpv, lease.node_id, fence]

    def _op_reset(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Retry a profile's current cycle: requeue in-flight, clear failures, keep built."""
        profile = f.text("profile", default=None)
        if profile is not None and profile not in {c.profile for c in self.cycles.values()} \
                and not any(profile in n.profiles for n in self._nodes.values()):
            raise Bad(f"reset: unknown profile {profile}")
        counts = {"requeued": 0, "unfailed": 0, "unblocked": 0, "breakers_cleared": 0,
                  "rebuilt": 0}
        profiles = [profile] if profile is not None else sorted(
            {self.cycles[c].profile for c in self.cycle_order})
        for prof in profiles:
            cyc = self.latest_cycle(prof)
            if cyc is None or cyc.closed:
                continue
            for cpv in sorted(cyc.jobs):
                job = cyc.jobs[cpv]
                if job.state == LEASED:
                    if job.lease is not None:
                        self.leases.pop(job.lease, None)
                    job.lease = None
                    counts["requeued"] += 1
                elif job.state in (FAILED, BLOCKED):
                    counts["unfailed" if job.state == FAILED else "unblocked"] += 1
                    job.failed_nodes, job.blocked_by, job.error = [], [], ""
                else:
                    continue
                cyc.set_state(job, PLANNED)
            for cpv in cyc.cpvs_in(PLANNED):
                if cyc.startable(cpv):
                    cyc.set_state(cyc.jobs[cpv], READY)
        # jobs that were failed or blocked may need a build whose copies are all down
        counts["rebuilt"] = len(self._rebuild_lost(ts))
        for node in self.nodes():
            if profile is not None and profile not in node.profiles:
                continue
            if node.consecutive_failures or node.grounded_until is not None or node.probation:
                node.consecutive_failures, node.grounded_until, node.probation = 0, None, False
                counts["breakers_cleared"] += 1
        return {"ok": True, **counts}, any(counts.values())

    def _op_configure(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Change policy knobs; a smaller keep_releases prunes at once."""
        new = {
            "breaker_threshold": f.integer("breaker_threshold", minimum=1, default=None),
            "breaker_cooldown_s": f.number("breaker_cooldown_s", minimum=0.0, default=None),
            "fail_nodes": f.integer("fail_nodes", minimum=1, default=None),
            "keep_releases": f.integer("keep_releases", minimum=1, default=None),
            "replicas": f.integer("replicas", minimum=1, default=None),
            "max_voters": f.integer("max_voters", minimum=1, default=None),
            "voter_grace_s": f.number("voter_grace_s", minimum=0.0, default=None),
            "lost_after_s": f.number("lost_after_s", minimum=0.0, default=None),
        }
        changed = False
        for key, value in new.items():
            if value is not None and self.config[key] != value:
                self.config[key] = value
                changed = True
        pruned: list[str] = []
        if new["keep_releases"] is not None:  # takes effect now, not at the next finalize
            for profile in sorted({r.profile for r in self._releases.values()}):
                pruned += self._prune_releases(profile)
                self._prune_cycles(profile)
        return {"ok": True, "config": dict(self.config), "pruned": sorted(pruned)}, changed

    def _op_learn_history(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Estimates for packages this swarm has never built, from builds recorded elsewhere
        (a host's emerge.log, see swarmnode/portage/history.py): one-core seconds per cat/pn.

        Without them a first cycle gives every package the default estimate, so nothing
        looks critical and the toolchain and browsers start on a slot's few cores: on the
        desktop workload that schedules like the reference policy (4.4x the lower bound
        instead of 1.3x). A package the swarm has built keeps what it learned — its own
        builds on its own machines are the better evidence.
        """
        raw = f.data.get("durations")
        if not isinstance(raw, dict) or not raw:
            raise Bad("learn_history: field 'durations' must be a non-empty map of "
                      f"'category/package' to one-core seconds (got {short(raw)})")
        if len(raw) > HISTORY_LIMIT:
            raise Bad(f"learn_history: {len(raw)} packages in one command; at most "
                      f"{HISTORY_LIMIT} (send them in batches)")
        for key in sorted(raw, key=str):
            value = raw[key]
            if not isinstance(key, str) or not _PACKAGE_KEY.match(key):
                raise Bad(f"learn_history: {short(key)} is not a 'category/package'")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not 0 < value <= MAX_HISTORY_CORE_S:
                raise Bad(f"learn_history: {key}: expected one-core seconds in "
                          f"(0, {MAX_HISTORY_CORE_S:g}] (got {short(value)})")
        added = sorted(k for k in raw if k not in self.durations)
        for key in added:
            self.durations[key] = float(raw[key])
        if added:
            self._crit.clear()  # every cycle's paths may use a new estimate
            self._count("history_learned", len(added))
        return {"ok": True, "added": len(added), "known": len(raw) - len(added)}, bool(added)

    def _op_finalize(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Publish the latest cycle as a release and point production at it."""
        release_id = f.text("release_id")
        profile = f.text("profile")
        force = f.flag("force", default=False)
        if release_id in self._releases:
            raise Bad(f"finalize: release {release_id} already exists; use a new release id")
        cyc = self.latest_cycle(profile)
        if cyc is None:
            raise Bad(f"finalize: profile {profile} has no cycle to finalize")
        if cyc.closed:
            raise Bad(f"finalize: cycle {cyc.id} was already finalized as {cyc.release_id}")
        if cyc.unfinished:
            raise Bad(f"finalize: cycle {cyc.id} still has {cyc.unfinished} jobs to build")
        if (cyc.failed or cyc.blocked) and not force:
            raise Bad(f"finalize: cycle {cyc.id} has {cyc.failed} failed and {cyc.blocked} "
                       "blocked jobs; fix them (`swarmnode reset`) or finalize with force")
        packages = {cpv: art.copy() for cpv, art in cyc.reused.items()}
        for cpv in cyc.cpvs_in(BUILT):
            art = cyc.jobs[cpv].artifact
            if art is not None:
                packages[cpv] = art.copy()
        # Not overridable by force: production must never name bytes that fewer than
        # replica_target() up nodes hold (losing one machine would lose the release).
        weak = sorted(cpv for cpv, art in packages.items() if not self.durable(art))
        if weak:
            raise Bad("finalize: " + self._not_durable(weak, packages))
        rel = Release(id=release_id, profile=profile, cycle_id=cyc.id, created_ts=ts,
                      packages=packages)
        self._releases[release_id] = rel
        self.release_order.append(release_id)
        for art in packages.values():
            self._index_artifact(art)
        cyc.closed, cyc.release_id = True, release_id
        prod = self._point(profile, release_id, ts)
        pruned = self._prune_releases(profile)
        pruned_cycles = self._prune_cycles(profile)
        return {"ok": True, "release_id": release_id, "cycle_id": cyc.id,
                "packages": len(packages), "timestamp": prod.timestamp, "pruned": pruned,
                "pruned_cycles": pruned_cycles, "forced": bool(cyc.failed or cyc.blocked)}, True

    def _not_durable(self, weak: list[str], packages: dict[str, Artifact]) -> str:
        """Why finalize waits for ``weak`` packages, and what to do. Copies still being made
        arrive by themselves; bytes that only down nodes hold never do (retrying alone would
        not help), so those are named apart, with their holders."""
        def names(cpvs: list[str], holders: bool = False) -> str:
            shown = [f"{c} on {', '.join(sorted(self._holders(packages[c])))}" if holders
                     else c for c in cpvs[:5]]
            return ", ".join(shown) + (", …" if len(cpvs) > 5 else "")

        def are(cpvs: list[str]) -> str:
            return f"{_plural(len(cpvs), 'package')} {'is' if len(cpvs) == 1 else 'are'}"

        gone = [c for c in weak if not self.live_holders(packages[c])]
        short = [c for c in weak if c not in gone]
        parts = []
        if short:
            parts.append(f"{are(short)} not yet stored on "
                         f"{_plural(self.replica_target(), 'node')} ({names(short)}); "
                         "replication catches up within seconds — try again")
        if gone:
            parts.append(f"{are(gone)} stored only on nodes that are down ({names(gone, True)});"
                         " start one of those nodes again (a package this cycle built is also "
                         "built again once every node holding it has been down "
                         f"cluster.lost_after_s, {self.config['lost_after_s']:g} s)")
        return "; ".join(parts)

    def _point(self, profile: str, release_id: str, ts: float) -> Production:
        """Move production to ``release_id`` with a TIMESTAMP greater than any before it."""
        prev = self.productions.get(profile)
        stamp = max(int(ts), prev.timestamp + 1 if prev else 0)
        prod = self.productions[profile] = Production(release_id=release_id, timestamp=stamp)
        return prod

    def _op_rollback(self, f: Fields, ts: float) -> tuple[Result, bool]:
        """Point production at an older (or any named) release with a new timestamp."""
        profile = f.text("profile")
        release_id = f.text("release_id", default=None)
        prod = self.productions.get(profile)
        if release_id is None:
            if prod is None:
                raise Bad(f"rollback: profile {profile} has no production release")
            older = [r.id for r in self.releases(profile)]
            older = older[older.index(prod.release_id) + 1:]
            if not older:
                raise Bad(f"rollback: no release of {profile} older than {prod.release_id}")
            release_id = older[0]
        rel = self._releases.get(release_id)
        if rel is None:
            raise Bad(f"rollback: unknown release {release_id}")
        if rel.profile != profile:
            raise Bad(f"rollback: release {release_id} belongs to {rel.profile}, not {profile}")
        previous = prod.release_id if prod else None
        new = self._point(profile, release_id, ts)
        return {"ok": True, "release_id": release_id, "previous": previous,
                "timestamp": new.timestamp}, True

    # ------------------------------------------------------------------ pruning

    def _prune_releases(self, profile: str) -> list[str]:
        prod = self.productions.get(profile)
        mine = [r.id for r in self.releases(profile)]
        keep = set(mine[: self.config["keep_releases"]])
        if prod is not None:
            keep.add(prod.release_id)
        pruned = [r for r in mine if r not in keep]
        if pruned:
            for rid in pruned:
                del self._releases[rid]
            self.release_order = [r for r in self.release_order if r in self._releases]
            self._reindex_artifacts()
        return sorted(pruned)

    def _prune_cycles(self, profile: str) -> list[str]:
        """Keep the newest ``keep_releases`` cycles of a profile (older ones are finished)."""
        mine = self._cycles_of(profile)
        pruned = [c.id for c in mine[self.config["keep_releases"]:] if c.finished]
        if pruned:
            for cid in pruned:
                del self.cycles[cid]
                self._crit.pop(cid, None)
            self.cycle_order = [c for c in self.cycle_order if c in self.cycles]
            self._reindex_artifacts()
        return sorted(pruned)

    def _reindex_artifacts(self) -> None:
        index: dict[str, list[Artifact]] = {}
        for cid in self.cycle_order:
            cyc = self.cycles[cid]
            for cpv in sorted(cyc.reused):
                index.setdefault(cyc.reused[cpv].sha256, []).append(cyc.reused[cpv])
            for cpv in sorted(cyc.jobs):
                art = cyc.jobs[cpv].artifact
                if art is not None:
                    index.setdefault(art.sha256, []).append(art)
        for rid in self.release_order:
            rel = self._releases[rid]
            for cpv in sorted(rel.packages):
                index.setdefault(rel.packages[cpv].sha256, []).append(rel.packages[cpv])
        self._by_sha = index
        self._reindexed += 1

    def _index_artifact(self, art: Artifact) -> None:
        self._by_sha.setdefault(art.sha256, []).append(art)
        self._touched.add(art.sha256)


_HANDLERS: dict[str, Callable[[SwarmState, Fields, float], tuple[Result, bool]]] = {
    "register_node": SwarmState._op_register_node,
    "start_cycle": SwarmState._op_start_cycle,
    "claim": SwarmState._op_claim,
    "heartbeat": SwarmState._op_heartbeat,
    "complete": SwarmState._op_complete,
    "artifact_stored": SwarmState._op_artifact_stored,
    "expire": SwarmState._op_expire,
    "reset": SwarmState._op_reset,
    "configure": SwarmState._op_configure,
    "finalize": SwarmState._op_finalize,
    "rollback": SwarmState._op_rollback,
    "node_status": SwarmState._op_node_status,
    "request_sync": SwarmState._op_request_sync,
    "tree_report": SwarmState._op_tree_report,
    "barrier": SwarmState._op_barrier,
    "set_signing_key": SwarmState._op_set_signing_key,
    "admit_node": SwarmState._op_admit_node,
    "set_role": SwarmState._op_set_role,
    "learn_history": SwarmState._op_learn_history,
}
