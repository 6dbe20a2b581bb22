"""Three real nodes on loopback forming one Raft group: build, lose a worker, lose the leader,
restart from disk, finalize anywhere, and every binhost serves the same release.

The tests run in order against one cluster (real builds are the expensive part).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import os
from pathlib import Path
from typing import Any

import pytest

from harness import PROFILES, NodeProc, copy_example, profile_toml, run_cluster, wait_for
from test_node_e2e import packages_index, served_release_is_whole

pytestmark = pytest.mark.slow

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster")
    repo, distfiles = copy_example(root)
    profiles = (profile_toml("desktop", repo, PROFILES / "desktop", distfiles)
                + profile_toml("server", repo, PROFILES / "server", distfiles))
    yield from run_cluster(root, profiles)


def live(nodes: list[NodeProc]) -> list[NodeProc]:
    return [n for n in nodes if n.proc is not None]


def leader(nodes: list[NodeProc]) -> NodeProc | None:
    for n in live(nodes):
        if n.get("/api/v1/status")["cluster"]["is_leader"]:
            return n
    return None


LAST_VIEW: dict[str, Any] = {}


def converged(nodes: list[NodeProc]) -> bool:
    """Every live node applied the same index and holds the same state digest."""
    views = {n.node_id: n.get("/api/v1/status")["state"] for n in live(nodes)}
    LAST_VIEW.clear()
    LAST_VIEW.update({k: (v["applied_index"], v["digest"][:12]) for k, v in views.items()})
    return len(set(LAST_VIEW.values())) == 1


def state_differences(nodes: list[NodeProc]) -> str:
    """Which parts of the replicated state differ between live nodes (for a failure message);
    each node's state is saved next to its data dir for a post-mortem."""
    import msgpack

    states = {}
    for n in live(nodes):
        status, body = n.http("GET", "/api/v1/state", secret=SECRET)
        if status == 200:
            (n.root / f"{n.node_id}.state.msgpack").write_bytes(body)
            states[n.node_id] = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if len(states) < 2:
        return "states unavailable"
    first, *rest = sorted(states)
    out = []
    for other in rest:
        a, b = states[first], states[other]
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        out.append(f"{first} vs {other}: {keys}")
    return "; ".join(out)


def wait_converged(nodes: list[NodeProc], what: str) -> None:
    try:
        wait_for(lambda: converged(nodes), 60, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last view {LAST_VIEW}; differing: "
                             f"{state_differences(nodes)}") from None


def cycle(n: NodeProc, profile: str) -> dict[str, Any]:
    return n.get(f"/api/v1/cycles/latest?profile={profile}")


def test_three_nodes_form_one_cluster(cluster: list[NodeProc]) -> None:
    wait_for(lambda: leader(cluster), 30, "a leader")
    for n in cluster:  # every node knows every node, and the same leader
        view = wait_for(lambda n=n: (v := n.get("/api/v1/nodes")) and
                        sum(1 for x in v["nodes"] if x.get("node_id") and x["up"]) == 3 and v,
                        30, f"{n.node_id} to see 3 registered nodes")
        assert view["leader"] == leader(cluster).node_id  # type: ignore[union-attr]
        assert {x["role"] for x in view["nodes"]} == {"leader", "voter"}
    wait_converged(cluster, "replicas to converge")


def test_every_replica_hands_out_the_same_state(cluster: list[NodeProc]) -> None:
    """GET /api/v1/state (cluster secret): the replica's state as bytes an outside checker
    loads with SwarmState.from_bytes — equal on every node at the same applied index."""
    from swarmnode.state import SwarmState

    wait_converged(cluster, "replicas to converge")
    blobs = set()
    for n in cluster:
        status, body = n.http("GET", "/api/v1/state", secret=SECRET)
        assert status == 200
        blobs.add(body)
        assert SwarmState.from_bytes(body).digest() == n.get("/api/v1/status")["state"]["digest"]
    assert len(blobs) == 1


