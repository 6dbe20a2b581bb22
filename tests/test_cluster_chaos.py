"""Five Raft nodes build a held-out repository while nodes are killed with -9 and restarted.

Every few seconds a random node is killed (never more than two of five at once, so a quorum
of three remains), kept down a few seconds and restarted from its data dir. The cycle must
still end with every package built once, finalize must succeed, every node's binhost must
serve the same whole release, the replicas must agree on one state, and a plain portage client
must install and run what the swarm built. The chaos is seeded: the seed is printed, and
``SWARMNODE_CHAOS_SEED=<seed>`` replays the same choices (timings still vary).

The tests run in order against one cluster (the chaotic cycle is the expensive part).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import NodeProc, profile_toml, wait_for
from heldout_repo import make_repository, program_atoms, program_output
from swarmnode.portage.client import BinhostClient

pytestmark = pytest.mark.slow

PROFILE = "lab"
NODES = 5
MAX_DOWN = 2  # of 5 voters: a quorum of 3 always remains
EXTRA_PROGRAMS = 5
KILL_EVERY_S = (3.0, 5.0)  # pause between two kills
DOWN_FOR_S = (2.0, 6.0)  # how long a killed node stays down
CYCLE_DEADLINE_S = 400.0  # builds of tiny programs took 15–19 s each on a loaded 2-core machine
SETTLE_S = 90.0  # deadline for each convergence after the chaos


@dataclass
class Cluster:
    """The five nodes, the repository they build, and what the tests learn along the way."""

    nodes: list[NodeProc]
    repo: Path
    seed: int
    cycle_id: str = ""
    events: list[str] = field(default_factory=list)  # the chaos, for failure messages
    kills: int = 0
    release: dict[str, Any] = field(default_factory=dict)  # finalize's answer

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes if n.proc is not None]

    def report(self, lines: int = 30) -> str:
        """Seed, chaos events and every node's log tail: what a failure message needs."""
        tails = "\n".join(f"--- {n.node_id} ({'up' if n.proc else 'down'}) ---\n"
                          f"{n.log_tail(lines)}" for n in self.nodes)
        return (f"chaos seed {self.seed}; events: {'; '.join(self.events[-30:])}\n{tails}")


