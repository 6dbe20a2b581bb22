"""One real node, end to end: build with real portage, publish, install from the binhost.

The tests in this module run in order against one node (a full build of the example set is
the expensive part, so it happens once). They use a copy of the example repository, so the
sub-slot bump can edit it.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import threading
from pathlib import Path

import pytest

from harness import PROFILES, NodeProc, copy_example, profile_toml, wait_for
from swarmnode.portage.builder import leftover_build_processes
from swarmnode.portage.client import BinhostClient
from swarmnode.portage.index import read_gpkg_metadata
from swarmnode.state import SwarmState
from swarmnode.state.scheduling import one_core_seconds
from swarmnode.store import ArtifactStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e")
    repo, distfiles = copy_example(root)
    profiles = profile_toml("desktop", repo, PROFILES / "desktop", distfiles,
                            extra='critical = ["dev-libs/libgreet"]')
    host_log = root / "emerge.log"   # what this "host" built before it joined a swarm
    host_log.write_text("1:  >>> emerge (1 of 1) dev-lang/toylang-1.0 to /\n"
                        "901:  ::: completed emerge (1 of 1) dev-lang/toylang-1.0 to /\n")
    n = NodeProc(root, "node1", profiles, emerge_log=str(host_log))
    n.repo, n.distfiles = repo, distfiles  # type: ignore[attr-defined]
    n.start()
    yield n
    n.stop()


def packages_index(n: NodeProc, profile: str = "desktop") -> dict[str, dict[str, str]]:
    """The served Packages index, parsed: cpv -> entry (and "" -> header)."""
    status, body = n.http("GET", f"/binhost/{profile}/Packages")
    assert status == 200, body
    blocks = body.decode().strip().split("\n\n")
    parsed = {}
    for i, block in enumerate(blocks):
        entry = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        parsed["" if i == 0 else entry["CPV"]] = entry
    return parsed


def served_release_is_whole(n: NodeProc, profile: str = "desktop") -> str:
    """Every package the index names is served with the index's size and digest."""
    index = packages_index(n, profile)
    gz_status, gz = n.http("GET", f"/binhost/{profile}/Packages.gz")
    assert gz_status == 200
    assert gzip.decompress(gz) == n.http("GET", f"/binhost/{profile}/Packages")[1]
    for cpv, entry in index.items():
        if not cpv:
            continue
        status, data = n.http("GET", f"/binhost/{profile}/" + entry["PATH"])
        assert status == 200, f"{cpv}: {data[:200]!r}"
        assert len(data) == int(entry["SIZE"])
        assert hashlib.sha1(data).hexdigest() == entry["SHA1"]
    return index[""]["TIMESTAMP"]


def test_history_from_an_emerge_log_seeds_the_estimates_of_the_first_cycle(
        node: NodeProc, tmp_path: Path) -> None:
    def learned() -> dict[str, float]:
        status, raw = node.http("GET", "/api/v1/state", secret=node.secret)
        assert status == 200
        return SwarmState.from_bytes(raw).durations

    # the node read its own host's log (build.emerge_log) when it joined, with -j(its cores)
    wait_for(lambda: "dev-lang/toylang" in learned(), 30, "the host's emerge log learned")
    assert learned()["dev-lang/toylang"] == pytest.approx(one_core_seconds(900, 2))
    log = tmp_path / "emerge.log"
    log.write_text("\n".join([
        "1000: Started emerge on: Feb 04, 2018 00:09:31",
        "1001:  >>> emerge (1 of 3) dev-libs/libcore-0.9 to /",
        "1031:  ::: completed emerge (1 of 3) dev-libs/libcore-0.9 to /",
        "1031:  >>> emerge (2 of 3) app-misc/bigtable-0.9 to /",
        "1631:  ::: completed emerge (2 of 3) app-misc/bigtable-0.9 to /",
        "1631:  >>> emerge (3 of 3) app-misc/motd-0.9 to /",          # failed: never completed
        ""]))
    proc = node.cli("history", "--emerge-log", str(log), "--jobs", "4")
    assert proc.returncode == 0, proc.stderr + node.log_tail()
    assert "read 2 builds of 2 packages" in proc.stdout and "learned 2 new" in proc.stdout
    assert learned() == {"app-misc/bigtable": pytest.approx(one_core_seconds(600, 4)),
                         "dev-libs/libcore": 30.0,   # all serial: one core takes as long
                         "dev-lang/toylang": pytest.approx(one_core_seconds(900, 2))}
    again = node.cli_json("history", "--emerge-log", str(log), "--jobs", "4")
    assert again["added"] == 0 and again["known"] == 2
    shown = node.cli("status")
    assert "build times known for 3 packages (3 first from emerge logs)" in shown.stdout
    digest = node.get("/api/v1/status")["state"]["digest"]
    for body, code, message in [
            (b'{"packages": {"dev-libs/libcore-1.0": 5}, "jobs": 4}', 400, b"without a version"),
            (b'{"packages": {"dev-libs/libcore": -5}, "jobs": 4}', 400, b"wall seconds"),
            (b'{"packages": {"dev-libs/libcore": 5}, "jobs": 0}', 400, b"'jobs'")]:
        got, reply = node.http("POST", "/api/v1/history", body, secret=node.secret)
        assert (got, message in reply) == (code, True), reply
    assert node.http("POST", "/api/v1/history", b'{"packages": {"a/b": 5}, "jobs": 4}',
                     secret="wrong")[0] == 401
    missing = node.cli("history", "--emerge-log", str(tmp_path / "nope.log"))
    assert missing.returncode != 0 and "cannot read emerge log" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    assert node.get("/api/v1/status")["state"]["digest"] == digest