def test_a_follower_refuses_a_wrong_or_missing_secret(cluster: list[NodeProc]) -> None:
    lead = leader(cluster)
    follower = next(n for n in cluster if n is not lead)
    before = follower.get("/api/v1/status")["state"]["digest"]
    body = json.dumps({"profile": "desktop"}).encode()
    for secret in (None, "wrong-secret-0123456789"):
        status, reply = follower.http("POST", "/api/v1/cycles", body, secret=secret)
        assert status == 401, reply
        assert b"cluster secret" in reply
    status, _ = follower.http("GET", "/api/v1/objects/" + "0" * 64)  # peer traffic too
    assert status == 401
    status, _ = follower.http("GET", "/api/v1/state")  # the whole state: peers only
    assert status == 401
    assert follower.get("/api/v1/status")["state"]["digest"] == before


def test_a_process_without_the_secret_cannot_join(cluster: list[NodeProc], tmp_path: Path) -> None:
    """A Raft peer with the wrong password never learns the log, never gets a vote counted,
    and the cluster's membership and state do not change."""
    from harness import free_port
    from swarmnode.consensus.raft import RaftLog, RaftSettings

    digest = {n.node_id: n.get("/api/v1/status")["state"]["digest"] for n in cluster}
    intruder_addr = f"127.0.0.1:{free_port()}"

    async def intrude() -> tuple[int, str | None]:
        log = RaftLog(RaftSettings(intruder_addr, tuple(n.raft for n in cluster), tmp_path / "x",
                                   password="test\0not-the-secret-at-all"))
        log.start()
        try:
            await asyncio.sleep(5)  # the attack runs for a while (not synchronisation)
            return log.applied_index, log.leader_address
        finally:
            log.close()

    applied, seen_leader = asyncio.run(intrude())
    assert applied <= 1 and seen_leader is None
    for n in cluster:
        view = n.get("/api/v1/nodes")
        assert intruder_addr not in {x["raft"] for x in view["nodes"]}
        assert n.get("/api/v1/status")["state"]["digest"] == digest[n.node_id]


def test_cluster_builds_while_a_worker_is_killed_mid_build(cluster: list[NodeProc]) -> None:
    lead = leader(cluster)
    assert lead is not None
    entry = next(n for n in cluster if n is not lead)  # the CLI talks to a follower
    started = entry.cli_json("fresh", "--profile", "desktop")
    assert started["jobs"]

    def victim_build() -> tuple[NodeProc, str] | None:
        jobs = cycle(entry, "desktop")["jobs"]
        for cpv, job in jobs.items():
            if job["state"] == "leased" and job["node"] not in (lead.node_id, entry.node_id):
                return next(n for n in cluster if n.node_id == job["node"]), cpv
        return None

    victim, cpv = wait_for(victim_build, 300, "a build on the third node")
    victim.kill9()
    # The leader notices the dead node (Raft connection gone) and requeues its job; another
    # node builds it. Deadline: lease TTL (6 s) plus slack for a loaded CI machine.
    def requeued() -> bool:
        job = cycle(entry, "desktop")["jobs"][cpv]
        return job["state"] == "ready" or (job["state"] in ("leased", "built")
                                           and job["node"] != victim.node_id)

    wait_for(requeued, 30, f"{cpv} to be requeued")
    done = wait_for(lambda: (c := cycle(entry, "desktop"))["finished"] and c, 900,
                    "the cycle to finish with a node down")
    assert done["counts"]["built"] >= 12 and not done["counts"]["failed"], done["counts"]

    victim.start()  # rejoins from its data dir and catches up
    wait_converged(cluster, "the restarted node to catch up")
    wait_for(lambda: all(x["up"] for x in victim.get("/api/v1/nodes")["nodes"]
                         if x.get("node_id")), 30, "the leader to mark the node up again")


