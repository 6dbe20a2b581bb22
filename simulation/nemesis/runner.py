"""One multi-process nemesis run: real nodes in namespaces, the proxy mesh between them, a
build cycle, the fault window, healing, finalize, and the invariants over what was recorded.

Phases (each bounded; running out of time is a liveness violation, not a hang):
start (nodes serve and register) → ``fresh`` acknowledged → fault window (the cycle builds
meanwhile) → heal → converged (one leader every node follows, all caught up) → cycle finished
→ ``finalize`` acknowledged → settled (equal index and digest everywhere) → final checks.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from simulation.faultplan import KINDS, Fault, dumps, plan, to_json
from simulation.sim import invariants as inv
from simulation.sim.history import History, Violation

from .checks import OperatorAck, artifact_shas, final_violations
from .client import FinalState, Operator
from .inject import Injector
from .netns import Namespaces, SocketFactory
from .nodes import NodeProcess, Timings
from .proxy import Endpoint, Proxy
from .recorder import Recorder, Sample

T = TypeVar("T")
PROJECT = Path(__file__).resolve().parents[2]
EXAMPLE = PROJECT / "config" / "example"
PROFILES = PROJECT / "config" / "profiles"


class PhaseTimeout(Exception):
    """A bounded wait ran out (the caller turns it into a violation)."""


def profile_toml(name: str, repo: Path, distfiles: Path, portage_profile: str,
                 config_dir: Path | None = None, extra: str = "") -> str:
    """A ``[profiles.NAME]`` table, as the nodes' config wants it."""
    config_line = f'portage_config = "{config_dir}"' if config_dir is not None else ""
    return (f'\n[profiles.{name}]\nrepositories = ["{repo}"]\n'
            f'portage_profile = "{portage_profile}"\n{config_line}\n'
            f'distfiles = "{distfiles}"\n{extra}\n')


def example_profile(root: Path, name: str = "desktop") -> str:
    """The bundled example repository (copied: portage writes caches next to it)."""
    repo, distfiles = root / "example-repo", root / "example-distfiles"
    if not repo.exists():
        shutil.copytree(EXAMPLE / "repo", repo, symlinks=True)
        shutil.copytree(EXAMPLE / "distfiles", distfiles)
    return profile_toml(name, repo, distfiles, "swarm/amd64", PROFILES / name)


@dataclass(frozen=True)
class NemesisConfig:
    """One run's options. ``plan`` overrides the seeded schedule (``kinds``/``max_active``)."""

    root: Path
    profiles_toml: str
    profile: str
    seed: int = 1
    nodes: int = 3
    kinds: frozenset[str] = frozenset(KINDS)
    window_s: float = 30.0
    max_active: int = 2
    plan: tuple[Fault, ...] | None = None
    timings: Timings = Timings()
    start_s: float = 90.0      # every node serving, registered and up
    fresh_s: float = 120.0     # the cycle planned and acknowledged
    converge_s: float = 30.0   # after healing: one leader, every node caught up
    finish_s: float = 180.0    # after converging: the cycle finished and finalize accepted
    settle_s: float = 30.0     # after finalize: equal index and digest everywhere
    poll_s: float = 0.15
    secret: str = "nemesis-secret-0123456789abcdef"
    cluster: str = "nemesis"


@dataclass
class NemesisResult:
    seed: int
    ok: bool
    violations: list[Violation]
    history: History
    plan: list[Fault]
    names: list[str]
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    cycle_id: str = ""
    release_id: str = ""
    samples: int = 0
    logs: dict[str, str] = field(default_factory=dict)      # node → log tail

    def report(self, tail: int = 40) -> str:
        lines = [f"nemesis seed {self.seed}: {'ok' if self.ok else 'VIOLATED'} "
                 f"({self.samples} status samples; phases "
                 + ", ".join(f"{k} {v:.1f}s" for k, v in self.phases.items()) + ")",
                 "plan:"] + [f"  {f.describe(self.names)}" for f in self.plan]
        for v in self.violations:
            lines.append(f"VIOLATION {v.invariant} at {v.t:.2f}s: {v.message}")
        if self.violations:
            lines.append(f"history (last {tail} events):")
            lines += [f"  {line}" for line in self.history.tail(tail)]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "ok": self.ok, "phases": self.phases,
                "cycle_id": self.cycle_id, "release_id": self.release_id,
                "samples": self.samples, "plan": to_json(self.plan),
                "violations": [asdict(v) for v in self.violations]}