def settle(c: Cluster, cond: Callable[[], Any], what: str) -> Any:
    """wait_for with the cluster's report (taken when the wait fails) in the failure."""
    try:
        return wait_for(cond, SETTLE_S, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{c.report()}") from None


def repository_cpvs(repo: Path) -> list[str]:
    """Every package version in the repository (all of them are in the profile's world)."""
    return sorted(f"{e.parent.parent.name}/{e.stem}" for e in repo.glob("*/*/*.ebuild"))


def start_all(nodes: list[NodeProc]) -> None:
    """Start the nodes side by side (each start waits for its API)."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(NodeProc.start, nodes))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("chaos")
    repo, distfiles, _conf = make_repository(root, EXTRA_PROGRAMS)
    world = json.dumps(program_atoms(EXTRA_PROGRAMS))
    profiles = profile_toml(PROFILE, repo, None, distfiles, portage_profile="base",
                            extra=f"world = {world}")
    nodes = [NodeProc(root / "swarm", f"node{i}", profiles) for i in range(1, NODES + 1)]
    for n in nodes:
        n.peers = [m.raft for m in nodes]
    seed = int(os.environ.get("SWARMNODE_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (SWARMNODE_CHAOS_SEED={seed} replays it)")
    c = Cluster(nodes, repo, seed)
    try:
        start_all(nodes)
        yield c
    finally:
        for n in nodes:
            n.stop()


def try_get(n: NodeProc, path: str) -> Any | None:
    """GET from a node that may be down or restarting: None unless it answers 200."""
    if n.proc is None:
        return None
    try:
        status, body = n.http("GET", path)
    except OSError:  # connection refused/reset: it is being killed or started
        return None
    return json.loads(body) if status == 200 else None


def all_registered_and_up(c: Cluster) -> bool:
    """Every node's replica lists all five nodes as registered and up."""
    want = {n.node_id for n in c.nodes}
    for n in c.nodes:
        view = try_get(n, "/api/v1/nodes")
        if view is None or {e["node_id"] for e in view["nodes"] if e.get("up")} != want:
            return False
    return True


def latest_cycle(c: Cluster) -> dict[str, Any] | None:
    """The profile's latest cycle as the first live node that answers sees it."""
    for n in c.live():
        cycle = try_get(n, f"/api/v1/cycles/latest?profile={PROFILE}")
        if cycle is not None:
            return cycle
    return None


def kill_one(c: Cluster, rng: random.Random, down: dict[str, float]) -> None:
    """kill -9 a random running node and schedule its restart."""
    victim = rng.choice(c.live())
    status = try_get(victim, "/api/v1/status")
    building = [b["cpv"] for b in status["node"]["building"]] if status else "?"
    role = status["cluster"]["role"] if status else "?"
    victim.kill9()
    down[victim.node_id] = time.monotonic() + rng.uniform(*DOWN_FOR_S)
    c.kills += 1
    c.events.append(f"kill -9 {victim.node_id} ({role}, building {building})")


def restart_due(c: Cluster, down: dict[str, float], everyone: bool = False) -> None:
    by_id = {n.node_id: n for n in c.nodes}
    for node_id in sorted(down):
        if everyone or time.monotonic() >= down[node_id]:
            by_id[node_id].start()
            del down[node_id]
            c.events.append(f"restarted {node_id}")


def run_chaos_until_cycle_ends(c: Cluster, rng: random.Random) -> dict[str, Any]:
    """Kill and restart nodes at random until the cycle finishes; returns the finished cycle."""
    down: dict[str, float] = {}
    deadline = time.monotonic() + CYCLE_DEADLINE_S
    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
    try:
        while True:
            restart_due(c, down)
            cycle = latest_cycle(c)
            if cycle is not None and cycle["finished"]:
                return cycle
            if time.monotonic() > deadline:
                raise AssertionError(f"cycle {c.cycle_id} did not finish within "
                                     f"{CYCLE_DEADLINE_S}s under chaos: "
                                     f"{cycle and cycle['counts']}\n{c.report()}")
            if time.monotonic() >= next_kill and len(down) < MAX_DOWN:
                kill_one(c, rng, down)
                next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
            time.sleep(0.25)  # the chaos's pacing: the workload, not a synchronisation
    finally:
        restart_due(c, down, everyone=True)


def test_the_cycle_finishes_while_nodes_are_killed_and_restarted(cluster: Cluster) -> None:
    settle(cluster, lambda: all_registered_and_up(cluster), "all five nodes to register")
    started = cluster.nodes[0].cli_json("fresh", "--profile", PROFILE)
    cluster.cycle_id = started["cycle_id"]
    planned = sorted(j["cpv"] for j in started["jobs"])
    assert planned == repository_cpvs(cluster.repo)
    cycle = run_chaos_until_cycle_ends(cluster, random.Random(cluster.seed))
    print(f"chaos seed {cluster.seed}: {cluster.kills} kills: {'; '.join(cluster.events)}")
    assert cycle["id"] == cluster.cycle_id
    assert cluster.kills >= 2, f"too little chaos to test anything: {cluster.events}"


def test_every_job_is_built_and_finalize_succeeds(cluster: Cluster) -> None:
    settle(cluster, lambda: all_registered_and_up(cluster), "all five nodes up again")
    jobs = cluster.nodes[1].cli_json("jobs", "--profile", PROFILE)
    assert jobs["id"] == cluster.cycle_id
    states = {cpv: j["state"] for cpv, j in jobs["jobs"].items()}
    assert sorted(states) == repository_cpvs(cluster.repo)
    assert set(states.values()) == {"built"}, f"{states}\n{cluster.report()}"
    print("build attempts:", {cpv: j["attempts"] for cpv, j in sorted(jobs["jobs"].items())})

    def finalize() -> dict[str, Any] | None:
        proc = cluster.nodes[2].cli("finalize", "--profile", PROFILE, "--json")
        if proc.returncode == 0:
            result: dict[str, Any] = json.loads(proc.stdout)
            return result
        assert "not yet stored on" in proc.stderr, f"{proc.stderr}\n{cluster.report()}"
        return None  # replication is still catching up: retry

    cluster.release = settle(cluster, finalize, "finalize to be accepted")
    assert cluster.release["risk"]["safe"] and not cluster.release["publish_error"]


def packages_blocks(n: NodeProc) -> tuple[bytes, list[dict[str, str]]]:
    """The served Packages index: raw bytes, and its blocks parsed (the header first)."""
    status, body = n.http("GET", f"/binhost/{PROFILE}/Packages")
    assert status == 200, f"{n.node_id}: {body[:300]!r}"
    blocks = body.decode().strip().split("\n\n")
    return body, [dict(line.split(": ", 1) for line in b.splitlines() if ": " in line)
                  for b in blocks]


def served_release_is_whole(n: NodeProc) -> bytes:
    """Every package the index names is served with the index's size and digest, once."""
    raw, blocks = packages_blocks(n)
    gz_status, gz = n.http("GET", f"/binhost/{PROFILE}/Packages.gz")
    assert gz_status == 200 and gzip.decompress(gz) == raw, n.node_id
    cpvs = Counter(b["CPV"] for b in blocks[1:])
    assert all(k == 1 for k in cpvs.values()), f"{n.node_id}: duplicates {cpvs}"
    for entry in blocks[1:]:
        status, data = n.http("GET", f"/binhost/{PROFILE}/" + entry["PATH"])
        assert status == 200, f"{n.node_id} {entry['CPV']}: {data[:200]!r}"
        assert len(data) == int(entry["SIZE"]), f"{n.node_id} {entry['CPV']}: size"
        assert hashlib.sha1(data).hexdigest() == entry["SHA1"], f"{n.node_id} {entry['CPV']}"
    return raw


def serves_release(n: NodeProc, timestamp: int) -> bool:
    status = try_get(n, "/api/v1/status")
    serving = status["profiles"][PROFILE]["serving"] if status else None
    return serving is not None and serving["timestamp"] == timestamp


def test_every_binhost_serves_the_same_whole_release(cluster: Cluster) -> None:
    timestamp = cluster.release["timestamp"]
    indexes = {}
    for n in cluster.nodes:
        settle(cluster, lambda: serves_release(n, timestamp),
               f"{n.node_id} to serve release {cluster.release['release_id']}")
        indexes[n.node_id] = served_release_is_whole(n)
    assert len(set(indexes.values())) == 1, "the nodes serve different Packages indexes"
    _raw, blocks = packages_blocks(cluster.nodes[0])
    assert int(blocks[0]["TIMESTAMP"]) == timestamp
    assert sorted(b["CPV"] for b in blocks[1:]) == repository_cpvs(cluster.repo)


def converged(c: Cluster, seen: dict[int, set[str]]) -> bool:
    """All five replicas report the same digest at the same applied index.

    Every (index, digest) seen on the way is kept in `seen`: two replicas ever reporting
    different digests at one index is a divergence, not lag, and fails at once.
    """
    points = []
    for n in c.nodes:
        status = try_get(n, "/api/v1/status")
        if status is None:
            return False
        point = (status["state"]["applied_index"], status["state"]["digest"])
        seen.setdefault(point[0], set()).add(point[1])
        assert len(seen[point[0]]) == 1, f"replicas diverged at index {point[0]}: {seen[point[0]]}"
        points.append(point)
    return len(set(points)) == 1


def test_all_replicas_converge_to_one_state(cluster: Cluster) -> None:
    seen: dict[int, set[str]] = {}
    try:
        settle(cluster, lambda: converged(cluster, seen), "the replicas to agree on one state")
    except AssertionError as exc:
        raise AssertionError(f"(applied index → digests seen: {seen})\n{exc}") from None
    for n in cluster.nodes:
        text = n.log_path.read_text(errors="replace")
        for bad in ("unexpected error", "raft tick failed"):
            assert bad not in text, f"{n.node_id} logged {bad!r}"


def test_a_client_installs_from_one_node_and_runs_the_programs(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    n = cluster.nodes[3]
    with BinhostClient.create(tmp_path / "client", f"{n.url}/binhost/{PROFILE}",
                              n.cli("key").stdout, cluster.repo, "base") as client:
        client.install(["games-misc/tallyho", "games-misc/tally3",
                        f"games-misc/tally{EXTRA_PROGRAMS}"])
        assert client.run("tallyho").strip() == "tallyho 55"
        assert client.run("tally3").strip() == program_output(3) == "tally3 6 after tally2"
        assert client.run(f"tally{EXTRA_PROGRAMS}").strip() == program_output(EXTRA_PROGRAMS)