def test_finalize_on_any_node_publishes_the_same_release_everywhere(
        cluster: list[NodeProc]) -> None:
    wait_for(lambda: not cluster[2].get("/api/v1/status")["summary"]["under_replicated"], 60,
             "every artifact to be stored on 2 nodes")
    result = cluster[2].cli("finalize", "--profile", "desktop")
    assert result.returncode == 0, result.stdout + result.stderr
    release = cluster[2].cli_json("releases", "--profile", "desktop")["production"]

    def serving() -> bool:
        return all((n.get("/api/v1/status")["profiles"]["desktop"]["serving"] or {})
                   .get("release_id") == release for n in cluster)

    wait_for(serving, 120, "every node to serve the new release")
    indexes = [packages_index(n) for n in cluster]
    for index in indexes[1:]:
        assert index == indexes[0]
    for n in cluster:
        served_release_is_whole(n)


def test_any_node_shows_the_log_of_a_build_done_elsewhere(cluster: list[NodeProc]) -> None:
    jobs = cycle(cluster[0], "desktop")["jobs"]
    cpv, job = next((c, j) for c, j in sorted(jobs.items()) if j["log_node"] != "n1")
    shown = cluster[0].cli("logs", "--profile", "desktop", cpv)  # n1 fetches it from its builder
    assert shown.returncode == 0, shown.stderr
    assert "swarmnode: phase 1/2" in shown.stdout and cpv.split("/")[1] in shown.stdout


def test_killing_the_leader_mid_cycle_loses_nothing(cluster: list[NodeProc]) -> None:
    first = leader(cluster)
    assert first is not None
    entry = next(n for n in cluster if n is not first)
    started = entry.cli_json("fresh", "--profile", "server")
    assert started["jobs"]
    wait_for(lambda: cycle(entry, "server")["counts"]["built"] >= 2, 600, "some server builds")
    first.kill9()
    shutil.copytree(first.data_dir / "state", first.root / f"{first.node_id}.state-at-kill")
    new = wait_for(lambda: leader(cluster), 30, "a new leader")
    assert new is not first
    done = wait_for(lambda: (c := cycle(entry, "server"))["finished"] and c, 900,
                    "the cycle to finish under the new leader")
    assert not done["counts"]["failed"] and not done["counts"]["blocked"], done["counts"]
    # Each package built once into the cycle: one artifact per job, every one fetchable and
    # verified by the finalize below on every node.
    assert all(j["artifact"] is not None for j in done["jobs"].values())
    first.start()
    wait_converged(cluster, "the old leader to rejoin and catch up")
    wait_for(lambda: not entry.get("/api/v1/status")["summary"]["under_replicated"], 60,
             "replication to catch up")
    result = first.cli("finalize", "--profile", "server")
    assert result.returncode == 0, result.stdout + result.stderr
    release = first.cli_json("releases", "--profile", "server")["production"]
    wait_for(lambda: all((n.get("/api/v1/status")["profiles"]["server"]["serving"] or {})
                         .get("release_id") == release for n in cluster), 120,
             "every node to serve the server release")
    index = packages_index(cluster[0], "server")
    cpvs = [c for c in index if c]
    assert len(cpvs) == len(set(cpvs)) == len(done["jobs"]) + len(done["reused"])