async def _until(check: Callable[[], Awaitable[T | None]], timeout: float,
                 interval: float = 0.3) -> T:
    """Await ``check`` until it gives something other than None; PhaseTimeout after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if loop.time() > deadline:
            raise PhaseTimeout
        await asyncio.sleep(interval)


def converged(view: dict[str, Sample | None]) -> str | None:
    """The leader, if every node answered, one of them leads, all follow it in its term and
    have applied what it had committed."""
    samples = [s for s in view.values() if s is not None]
    leaders = [s for s in samples if s.role == "leader"]
    if len(samples) != len(view) or len(leaders) != 1:
        return None
    lead = leaders[0]
    if all(s.term == lead.term and s.leader == lead.node and s.applied >= lead.commit
           for s in samples):
        return lead.node
    return None


class Run:
    """The moving parts of one run (so the phases read as a script)."""

    def __init__(self, config: NemesisConfig) -> None:
        self.config = config
        self.history = History()
        self.violations: list[Violation] = []
        self.acks: list[OperatorAck] = []
        self.namespaces = Namespaces("nem")
        self.proxy = Proxy(SocketFactory())
        self.nodes: list[NodeProcess] = []
        self.operator = Operator({}, config.secret)
        self.t0 = 0.0
        self.recorder: Recorder | None = None
        self.cycle_id = ""
        self.release_id = ""
        self.phases: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return [n.node_id for n in self.nodes]

    @property
    def rec(self) -> Recorder:
        assert self.recorder is not None
        return self.recorder

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def fail(self, invariant: str, message: str) -> None:
        self.violations.append(Violation(invariant, self.now(), message))
        self.history.record(self.now(), "checker", "violation", invariant=invariant)

    async def _phase(self, name: str, work: Awaitable[T]) -> T:
        started = self.now()
        try:
            return await work
        finally:
            self.phases[name] = round(self.now() - started, 2)

    # -- set-up ---------------------------------------------------------------------------------
    async def build(self) -> None:
        c = self.config
        c.root.mkdir(parents=True, exist_ok=True)
        for i in range(1, c.nodes + 1):
            name = f"n{i}"
            self.nodes.append(NodeProcess(name, self.namespaces.add(name), i, c.root))
        peers = [n.raft for n in self.nodes]
        for a in self.nodes:
            for b in self.nodes:
                if a is b:
                    continue
                for port in (b.api_port, b.raft_port):
                    await self.proxy.forward(a.node_id, b.node_id, Endpoint(a.netns, port),
                                             Endpoint(b.netns, port))
        for n in self.nodes:
            n.peers = peers
            n.operator_port = await self.proxy.forward("operator", n.node_id, Endpoint(None, 0),
                                                       Endpoint(n.netns, n.api_port))
            n.write_config(c.cluster, c.secret, c.profiles_toml, c.timings)
        self.operator.ports = {n.node_id: n.operator_port for n in self.nodes}
        self.recorder = Recorder(self.operator, self.names, self.history, self.t0, c.poll_s)

    async def _all_up(self) -> bool | None:
        for name in self.names:
            code, body = await self.operator.call(name, "GET", "/api/v1/nodes")
            if code != 200:
                return None
            up = {e["node_id"] for e in body["nodes"] if e.get("up")}
            if up != set(self.names):
                return None
        return True

    # -- the operator ---------------------------------------------------------------------------
    async def _fresh(self) -> str | None:
        c = self.config
        for name in self.names:
            self.rec.record("operator", "fresh", who=name, profile=c.profile)
            code, body = await self.operator.call(name, "POST", "/api/v1/cycles",
                                                  {"profile": c.profile}, timeout=c.fresh_s)
            if code == 201:
                self.acks.append(OperatorAck("fresh", name, body["cycle_id"]))
                self.rec.record("operator", "ack", op="fresh", who=name, cycle=body["cycle_id"],
                                jobs=len(body["jobs"]))
                return str(body["cycle_id"])
            self.rec.record("operator", "refused", op="fresh", who=name, status=code,
                            error=str(body)[:160])
            if code == 409:  # an earlier attempt's answer was lost: that cycle runs
                code, latest = await self.operator.call(
                    name, "GET", f"/api/v1/cycles/latest?profile={c.profile}")
                if code == 200:
                    return str(latest["id"])
        return None

    async def _cycle_finished(self) -> dict[str, Any] | None:
        for name in self.names:
            code, body = await self.operator.call(name, "GET", f"/api/v1/cycles/{self.cycle_id}")
            if code == 200:
                return body if body["finished"] else None
        return None

    async def _finalize(self, force: bool) -> str | None:
        c = self.config
        for name in self.names:
            self.rec.record("operator", "finalize", who=name, force=force)
            code, body = await self.operator.call(name, "POST", "/api/v1/finalize",
                                                  {"profile": c.profile, "force": force},
                                                  timeout=60)
            if code == 200:
                self.acks.append(OperatorAck("finalize", name, body["release_id"]))
                self.rec.record("operator", "ack", op="finalize", who=name,
                                release=body["release_id"])
                return str(body["release_id"])
            self.rec.record("operator", "refused", op="finalize", who=name, status=code,
                            error=str(body)[:160])
        return None

    async def _converged(self) -> str | None:
        return converged(await self.rec.poll_all())

    async def _settled(self) -> bool | None:
        view = await self.rec.poll_all()
        if converged(view) is None:
            return None
        points = {(s.applied, s.digest) for s in view.values() if s is not None}
        return True if len(points) == 1 else None

    # -- the run --------------------------------------------------------------------------------
    async def main(self) -> list[Fault]:
        c = self.config
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        await self.build()
        faults = list(c.plan) if c.plan is not None else plan(
            c.seed, c.nodes, c.kinds, c.window_s, c.max_active)
        for f in faults:
            self.history.record(0.0, "plan", f.kind, line=f.describe(self.names))
        for n in self.nodes:
            n.start()
        polling = asyncio.create_task(self.rec.run())
        try:
            await self._script(faults)
        finally:
            polling.cancel()
            await asyncio.gather(polling, return_exceptions=True)
        return faults

    async def _script(self, faults: list[Fault]) -> None:
        c = self.config
        try:
            await self._phase("start", _until(self._all_up, c.start_s))
        except PhaseTimeout:
            self.fail(inv.LIVENESS, f"the nodes did not all serve and register within "
                                    f"{c.start_s:.0f}s")
            return
        try:
            self.cycle_id = await self._phase("fresh", _until(self._fresh, c.fresh_s, 1.0))
        except PhaseTimeout:
            self.fail(inv.LIVENESS, f"fresh was not accepted within {c.fresh_s:.0f}s")
            return
        injector = Injector(self.proxy, self.nodes, self.rec, random.Random(f"run:{c.seed}"))
        await self._phase("faults", injector.run(faults, c.window_s))
        try:
            leader = await self._phase("converge", _until(self._converged, c.converge_s))
            self.rec.record("checker", "converged", leader=leader)
        except PhaseTimeout:
            self.fail(inv.LIVENESS, f"no single caught-up leader {c.converge_s:.0f}s after "
                                    "the faults were healed")
            return
        try:
            cycle = await self._phase("finish", _until(self._cycle_finished, c.finish_s, 1.0))
        except PhaseTimeout:
            self.fail(inv.LIVENESS, f"cycle {self.cycle_id} did not finish within "
                                    f"{c.finish_s:.0f}s after converging")
            return
        self.rec.record("operator", "finished", cycle=self.cycle_id, counts=str(cycle["counts"]))
        force = bool(cycle["counts"].get("failed") or cycle["counts"].get("blocked"))
        try:
            self.release_id = await self._phase(
                "finalize", _until(lambda: self._finalize(force), c.finish_s, 1.0))
        except PhaseTimeout:
            self.fail(inv.LIVENESS, f"finalize was not accepted within {c.finish_s:.0f}s")
            return
        try:
            await self._phase("settle", _until(self._settled, c.settle_s))
        except PhaseTimeout:
            self.fail(inv.LIVENESS, f"the replicas did not settle on one index and digest "
                                    f"within {c.settle_s:.0f}s of finalize")
        await self._phase("checks", self._final_checks())

    async def _final_checks(self) -> None:
        got = await asyncio.gather(*(self.operator.final_state(n) for n in self.names))
        states: list[FinalState] = [s for s in got if s is not None]
        for name, s in zip(self.names, got):
            if s is None:
                self.fail(inv.LIVENESS, f"{name} did not return its state")
        stores: dict[str, set[str]] = {}
        shas = artifact_shas(max(states, key=lambda s: s.applied_index)) if states else []
        for name in self.names:
            held = await asyncio.gather(*(self.operator.has_object(name, sha) for sha in shas))
            stores[name] = {sha for sha, has in zip(shas, held) if has}
        logs = {n.node_id: n.log_path.read_text(errors="replace") for n in self.nodes
                if n.log_path.exists()}
        found = final_violations(
            leaders=self.rec.leaders, replicas=self.rec.replicas, acks=self.acks, states=states,
            stores=stores, cycle_ids=[self.cycle_id], replicas_wanted=self.config.timings.replicas,
            now_ts=time.time(), logs=logs)
        for invariant, message in found:
            self.fail(invariant, message)

    async def close(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)
        await self.operator.close()
        await self.proxy.close()
        self.namespaces.close()


async def run_async(config: NemesisConfig) -> NemesisResult:
    """Run one nemesis (needs root: network namespaces) and return what it found."""
    if config.nodes < 2:
        raise ValueError("a nemesis run needs at least 2 nodes")
    r = Run(config)
    faults: list[Fault] = []
    try:
        faults = await r.main()
    finally:
        await r.close()
    return NemesisResult(config.seed, not r.violations, r.violations, r.history, faults,
                         r.names, r.phases, r.cycle_id, r.release_id,
                         r.recorder.samples if r.recorder else 0,
                         {n.node_id: n.log_tail(40) for n in r.nodes})


def run(config: NemesisConfig) -> NemesisResult:
    return asyncio.run(run_async(config))


def write_plan(faults: list[Fault], out: Path) -> Path:
    """``plan.json``: the run's faults as ``--plan-file`` (either tier) reads them back."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    path.write_text(dumps(faults) + "\n")
    return path


def write_out(result: NemesisResult, out: Path) -> None:
    """``result.json``, ``plan.json`` and the whole ``history.txt`` (node logs and data dirs
    are already there when ``out`` was the run's root)."""
    write_plan(result.plan, out)
    (out / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out / "history.txt").write_text("\n".join(e.line() for e in result.history.events) + "\n")
