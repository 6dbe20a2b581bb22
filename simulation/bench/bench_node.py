"""One benchmark node: a real Raft replica plus the daemon's decisions and a fake builder.

Why it exists: `cluster_bench` measures the swarm's consensus and scheduling timings with
real processes on loopback, without portage. Each child runs exactly what the daemon runs
around the state (`RaftLog` on uvloop, `decisions.claim_command`, `LivenessTracker` +
`maintenance_commands` on the leader, heartbeats every 2 s on 10 s leases) — only the build is
a sleep whose length the cycle carries (in each job's ``reason``, see :func:`job_spec`).

A small HTTP control channel on 127.0.0.1 lets the driver start cycles, run timed submit
loops and read ``time.time()``-stamped events ("claim of job X committed at T"); every process
runs on one machine, so stamps from different nodes are comparable.

    python -m simulation.bench.bench_node --id n1 --raft 127.0.0.1:P --peers A,B \\
        --data DIR --control-port C --secret S
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from swarmnode.consensus.raft import NoQuorum, RaftLog, RaftSettings
from swarmnode.node import decisions
from swarmnode.node.commands import command
from swarmnode.node.worker import idle

log = logging.getLogger("bench_node")

PROFILE = "bench"
DURATION_TAG = "bench-duration-s="  # a job's ``reason`` carries its simulated build time


def job_spec(cpv: str, duration_s: float, deps: list[str] | None = None) -> dict[str, Any]:
    """A ``start_cycle`` job whose fake build takes ``duration_s`` on whichever node claims it."""
    return {"cpv": cpv, "deps": list(deps or []), "reason": f"{DURATION_TAG}{duration_s:g}"}


def job_duration(job: dict[str, Any]) -> float:
    """The simulated build time :func:`job_spec` put in ``job`` (0 if it carries none)."""
    reason = str(job.get("reason") or "")
    if not reason.startswith(DURATION_TAG):
        return 0.0
    try:
        return max(0.0, float(reason[len(DURATION_TAG):]))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Options:
    """A child's command line (the daemon's timings are the defaults)."""

    node_id: str
    raft: str
    peers: tuple[str, ...]
    data_dir: Path
    control_port: int
    secret: str
    cores: int = 2
    max_jobs: int = 2
    lease_ttl_s: float = 10.0
    heartbeat_s: float = 2.0
    down_after_s: float = 3.0
    poll_s: float = 1.0
    parent_pid: int = 0  # exit when this process is gone (0: do not watch)


@dataclass
class FakeBuild:
    """A running simulated build; setting ``hurry`` finishes it at once."""

    cores: int
    hurry: asyncio.Event
    task: asyncio.Task[None]


class BenchNode:
    """The daemon's worker and maintenance loops over a real RaftLog, with a sleeping builder."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.log = RaftLog(RaftSettings(self_address=opts.raft, partners=opts.peers,
                                        data_dir=opts.data_dir, password=opts.secret))
        self.liveness = decisions.LivenessTracker(opts.down_after_s)
        self.events: list[dict[str, Any]] = []
        self.running: dict[int, FakeBuild] = {}
        self.claiming = True   # the driver pauses the worker while it measures commits itself
        self.instant = False   # builds finish at once (the driver drains a cycle with this)
        self.registered = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._leader: str | None = None
        self.log.on_tick.append(self._watch_leader)

    # -- bookkeeping -------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        """Record what happened now, with the Raft term it happened in."""
        self.events.append({"t": time.time(), "kind": kind, "node": self.opts.node_id,
                            "term": self.log.freshness()["term"], **fields})

    def _watch_leader(self) -> None:
        leader = self.log.leader_address
        if leader != self._leader:
            self._leader = leader
            self.event("leader", leader=leader, me=self.log.is_leader)

    def view(self) -> decisions.WorkerView:
        return decisions.WorkerView(node_id=self.opts.node_id, cores=self.opts.cores,
                                    max_jobs=self.opts.max_jobs,
                                    running_cores=tuple(b.cores for b in self.running.values()))

    def register_command(self) -> dict[str, Any]:
        return command("register_node", node_id=self.opts.node_id, url="", raft=self.opts.raft,
                       cores=self.opts.cores, profiles=[PROFILE], sweeper=False,
                       tree_versions={})

    async def submit_until_done(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Like the daemon's join and report loops: the same rid until a quorum answers."""
        while True:
            try:
                return await self.log.submit(cmd)
            except NoQuorum as exc:
                log.warning("%s: %s; retrying", cmd["op"], exc)

    # -- loops -------------------------------------------------------------------------------
    async def join(self) -> None:
        await self.submit_until_done(self.register_command())
        self.registered.set()
        self.event("registered")

    async def worker(self) -> None:
        """`Worker.run` without the breaker: claim while `claim_command` says so."""
        await self.registered.wait()
        while True:
            try:
                while self.claiming and (cmd := decisions.claim_command(
                        self.log.state, self.view(), self.opts.lease_ttl_s,
                        ts=time.time())) is not None:
                    result = await self.log.submit(command(cmd[0], **cmd[1]))
                    job = result.get("job") if result.get("ok") else None
                    if not job:
                        break
                    self.event("claim", cycle_id=job["cycle_id"], cpv=job["cpv"],
                               fence=result["lease"]["fence"])
                    self._start(job, result["lease"])
            except NoQuorum as exc:
                log.warning("worker: %s", exc)
            except Exception:
                log.exception("worker: claiming failed")
            await self._idle()

    async def _idle(self) -> None:
        await idle(self._slot_freed, self.log, self.opts.poll_s)  # the daemon's own wait

    def _start(self, job: dict[str, Any], lease: dict[str, Any]) -> None:
        fence = int(lease["fence"])
        hurry = asyncio.Event()
        if self.instant:
            hurry.set()
        build = FakeBuild(int(lease["cores"]), hurry,
                          asyncio.create_task(self._build(job, fence, hurry)))
        self.running[fence] = build
        build.task.add_done_callback(lambda _t: self._finished(fence))

    def _finished(self, fence: int) -> None:
        self.running.pop(fence, None)
        self._slot_freed.set()

    async def _build(self, job: dict[str, Any], fence: int, hurry: asyncio.Event) -> None:
        """Sleep for the job's duration while heartbeating, then report success."""
        started = time.monotonic()
        lost = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(fence, lost))
        waits = {asyncio.create_task(hurry.wait()), asyncio.create_task(lost.wait())}
        try:
            await asyncio.wait(waits, timeout=job_duration(job),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            beat.cancel()
            for task in waits:
                task.cancel()
        if lost.is_set():
            self.event("lost", cycle_id=job["cycle_id"], cpv=job["cpv"], fence=fence)
            return
        sha = hashlib.sha256(f"{job['cpv']}:{fence}".encode()).hexdigest()
        outcome = await self.submit_until_done(command(
            "complete", node_id=self.opts.node_id, fence=fence, cycle_id=job["cycle_id"],
            cpv=job["cpv"], success=True, duration_s=time.monotonic() - started,
            log_sha256=sha, artifact={"sha256": sha, "size": 1}, error=""))
        self.event("complete", cycle_id=job["cycle_id"], cpv=job["cpv"], fence=fence,
                   ok=bool(outcome.get("ok")))

    async def _heartbeat(self, fence: int, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.opts.heartbeat_s)
            try:
                result = await self.log.submit(command(
                    "heartbeat", node_id=self.opts.node_id, fence=fence,
                    lease_ttl_s=self.opts.lease_ttl_s), timeout=self.opts.heartbeat_s * 2)
            except NoQuorum as exc:
                log.warning("heartbeat %d: %s", fence, exc)
                continue
            if not result.get("ok") and result.get("lost"):
                lost.set()
                return

    def reachable_nodes(self) -> dict[str, bool]:
        """`Node.reachable_nodes`: registered node id → Raft-connected to this node."""
        members = self.log.members()
        return {n.node_id: (n.node_id == self.opts.node_id or members.get(n.raft, False))
                for n in self.log.state.nodes() if n.raft}

    async def maintenance(self) -> None:
        """`Node._maintenance`: on the leader, node up/down and lease expiry every 0.5 s."""
        was_leader = False
        while True:
            await asyncio.sleep(min(0.5, self.opts.lease_ttl_s / 8))
            if not self.log.is_leader:
                was_leader = False
                continue
            if not was_leader:
                self.liveness.reset()
                was_leader = True
            verdict = self.liveness.observe(self.reachable_nodes(), time.monotonic())
            try:
                for op, fields in decisions.maintenance_commands(self.log.state, time.time(),
                                                                 verdict):
                    result = await self.log.submit(command(op, **fields), timeout=5.0)
                    if result.get("went_down") or result.get("came_up"):
                        self.event("node_status", went_down=result.get("went_down", []),
                                   came_up=result.get("came_up", []))
                    for item in result.get("expired", []) + result.get("revoked", []):
                        self.event("requeued", how=op, cycle_id=item[0], cpv=item[1],
                                   holder=item[2], fence=item[3])
            except Exception as exc:
                log.info("maintenance: %s", exc)

    async def watch_parent(self) -> None:
        """Die with the driver: children must never outlive a crashed benchmark."""
        while self.opts.parent_pid:
            if os.getppid() != self.opts.parent_pid:
                os._exit(3)
            await asyncio.sleep(0.5)

    # -- what the control channel runs -------------------------------------------------------
    def status(self, with_digest: bool) -> dict[str, Any]:
        state = self.log.state
        out = {"node_id": self.opts.node_id, "pid": os.getpid(), "is_leader": self.log.is_leader,
               "leader": self.log.leader_address, "term": self.log.freshness()["term"],
               "applied": self.log.applied_index, "registered": self.registered.is_set(),
               "running": len(self.running), "events": len(self.events),
               "nodes": {n.node_id: n.up for n in state.nodes()},
               # the leader's liveness view: nodes it last saw unreachable (and since when)
               "unreachable": dict(self.liveness.since) if self.log.is_leader else {},
               "leases": [{"fence": ls.fence, "node_id": ls.node_id, "cycle_id": ls.cycle_id,
                           "cpv": ls.cpv} for ls in state.leases.values()],
               "active_cycles": [{"id": c.id, "counts": c.counts} for c in state.active_cycles()]}
        if with_digest:
            out["digest"] = state.digest()
        return out

    def set_worker(self, claiming: bool | None, instant: bool | None) -> None:
        if claiming is not None:
            self.claiming = claiming
        if instant is not None:
            self.instant = instant
        if self.instant:
            for build in self.running.values():
                build.hurry.set()
        self._slot_freed.set()

    async def timed_claims(self, n: int) -> dict[str, Any]:
        """Claim→lease commit latency: ``n`` claims, each timed, each then completed (untimed)."""
        was_leader = self.log.is_leader
        idle = decisions.WorkerView(node_id=self.opts.node_id, cores=self.opts.cores,
                                    max_jobs=self.opts.max_jobs)
        latencies: list[float] = []
        while len(latencies) < n:
            cmd = decisions.claim_command(self.log.state, idle, self.opts.lease_ttl_s)
            if cmd is None:
                break
            claim = command(cmd[0], **cmd[1])
            t0 = time.perf_counter()
            result = await self.log.submit(claim)
            elapsed_ms = (time.perf_counter() - t0) * 1000.0
            job = result.get("job")
            if not job:  # nothing leased: not a claim→lease commit
                break
            latencies.append(elapsed_ms)
            fence = int(result["lease"]["fence"])
            await self.log.submit(command(
                "complete", node_id=self.opts.node_id, fence=fence, cycle_id=job["cycle_id"],
                cpv=job["cpv"], success=True, duration_s=0.001, log_sha256=None,
                artifact={"sha256": hashlib.sha256(job["cpv"].encode()).hexdigest(), "size": 1},
                error=""))
        return {"latencies_ms": latencies, "leader_before": was_leader,
                "leader_after": self.log.is_leader}

    async def load(self, seconds: float, concurrency: int) -> dict[str, Any]:
        """``concurrency`` submitters re-registering this node back to back for ``seconds``."""
        latencies: list[float] = []
        errors = 0
        start = time.time()
        end = time.monotonic() + seconds

        async def submitter() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    await self.log.submit(self.register_command(), timeout=5.0)
                except NoQuorum:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000.0)

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        return {"count": len(latencies), "errors": errors, "start": start, "end": time.time(),
                "latencies_ms": latencies}


