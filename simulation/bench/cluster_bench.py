"""Raft/swarm benchmarks with real processes on loopback: commit latency, throughput, failover
and dead-worker requeue, written to ``DIR/result.json`` (see README.md for what each means).

    python -m simulation.bench.cluster_bench --nodes 3,5 --out DIR [--quick]

Each cluster size gets a fresh cluster of ``bench_node`` children (own process groups, killed
with ``kill -9`` for the failure measurements and always at exit). The driver only talks to
them over their control channels; durations of failures are differences of ``time.time()``
stamps the survivors record when they observe the event (one machine: one clock).
These are benchmarks: the targets are reported pass/fail, never asserted.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from simulation.bench.bench_node import job_spec
from simulation.ports import free_port

PROJECT = Path(__file__).resolve().parents[2]
TARGETS = {"failover_p99_s": 2.0, "requeue_p99_s": 10.0, "commit_p50_ms": 5.0}
T = TypeVar("T")


class BenchError(Exception):
    """The benchmark could not go on (a child died, a condition never came); one line."""


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to take (``--quick`` shrinks everything)."""

    commit_samples: int = 500      # timed claims per role (leader, follower)
    load_rounds: int = 3
    load_seconds: float = 3.0
    concurrency: int = 32          # submitters in flight across the cluster
    failover_rounds: int = 20
    requeue_rounds: int = 12
    short_job_s: float = 0.3       # builds running while the leader is killed
    failover_jobs: int = 300       # jobs per failover round's cycle
    cores: int = 2                 # per node; every fake job takes one core
    max_jobs: int = 2


QUICK = Plan(commit_samples=40, load_rounds=1, load_seconds=1.5, failover_rounds=2,
             requeue_rounds=1, failover_jobs=150)


# -- statistics -------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, no interpolation."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50),
            "p99": percentile(values, 99), "max": max(values),
            "mean": sum(values) / len(values)}


def figure(samples: list[float], **extra: Any) -> dict[str, Any]:
    return {"samples": samples, "summary": summarize(samples), **extra}


# -- the children -----------------------------------------------------------------------------