def test_fresh_builds_the_world_set(node: NodeProc) -> None:
    proc = node.cli("fresh", "--profile", "desktop", "--wait", timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr + node.log_tail()
    cycle = node.get("/api/v1/status")["profiles"]["desktop"]["cycle"]
    assert cycle["counts"]["built"] >= 12
    assert not cycle["counts"].get("failed")


def test_verify_then_finalize_publishes_a_signed_binhost(node: NodeProc) -> None:
    report = node.cli_json("verify", "--profile", "desktop")
    assert report["safe"] and report["score"] < 15
    result = node.cli_json("finalize", "--profile", "desktop")
    index = packages_index(node)
    assert int(index[""]["TIMESTAMP"]) == result["timestamp"]
    assert "dev-libs/libgreet-1.0" in index
    assert "app-misc/broken-1.0" not in index
    served_release_is_whole(node)


def test_a_separate_portage_client_installs_and_runs_a_program(node: NodeProc,
                                                               tmp_path: Path) -> None:
    key = node.cli("key").stdout
    with BinhostClient.create(tmp_path / "client", f"{node.url}/binhost/desktop", key,
                              node.repo, "swarm/amd64") as client:  # type: ignore[attr-defined]
        client.install(["app-misc/greeter"])
        assert "Hello" in client.run("greeter")
    assert not client.keyring_dir.exists()  # the keyring's temp dir goes with the client
    # Without the swarm's key, portage's default signature verification refuses the package.
    with BinhostClient.create(tmp_path / "stranger", f"{node.url}/binhost/desktop", None,
                              node.repo, "swarm/amd64") as stranger:  # type: ignore[attr-defined]
        with pytest.raises(Exception):
            stranger.install(["app-misc/greeter"])
        first = stranger.keyring_dir
        # a client laid out again in the same place removes the keyring it left before
        again = BinhostClient.create(tmp_path / "stranger", f"{node.url}/binhost/desktop", None,
                                     node.repo, "swarm/amd64")  # type: ignore[attr-defined]
        assert not first.exists() and again.keyring_dir.is_dir()
        again.close()


def test_failing_package_is_explained_and_blocks_finalize(node: NodeProc) -> None:
    proc = node.cli("fresh", "--profile", "desktop", "--wait", "app-misc/broken-fan",
                    timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "app-misc/broken-1.0" in proc.stdout
    cycle = node.get("/api/v1/status")["profiles"]["desktop"]["cycle"]
    assert cycle["blocked"] == ["app-misc/broken-fan-1.0"]
    assert [f["cpv"] for f in cycle["failed"]] == ["app-misc/broken-1.0"]
    logs = node.cli("logs", "app-misc/broken-1.0", "--profile", "desktop")
    assert logs.returncode == 0 and "error" in logs.stdout.lower()
    verify = node.cli("verify", "--profile", "desktop")
    assert verify.returncode == 1
    assert "app-misc/broken-1.0" in verify.stdout and "broken-fan" in verify.stdout
    refused = node.cli("finalize", "--profile", "desktop")
    assert refused.returncode == 1
    assert refused.stderr.startswith("swarmnode: error: refusing to finalize")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr


def test_forced_finalize_and_rollback_move_the_timestamp_forward(node: NodeProc) -> None:
    before = node.cli_json("releases", "--profile", "desktop")
    first_ts = int(packages_index(node)[""]["TIMESTAMP"])
    whole_set = set(packages_index(node)) - {""}
    forced = node.cli_json("finalize", "--profile", "desktop", "--force")
    assert forced["timestamp"] > first_ts
    # A cycle over some atoms updates the release: everything else is carried over.
    assert set(packages_index(node)) - {""} == whole_set
    rolled = node.cli_json("rollback", "--profile", "desktop")
    assert rolled["release_id"] == before["production"]
    assert rolled["timestamp"] > forced["timestamp"]
    assert int(served_release_is_whole(node)) == rolled["timestamp"]


def test_subslot_bump_rebuilds_exactly_the_library_and_its_slot_operator_users(
        node: NodeProc) -> None:
    repo: Path = node.repo  # type: ignore[attr-defined]
    pkg = repo / "dev-libs/libgreet"
    text = (pkg / "libgreet-1.0.ebuild").read_text().replace('SLOT="0/1"', 'SLOT="0/2"')
    (pkg / "libgreet-1.0-r1.ebuild").write_text(text)
    result = node.cli_json("fresh", "--profile", "desktop")
    rebuilt = sorted(j["cpv"] for j in result["jobs"])
    assert rebuilt == ["app-misc/greeter-1.0", "app-misc/welcome-1.0",
                       "dev-libs/libgreet-1.0-r1"], result["jobs"]
    done = node.cli("fresh", "--profile", "desktop", "--wait")  # nothing new: a running cycle
    assert done.returncode == 1 and "still running" in done.stderr
    wait_for(lambda: node.get(f"/api/v1/cycles/{result['cycle_id']}")["finished"], 600,
             "the sub-slot cycle to finish")
    node.cli_json("finalize", "--profile", "desktop")
    assert "dev-libs/libgreet-1.0-r1" in packages_index(node)


def test_node_killed_mid_build_restarts_and_the_cycle_completes(node: NodeProc) -> None:
    pkg: Path = node.repo / "app-misc/bigtable"  # type: ignore[attr-defined]
    (pkg / "bigtable-1.0-r1.ebuild").write_text((pkg / "bigtable-1.0.ebuild").read_text())
    started = node.cli_json("fresh", "--profile", "desktop")
    assert [j["cpv"] for j in started["jobs"]] == ["app-misc/bigtable-1.0-r1"]
    wait_for(lambda: node.get("/api/v1/status")["node"]["building"], 120, "the build to start")
    live = node.cli("logs", "app-misc/bigtable-1.0-r1")  # while it builds: the live log
    assert live.returncode == 0 and "swarmnode: phase 1/2" in live.stdout, live.stderr
    jobs = node.cli_json("jobs", "--profile", "desktop", "--state", "leased")
    assert list(jobs["jobs"]) == ["app-misc/bigtable-1.0-r1"]
    assert jobs["jobs"]["app-misc/bigtable-1.0-r1"]["node"] == "node1"
    node.kill9()
    assert leftover_build_processes(node.data_dir / "builds"), "the build outlives its node"
    node.start()
    assert not leftover_build_processes(node.data_dir / "builds"), "restart kills it"
    assert "replay diverged" not in node.log_tail(400)
    cycle = wait_for(lambda: (c := node.get(f"/api/v1/cycles/{started['cycle_id']}"))["finished"]
                     and c, 600, "the cycle to finish after the restart")
    job = cycle["jobs"]["app-misc/bigtable-1.0-r1"]
    table = node.cli("jobs", "--profile", "desktop")
    assert table.returncode == 0 and "app-misc/bigtable-1.0-r1" in table.stdout
    assert job["state"] == "built" and job["attempts"] >= 2, job  # expired once, then built
    # The burnt lease's BUILD_ID is never reused; the package carries the one the state chose.
    assert job["artifact"]["build_id"] >= 2
    gpkg = ArtifactStore(node.data_dir / "store").path(job["artifact"]["sha256"])
    assert read_gpkg_metadata(gpkg)["BUILD_ID"] == str(job["artifact"]["build_id"])


def test_reset_returns_a_running_build_to_the_queue_and_it_is_built_again(
        node: NodeProc) -> None:
    pkg: Path = node.repo / "app-misc/bigtable"  # type: ignore[attr-defined]
    (pkg / "bigtable-1.0-r2.ebuild").write_text((pkg / "bigtable-1.0.ebuild").read_text())
    started = node.cli_json("fresh", "--profile", "desktop", "app-misc/bigtable")
    assert [j["cpv"] for j in started["jobs"]] == ["app-misc/bigtable-1.0-r2"]
    first = wait_for(lambda: node.get("/api/v1/status")["node"]["building"], 120,
                     "the build to start")[0]
    assert node.cli("reset", "--profile", "desktop").returncode == 0
    # The builder learns from its next heartbeat that the lease is gone and stops; the job is
    # claimed again under a new lease and built.
    cycle = wait_for(lambda: (c := node.get(f"/api/v1/cycles/{started['cycle_id']}"))["finished"]
                     and c, 600, "the reset cycle to finish")
    job = cycle["jobs"]["app-misc/bigtable-1.0-r2"]
    assert job["state"] == "built" and job["artifact"]["build_id"] >= 2
    assert f"lease {first['lease']} was lost" in node.log_tail(200)
    assert not (node.data_dir / "builds" / str(first["lease"])).exists()


def test_bad_input_gets_a_clear_error_and_changes_nothing(node: NodeProc) -> None:
    digest = node.get("/api/v1/status")["state"]["digest"]
    cases = [
        ("POST", "/api/v1/cycles", b'{"targets": ["not an atom!"]}', {400}, "invalid atom"),
        ("POST", "/api/v1/cycles", b'{"profile": "nosuch"}', {404}, "unknown profile"),
        ("POST", "/api/v1/cycles", b'{"targets": ', {400}, "not valid JSON"),
        ("POST", "/api/v1/finalize", b'{"force": "yes"}', {400}, "true or false"),
        ("GET", "/binhost/desktop/../../etc/passwd", None, {400, 404}, ""),
        ("GET", "/binhost/desktop/%2e%2e/%2e%2e/etc/passwd", None, {400, 404}, ""),
        ("GET", "/binhost/nosuch/Packages", None, {404}, "unknown profile"),
        ("GET", "/api/v1/logs/not-a-cpv", None, {400}, "cpv"),
    ]
    for method, path, body, statuses, message in cases:
        got, raw = node.http(method, path, body, secret=node.secret)
        assert got in statuses, (path, got, raw)
        assert b"root:" not in raw and b"Traceback" not in raw
        assert message.encode() in raw, (path, raw)
    assert node.http("POST", "/api/v1/reset", b"{}", secret="wrong-secret")[0] == 401
    assert node.get("/api/v1/status")["state"]["digest"] == digest
    bad = node.cli("fresh", "--profile", "desktop", "=broken atom")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("swarmnode: error: invalid atom")


def test_truncated_artifact_is_detected_and_never_served(node: NodeProc) -> None:
    index = packages_index(node)
    entry = index["app-misc/welcome-1.0"] if "app-misc/welcome-1.0" in index else index[
        next(c for c in index if c)]
    objects = node.data_dir / "store" / "objects"
    sha = next(p for p in objects.rglob("*") if p.is_file()
               and p.stat().st_size == int(entry["SIZE"])
               and hashlib.sha1(p.read_bytes()).hexdigest() == entry["SHA1"])
    data = sha.read_bytes()
    sha.write_bytes(data[: len(data) // 2])
    status, body = node.http("GET", "/binhost/desktop/" + entry["PATH"])
    assert status >= 400 and len(body) != len(data)
    assert not sha.exists(), "the corrupt object is quarantined"
    assert list((node.data_dir / "store" / "quarantine").iterdir())
    status, _ = node.http("GET", "/binhost/desktop/" + entry["PATH"])
    assert status >= 400, "still not served: the store no longer has it"
    ArtifactStore(node.data_dir / "store").put_bytes(data)  # what a peer re-fetch does
    status, body = node.http("GET", "/binhost/desktop/" + entry["PATH"])
    assert status == 200 and body == data


def test_kill_9_during_finalize_leaves_old_or_new_release_whole(node: NodeProc) -> None:
    for attempt in range(4):
        before = served_release_is_whole(node)
        result: dict[str, subprocess.CompletedProcess[str]] = {}
        t = threading.Thread(target=lambda: result.setdefault(
            "p", node.cli("finalize", "--profile", "desktop", "--force")))
        t.start()
        # Kill at a different moment each time (the kill's timing is what is under test).
        threading.Event().wait(0.05 + 0.1 * attempt)
        node.kill9()
        t.join()
        node.start()
        assert "replay diverged" not in node.log_tail(400)
        after = served_release_is_whole(node)
        assert int(after) >= int(before)