# -- the control channel ----------------------------------------------------------------------

_KINDS: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,),
                                        "number": (int, float), "boolean": (bool,)}


def _body_field(body: dict[str, Any], name: str, kind: str, default: Any = None) -> Any:
    """``body[name]`` if it is a ``kind`` (see _KINDS), else 400 naming the field."""
    value = body.get(name, default)
    ok = value is None or (isinstance(value, _KINDS[kind])
                           and (kind == "boolean" or not isinstance(value, bool)))
    if not ok:
        raise web.HTTPBadRequest(text=f"field '{name}' must be a {kind} (got {value!r}); "
                                      "fix the request body")
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the request body must be a JSON object, not "
                                      f"{type(body).__name__}")
    return body


def control_app(node: BenchNode) -> web.Application:
    """The driver's endpoints; each answers JSON, a NoQuorum becomes 503 with its message."""
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        return web.json_response(node.status(request.query.get("digest") == "1"))

    @routes.get("/events")
    async def events(request: web.Request) -> web.Response:
        try:
            since = max(0, int(request.query.get("since", "0")))
        except ValueError:
            raise web.HTTPBadRequest(text="'since' must be an integer event index") from None
        return web.json_response({"events": node.events[since:], "next": len(node.events)})

    @routes.post("/submit")
    async def submit(request: web.Request) -> web.Response:
        body = await _json_body(request)
        op = _body_field(body, "op", "string")
        if not op:
            raise web.HTTPBadRequest(text="field 'op' is missing; send {\"op\": ..., fields}")
        t0 = time.perf_counter()
        result = await node.log.submit(command(op, **{k: v for k, v in body.items()
                                                      if k != "op"}))
        return web.json_response({"result": result,
                                  "latency_ms": (time.perf_counter() - t0) * 1000.0})

    @routes.post("/worker")
    async def worker(request: web.Request) -> web.Response:
        body = await _json_body(request)
        node.set_worker(_body_field(body, "claiming", "boolean"),
                        _body_field(body, "instant", "boolean"))
        return web.json_response({"claiming": node.claiming, "instant": node.instant})

    @routes.post("/bench/claims")
    async def claims(request: web.Request) -> web.Response:
        n = _body_field(await _json_body(request), "n", "integer", 1)
        if n < 1:
            raise web.HTTPBadRequest(text=f"'n' must be at least 1 (got {n})")
        return web.json_response(await node.timed_claims(n))

    @routes.post("/bench/load")
    async def load(request: web.Request) -> web.Response:
        body = await _json_body(request)
        seconds = _body_field(body, "seconds", "number", 3.0)
        concurrency = _body_field(body, "concurrency", "integer", 8)
        if seconds <= 0 or concurrency < 1:
            raise web.HTTPBadRequest(text="'seconds' must be > 0 and 'concurrency' ≥ 1")
        return web.json_response(await node.load(float(seconds), concurrency))

    @web.middleware
    async def quorum_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except NoQuorum as exc:
            return web.json_response({"error": str(exc)}, status=503)

    app = web.Application(middlewares=[quorum_errors])
    app.add_routes(routes)
    return app