_LIVE: dict[int, subprocess.Popen[bytes]] = {}  # pid → child, for the exit-time sweep


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (it is its group's leader) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    _LIVE.pop(proc.pid, None)


@atexit.register
def _kill_all() -> None:
    for proc in list(_LIVE.values()):
        _kill_group(proc)


def wait_for(cond: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy; BenchError naming ``what`` after
    ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Child:
    """One bench_node: fixed ports and data dir, so a restarted child rejoins as itself."""

    node_id: str
    data_dir: Path
    log_path: Path
    raft_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    cursor: int = 0  # events already read

    @property
    def raft(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """N bench_node children and the calls the measurements make on them."""

    def __init__(self, root: Path, size: int, plan: Plan) -> None:
        self.root, self.plan = root, plan
        self.children = [Child(f"n{i + 1}", root / f"n{i + 1}", root / f"n{i + 1}.log")
                         for i in range(size)]
        self._cycles = 0

    def __enter__(self) -> Cluster:
        for child in self.children:
            self.launch(child)
        for child in self.children:  # registering needs a quorum: launch them all first
            self.wait_registered(child)
        self.wait_stable()
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            if child.proc is not None:
                _kill_group(child.proc)

    # -- processes ---------------------------------------------------------------------------
    def start(self, child: Child) -> None:
        """(Re)start one child and wait until it has registered through the cluster."""
        self.launch(child)
        self.wait_registered(child)

    def launch(self, child: Child) -> None:
        peers = ",".join(c.raft for c in self.children if c is not child)
        argv = [sys.executable, "-m", "simulation.bench.bench_node", "--id", child.node_id,
                "--raft", child.raft, "--peers", peers, "--data", str(child.data_dir),
                "--control-port", str(child.control_port), "--cores", str(self.plan.cores),
                "--max-jobs", str(self.plan.max_jobs), "--parent-pid", str(os.getpid())]
        env = {**os.environ, "PYTHONPATH": str(PROJECT)}
        with open(child.log_path, "ab") as out:
            child.proc = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE[child.proc.pid] = child.proc
        child.cursor = 0

    def wait_registered(self, child: Child) -> None:
        def answering() -> bool:
            if not child.alive:
                tail = child.log_path.read_text(errors="replace").splitlines()[-15:]
                raise BenchError(f"{child.node_id} exited during start-up; see {child.log_path}"
                                 + "".join(f"\n  | {line}" for line in tail))
            try:
                return bool(self.status(child)["registered"])
            except (OSError, BenchError):
                return False

        wait_for(answering, 30, f"{child.node_id} to register")

    def kill(self, child: Child) -> float:
        """``kill -9`` the child's process group; returns the wall-clock time of the kill."""
        assert child.proc is not None
        t_kill = time.time()
        _kill_group(child.proc)
        return t_kill

    def live(self) -> list[Child]:
        return [c for c in self.children if c.alive]

    # -- control channel ---------------------------------------------------------------------
    def call(self, child: Child, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 10.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{child.control_port}{path}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise BenchError(f"{child.node_id} {method} {path}: HTTP {exc.code}: "
                             f"{exc.read().decode(errors='replace')[:300]}") from None

    def status(self, child: Child, digest: bool = False) -> dict[str, Any]:
        return dict(self.call(child, "GET", "/status?digest=1" if digest else "/status"))

    def new_events(self, child: Child) -> list[dict[str, Any]]:
        """Events the child recorded since the last call (none if it is dead)."""
        if not child.alive:
            return []
        out = self.call(child, "GET", f"/events?since={child.cursor}")
        child.cursor = int(out["next"])
        return list(out["events"])

    def skip_events(self) -> None:
        for child in self.live():
            self.new_events(child)

    def leader(self) -> Child:
        """The child every live child names as leader (waits until they agree)."""
        def agreed() -> Child | None:
            try:
                seen = {self.status(c)["leader"] for c in self.live()}
            except OSError:
                return None
            if len(seen) != 1:
                return None
            address = seen.pop()
            return next((c for c in self.live() if c.raft == address), None)

        return wait_for(agreed, 30, "the live nodes to agree on a leader")

    def wait_stable(self) -> Child:
        """Every child alive, registered, agreeing on a leader that sees them all up — in its
        state and in its liveness tracker (else a node killed right after it rejoined would
        count as down since its previous death, and be marked down at once)."""
        if len(self.live()) != len(self.children):
            raise BenchError("a node is not running; see the logs in " + str(self.root))
        leader = self.leader()

        def all_up() -> bool:
            st = self.status(leader)
            return not st["unreachable"] and all(st["nodes"].get(c.node_id)
                                                 for c in self.children)

        wait_for(all_up, 30, "the leader to see every node up and reachable")
        return leader

    def set_workers(self, claiming: bool | None = None, instant: bool | None = None) -> None:
        body = {k: v for k, v in (("claiming", claiming), ("instant", instant)) if v is not None}
        for child in self.live():
            self.call(child, "POST", "/worker", body)

    def submit(self, op: str, **fields: Any) -> dict[str, Any]:
        out = self.call(self.leader(), "POST", "/submit", {"op": op, **fields}, timeout=20)
        result = dict(out["result"])
        if not result.get("ok"):
            raise BenchError(f"{op} was refused: {result.get('error')}")
        return result

    def start_cycle(self, prefix: str, count: int, duration_s: float) -> str:
        """A cycle of ``count`` independent jobs of ``duration_s`` each; returns its id.

        Package names repeat across cycles but not within one, so the learned estimates stay
        few and one job's completion never invalidates another's ranking.
        """
        self._cycles += 1
        cycle_id = f"{prefix}-{self._cycles}"
        jobs = [job_spec(f"bench/p{i:04d}-1", duration_s) for i in range(count)]
        self.submit("start_cycle", cycle_id=cycle_id, profile="bench", tree_version="",
                    targets=[], jobs=jobs, reused=[])
        return cycle_id

    def active_cycles(self) -> list[dict[str, Any]]:
        return list(self.status(self.leader())["active_cycles"])

    def drain(self, claiming: bool) -> None:
        """Finish every active cycle at once (instant builds), then set the worker mode."""
        if self.active_cycles():
            self.set_workers(claiming=True, instant=True)
            wait_for(lambda: not self.active_cycles(), 60, "the active cycle to drain",
                     interval=0.1)
        self.set_workers(claiming=claiming, instant=False)

    def replicas_agree(self) -> bool:
        """Once idle, do all replicas reach the same state digest?"""
        self.drain(claiming=False)

        def same() -> bool:
            return len({self.status(c, digest=True)["digest"] for c in self.live()}) == 1

        try:
            return bool(wait_for(same, 15, "the replicas' digests to agree", interval=0.2))
        except BenchError:
            return False


# -- the measurements -------------------------------------------------------------------------

def measure_commit(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    """Claim→lease commit latency on the leader and on a follower (workers paused)."""
    cluster.drain(claiming=False)
    out: dict[str, Any] = {}
    for role in ("leader", "follower"):
        samples: list[float] = []
        batches = 0
        while len(samples) < plan.commit_samples:
            batches += 1
            if batches > 4 * math.ceil(plan.commit_samples / 100) + 4:
                raise BenchError(f"commit latency ({role}): leadership kept changing")
            leader = cluster.leader()
            target = leader if role == "leader" else next(
                c for c in cluster.live() if c is not leader)
            n = min(100, plan.commit_samples - len(samples))
            cluster.start_cycle(f"commit-{role}", n, 0.0)
            got = cluster.call(target, "POST", "/bench/claims", {"n": n}, timeout=120)
            if got["leader_before"] == got["leader_after"] == (role == "leader"):
                samples.extend(got["latencies_ms"])
            cluster.drain(claiming=False)  # a batch cut short leaves jobs behind
        out[role] = figure(samples)
    cluster.set_workers(claiming=True)
    return out


def measure_load(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    """Committed commands/s with ``concurrency`` submitters spread over every node."""
    cluster.drain(claiming=False)
    rates: list[float] = []
    latencies: list[float] = []
    errors = 0
    live = cluster.live()
    shares = [plan.concurrency // len(live) + (i < plan.concurrency % len(live))
              for i in range(len(live))]
    for _ in range(plan.load_rounds):
        with ThreadPoolExecutor(len(live)) as pool:
            runs = list(pool.map(
                lambda cs: cluster.call(cs[0], "POST", "/bench/load",
                                        {"seconds": plan.load_seconds, "concurrency": cs[1]},
                                        timeout=plan.load_seconds + 30),
                [(c, s) for c, s in zip(live, shares) if s > 0]))
        window = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        rates.append(sum(r["count"] for r in runs) / window)
        latencies.extend(x for r in runs for x in r["latencies_ms"])
        errors += sum(r["errors"] for r in runs)
    cluster.set_workers(claiming=True)
    return figure(rates, concurrency=plan.concurrency, seconds=plan.load_seconds,
                  errors=errors, latency_ms=summarize(latencies))


def _first(events: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> float | None:
    stamps = [e["t"] for e in events if pred(e)]
    return min(stamps) if stamps else None


def _collect_until(cluster: Cluster, nodes: list[Child], done: Callable[[list[dict[str, Any]]],
                   bool], timeout: float) -> tuple[list[dict[str, Any]], bool]:
    """Read ``nodes``' events until ``done(all so far)``; (events, whether done in time)."""
    events: list[dict[str, Any]] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for child in nodes:
            events.extend(cluster.new_events(child))
        if done(events):
            return events, True
        time.sleep(0.05)
    return events, False


def measure_failover(cluster: Cluster, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """kill -9 the leader mid-cycle → first claim a survivor commits under a newer term."""
    samples: list[float] = []
    elections: list[float] = []
    timeouts = 0
    for rnd in range(plan.failover_rounds):
        cluster.drain(claiming=True)
        cycle_id = cluster.start_cycle("failover", plan.failover_jobs, plan.short_job_s)
        claimed: set[str] = set()

        def all_claiming() -> bool:  # steady state: every node is building
            for child in cluster.live():
                claimed.update(child.node_id for e in cluster.new_events(child)
                               if e["kind"] == "claim" and e["cycle_id"] == cycle_id)
            return len(claimed) == len(cluster.children)

        wait_for(all_claiming, 30, "every node to claim from the failover cycle")
        old = cluster.leader()
        term = cluster.status(old)["term"]
        cluster.skip_events()
        t_kill = cluster.kill(old)
        survivors = cluster.live()

        def claim_after(e: dict[str, Any]) -> bool:
            return e["kind"] == "claim" and e["t"] > t_kill and e["term"] > term

        events, ok = _collect_until(
            cluster, survivors, lambda evs: any(claim_after(e) for e in evs), 30)
        first = _first(events, claim_after)
        elected = _first(events, lambda e: e["kind"] == "leader" and e["t"] > t_kill
                         and e["leader"] not in (None, old.raft))
        if ok and first is not None:
            samples.append(first - t_kill)
            log(f"  failover round {rnd + 1}: next claim after {first - t_kill:.3f}s")
        else:
            timeouts += 1
            log(f"  failover round {rnd + 1}: no claim within 30s")
        if elected is not None:
            elections.append(elected - t_kill)
        cluster.start(old)
        cluster.wait_stable()
    return figure(samples, election_s=summarize(elections), election_samples=elections,
                  timeouts=timeouts)


def measure_requeue(cluster: Cluster, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """kill -9 a follower holding leases → each of its jobs leased again to another node."""
    samples: list[float] = []
    detections: list[float] = []
    timeouts = 0
    size = len(cluster.children)
    for rnd in range(plan.requeue_rounds):
        cluster.drain(claiming=True)
        # One node's worth of slots stays free, so a requeued job never waits for a slot.
        jobs = (size - 1) * plan.max_jobs
        cycle_id = cluster.start_cycle("requeue", jobs, 3600.0)

        def all_leased() -> dict[str, Any] | None:
            st = cluster.status(cluster.leader())
            mine = [ls for ls in st["leases"] if ls["cycle_id"] == cycle_id]
            return st if len(mine) == jobs else None

        st = wait_for(all_leased, 30, "every job of the requeue cycle to be leased")
        leader = cluster.leader()
        holders = [c for c in cluster.live() if c is not leader
                   and any(ls["node_id"] == c.node_id for ls in st["leases"])]
        victim = holders[rnd % len(holders)]
        lost = {ls["cpv"] for ls in st["leases"]
                if ls["node_id"] == victim.node_id and ls["cycle_id"] == cycle_id}
        cluster.skip_events()
        t_kill = cluster.kill(victim)

        def releases(e: dict[str, Any]) -> bool:
            return (e["kind"] == "claim" and e["cycle_id"] == cycle_id and e["cpv"] in lost
                    and e["t"] > t_kill)

        events, ok = _collect_until(
            cluster, cluster.live(),
            lambda evs: {e["cpv"] for e in evs if releases(e)} >= lost, 60)
        for cpv in sorted(lost):
            t = _first(events, lambda e: releases(e) and e["cpv"] == cpv)
            if t is not None:
                samples.append(t - t_kill)
        timeouts += 0 if ok else 1
        down = _first(events, lambda e: e["kind"] == "node_status"
                      and victim.node_id in e["went_down"])
        if down is not None:
            detections.append(down - t_kill)
        log(f"  requeue round {rnd + 1}: {len(lost)} job(s) of {victim.node_id} leased again "
            f"after {', '.join(f'{s:.2f}s' for s in samples[-len(lost):]) if ok else 'TIMEOUT'}")
        cluster.start(victim)
        cluster.wait_stable()
    cluster.drain(claiming=True)
    return figure(samples, detection_s=summarize(detections), detection_samples=detections,
                  timeouts=timeouts)


# -- the run ----------------------------------------------------------------------------------

def bench_size(root: Path, size: int, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement on one fresh cluster of ``size`` nodes."""
    work = root / f"cluster-{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()

    def phase(name: str) -> None:
        log(f"{size} nodes: {name} (t+{time.monotonic() - started:.0f}s)")

    with Cluster(work, size, plan) as cluster:
        phase("commit latency")
        commit = measure_commit(cluster, plan)
        phase("sustained commands/s")
        load = measure_load(cluster, plan)
        phase("failover")
        failover = measure_failover(cluster, plan, log)
        phase("dead-worker requeue")
        requeue = measure_requeue(cluster, plan, log)
        phase("replica digests")
        agree = cluster.replicas_agree()
    for child in cluster.children:
        shutil.rmtree(child.data_dir, ignore_errors=True)  # keep the logs, drop the journals
    return {"commit": commit, "load": load, "failover": failover, "requeue": requeue,
            "replicas_agree": agree, "log_problems": log_problems(cluster.children)}


def log_problems(children: list[Child]) -> dict[str, Any]:
    """CRITICAL/ERROR lines and tracebacks in the children's logs (pysyncobj reports trouble
    there, e.g. truncating already-applied entries): counted, with the first few kept."""
    found = [line for c in children if c.log_path.exists()
             for line in c.log_path.read_text(errors="replace").splitlines()
             if " CRITICAL " in line or " ERROR " in line or line.startswith("Traceback")]
    return {"count": len(found), "first": found[:5]}


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target against every cluster size: (figure, value, target, pass)."""
    out = []
    for size, by_role in result["commit_latency_ms"].items():
        for role in ("leader", "follower"):
            value = by_role[role]["summary"].get("p50")
            out.append(("commit p50 ms (" + role + ")", size, value, TARGETS["commit_p50_ms"]))
    for size, fig in result["failover_s"].items():
        value = fig["summary"].get("p99") if not fig["timeouts"] else None
        out.append(("failover p99 s", size, value, TARGETS["failover_p99_s"]))
    for size, fig in result["requeue_s"].items():
        value = fig["summary"].get("p99") if not fig["timeouts"] else None
        out.append(("requeue p99 s", size, value, TARGETS["requeue_p99_s"]))
    return [{"figure": name, "nodes": int(size), "value": value, "target": target,
             "pass": value is not None and value < target}
            for name, size, value, target in out]


def table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("figure", "nodes", "n", "p50", "p99", "max")]
    for size, by_role in result["commit_latency_ms"].items():
        for role in ("leader", "follower"):
            rows.append(_row(f"commit latency ms ({role})", size, by_role[role]["summary"]))
    for size, fig in result["commands_per_s"].items():
        rows.append(_row(f"commands/s ({fig['concurrency']} in flight)", size, fig["summary"]))
        rows.append(_row("  latency under load ms", size, fig["latency_ms"]))
    for size, fig in result["failover_s"].items():
        rows.append(_row("failover s (kill leader → claim)", size, fig["summary"]))
        rows.append(_row("  of which election s", size, fig["election_s"]))
    for size, fig in result["requeue_s"].items():
        rows.append(_row("requeue s (kill worker → re-lease)", size, fig["summary"]))
        rows.append(_row("  of which marked down s", size, fig["detection_s"]))
    lines = ["  ".join(f"{c:<36}" if i == 0 else f"{c:>9}" for i, c in enumerate(r))
             for r in rows]
    lines.append("")
    for c in result["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
        lines.append(f"{c['figure']:<26} {c['nodes']} nodes: {value:>8} < {c['target']:g}  "
                     f"{'PASS' if c['pass'] else 'FAIL'}")
    lines.append(f"meets targets: {'yes' if result['meets_targets'] else 'NO'}")
    for size, problems in result["log_problems"].items():
        agree = "agree" if result["replicas_agree"][size] else "DIFFER"
        lines.append(f"{size} nodes: replica digests {agree}; {problems['count']} CRITICAL/ERROR "
                     "log lines" + (f" (first: {problems['first'][0][:120]})"
                                    if problems["first"] else ""))
    return "\n".join(lines)


def _row(name: str, size: str, s: dict[str, float]) -> tuple[str, ...]:
    def num(key: str) -> str:
        return f"{s[key]:.3f}" if key in s else "-"

    return (name, size, str(s.get("n", 0)), num("p50"), num("p99"), num("max"))


def run(sizes: list[int], out: Path, plan: Plan, quick: bool) -> dict[str, Any]:
    def log(line: str) -> None:
        print(line, flush=True)

    per_size = {str(n): bench_size(out, n, plan, log) for n in sizes}
    result: dict[str, Any] = {
        "meta": {"nodes": sizes, "quick": quick, "plan": asdict(plan),
                 "finished": time.time(), "cpu_count": os.cpu_count(),
                 "python": platform.python_version(), "platform": platform.platform()},
        "commit_latency_ms": {k: v["commit"] for k, v in per_size.items()},
        "commands_per_s": {k: v["load"] for k, v in per_size.items()},
        "failover_s": {k: v["failover"] for k, v in per_size.items()},
        "requeue_s": {k: v["requeue"] for k, v in per_size.items()},
        "replicas_agree": {k: v["replicas_agree"] for k, v in per_size.items()},
        "log_problems": {k: v["log_problems"] for k, v in per_size.items()},
        "targets": dict(TARGETS),
    }
    result["checks"] = checks(result)
    result["meets_targets"] = all(c["pass"] for c in result["checks"])
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nodes {text!r}: give cluster sizes like 3,5") \
            from None
    if not sizes or any(n < 3 for n in sizes):
        raise argparse.ArgumentTypeError(f"--nodes {text!r}: every size must be at least 3 "
                                         "(a failover needs a surviving majority)")
    return sizes


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(text)


def _stop_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clusters' cleanup


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Raft/swarm benchmarks on loopback (see README.md)")
    p.add_argument("--nodes", type=_sizes, default=[3, 5], help="cluster sizes, e.g. 3,5")
    p.add_argument("--out", type=Path, required=True, help="directory for result.json and logs")
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    p.add_argument("--commit-samples", type=_positive, help="timed claims per role")
    p.add_argument("--failover-rounds", type=_positive)
    p.add_argument("--requeue-rounds", type=_positive)
    p.add_argument("--concurrency", type=_positive, help="submitters in flight (default 32)")
    a = p.parse_args(argv)
    if a.out.exists() and not a.out.is_dir():
        p.error(f"--out {a.out} is a file; give a directory (it is created if missing)")
    plan = QUICK if a.quick else Plan()
    overrides = {k: v for k, v in (("commit_samples", a.commit_samples),
                                   ("failover_rounds", a.failover_rounds),
                                   ("requeue_rounds", a.requeue_rounds),
                                   ("concurrency", a.concurrency)) if v is not None}
    plan = replace(plan, **overrides)
    a.out.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    try:
        result = run(a.nodes, a.out.resolve(), plan, a.quick)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(result))
    print(f"\nwrote {a.out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