def test_a_hung_worker_loses_its_lease_and_its_late_result_is_discarded(
        cluster: list[NodeProc]) -> None:
    """SIGSTOP the node building a job (a follower or the leader, whichever claimed it): its
    lease is revoked, another node builds the job, and after SIGCONT the stale worker's
    heartbeat/completion is refused, never recorded."""
    # A new desktop cycle with one long job: bump bigtable's revision in the repo copy.
    repo = Path(cluster[0].config.read_text().split('repositories = ["')[1].split('"')[0])
    pkg = repo / "app-misc" / "bigtable"
    shutil.copy(pkg / "bigtable-1.0.ebuild", pkg / "bigtable-1.0-r9.ebuild")
    started = cluster[0].cli("fresh", "--profile", "desktop", "app-misc/bigtable")
    assert started.returncode == 0, started.stderr
    target = "app-misc/bigtable-1.0-r9"

    def holder() -> NodeProc | None:
        job = cycle(cluster[0], "desktop")["jobs"].get(target, {})
        if job.get("state") == "leased":
            return next(n for n in cluster if n.node_id == job["node"])
        return None

    hung = wait_for(holder, 300, f"{target} to be claimed")
    watch = next(n for n in cluster if n is not hung)
    assert hung.proc is not None
    os.kill(hung.proc.pid, signal.SIGSTOP)  # the daemon hangs; its build child runs on
    try:
        # handed on: leased to another node (just requeued is not enough — resumed at once,
        # the hung node could claim it again first)
        wait_for(lambda: cycle(watch, "desktop")["jobs"][target]["node"]
                 not in (None, hung.node_id), 30,
                 "the hung node's lease to be revoked and the job handed on")
    finally:
        os.kill(hung.proc.pid, signal.SIGCONT)
    done = wait_for(lambda: (c := cycle(watch, "desktop"))["finished"] and c, 600, "the cycle")
    job = done["jobs"][target]
    assert job["state"] == "built" and job["log_node"] != hung.node_id
    wait_for(lambda: "was lost" in hung.log_path.read_text()
             or "rejected" in hung.log_path.read_text(), 30,
             "the stale worker to learn it lost the lease")
    wait_converged(cluster, "replicas to converge")


def test_voters_are_added_and_removed_with_the_cli(cluster: list[NodeProc]) -> None:
    first = cluster[0]
    known = first.cli("nodes", "add", cluster[1].raft)
    assert known.returncode == 1 and "already a voter" in known.stderr
    bad = first.cli("nodes", "add", "no-port-here")
    assert bad.returncode == 1 and "must be HOST:PORT" in bad.stderr
    myself = first.cli("nodes", "remove", first.raft)
    assert myself.returncode == 1 and "cannot remove itself" in myself.stderr

    root = first.root
    fourth = NodeProc(root, "n4", first.profiles_toml)
    added = cluster[1].cli("nodes", "add", fourth.raft)  # on any node, before it starts
    assert added.returncode == 0, added.stderr
    fourth.peers = [n.raft for n in cluster] + [fourth.raft]
    fourth.start()
    try:
        wait_for(lambda: any(x.get("node_id") == "n4" and x["up"]
                             for x in first.get("/api/v1/nodes")["nodes"]), 60,
                 "n4 to register through the cluster")
        wait_converged(cluster + [fourth], "n4 to catch up")
    finally:
        fourth.stop()
    removed = cluster[2].cli("nodes", "remove", fourth.raft)
    assert removed.returncode == 0, removed.stderr
    view = first.get("/api/v1/nodes")
    assert next(x for x in view["nodes"] if x.get("node_id") == "n4")["role"] == "removed"
    assert (first.cli("status").returncode == 0)
    # The record says removed at once; every replica's Raft voter set follows when the
    # leader's change commits. Until then a node still counts n4 ("1 of 4 voters").
    wait_for(lambda: all(fourth.raft not in n.get("/api/v1/status")["cluster"]["voters"]
                         for n in cluster), 30, "every node to drop n4 from its voter set")


def test_without_a_quorum_reads_say_so_and_verify_refuses(cluster: list[NodeProc]) -> None:
    alone, others = cluster[0], cluster[1:]
    for n in others:
        n.stop()
    try:
        wait_for(lambda: not alone.get("/api/v1/status")["cluster"]["has_quorum"], 30,
                 "the lone node to see it has no quorum")
        status = alone.cli("status")
        assert status.returncode == 0 and "no quorum" in status.stdout  # reads still answer
        verdict = alone.cli("verify", "--profile", "desktop")
        assert verdict.returncode == 1 and "no quorum" in verdict.stdout
        fresh = alone.cli("fresh", "--profile", "server", "app-misc/motd")
        assert fresh.returncode == 2 and "reaches 1 of 3 voters" in fresh.stderr
    finally:
        for n in others:
            n.start()
    wait_converged(cluster, "the cluster to re-form")