async def run(opts: Options) -> None:
    node = BenchNode(opts)
    node.log.start()
    runner = web.AppRunner(control_app(node), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", opts.control_port).start()
    log.info("%s: raft %s, control http://127.0.0.1:%d", opts.node_id, opts.raft,
             opts.control_port)
    await asyncio.gather(node.join(), node.worker(), node.maintenance(), node.watch_parent())


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:4321)")
    return text


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description="one benchmark swarm node (see cluster_bench)")
    p.add_argument("--id", required=True, help="node id")
    p.add_argument("--raft", required=True, type=_address, help="this node's Raft HOST:PORT")
    p.add_argument("--peers", default="", help="the other nodes' Raft addresses, comma-separated")
    p.add_argument("--data", required=True, type=Path, help="data dir (Raft journal and dump)")
    p.add_argument("--control-port", required=True, type=int, help="control HTTP port")
    p.add_argument("--secret", default="bench-secret", help="cluster secret")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--max-jobs", type=int, default=2)
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this pid is gone")
    a = p.parse_args(argv)
    peers = tuple(_address(x) for x in a.peers.split(",") if x)
    if a.cores < 1 or a.max_jobs < 1:
        p.error("--cores and --max-jobs must be at least 1")
    return Options(node_id=a.id, raft=a.raft, peers=peers, data_dir=a.data,
                   control_port=a.control_port, secret=a.secret, cores=a.cores,
                   max_jobs=a.max_jobs, parent_pid=a.parent_pid)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {opts.node_id} %(levelname)s %(name)s: %(message)s")
    uvloop.run(run(opts))


if __name__ == "__main__":
    main()
