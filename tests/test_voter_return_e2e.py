"""A voter demoted while it was down comes back as a worker (real processes, real Raft).

Three static peers, `max_voters = 2`, `voter_grace_s = 3`: n3 is killed, the leader marks it
down, demotes it after the grace period and drops it from pysyncobj's voter set. Restarted,
n3 opens its replica from its saved membership — as a voter — and pysyncobj on n1 and n2
drops every connection it makes (its address is in neither voter set), so it would never
hear of its new role and never catch up again. It asks its peers instead
(membership.stale_vote), reopens as a worker with a fresh replica, and follows the swarm.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness import PROFILES, NodeProc, copy_example, profile_toml, run_cluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("voters")
    repo, distfiles = copy_example(root)
    profiles = profile_toml("desktop", repo, PROFILES / "desktop", distfiles)
    yield from run_cluster(root, profiles, cluster_toml="max_voters = 2\nvoter_grace_s = 3\n"
                                                         "down_after_s = 2")


def nodes(n: NodeProc) -> dict[str, dict[str, Any]]:
    return {e["node_id"]: e for e in n.get("/api/v1/nodes")["nodes"] if e.get("node_id")}


def test_a_voter_demoted_while_down_comes_back_as_a_worker(cluster: list[NodeProc]) -> None:
    n1, n2, n3 = cluster
    wait_for(lambda: len(nodes(n1)) == 3 and all(v["up"] for v in nodes(n1).values()), 60,
             "all three nodes registered and up")
    saved = n3.data_dir / "state" / "membership.json"
    wait_for(lambda: len(json.loads(saved.read_text())["peers"]) == 2, 30,
             "n3 to note where its peers' APIs are (what it asks after a restart)")
    n3.kill9()
    wait_for(lambda: nodes(n1)["n3"]["role"] == "non-voter"
             and n3.raft not in n1.get("/api/v1/status")["cluster"]["voters"], 60,
             "n3 to be demoted and dropped from the voter set while down")
    n3.start()

    def caught_up() -> bool:
        mine, lead = n3.get("/api/v1/status"), n1.get("/api/v1/status")
        return (not mine["cluster"]["voter"] and mine["cluster"]["leader_address"] is not None
                and mine["state"]["applied_index"] >= lead["state"]["applied_index"])

    wait_for(caught_up, 60, "n3 to reopen as a worker and catch up")
    wait_for(lambda: nodes(n1)["n3"]["up"], 30, "the leader to see n3 up again")
    assert "no longer counts this node as a voter" in n3.log_path.read_text(errors="replace")
    # It follows the swarm from now on: a command through it commits and it applies it.
    before = n3.get("/api/v1/status")["state"]["applied_index"]
    assert n3.cli("verify", "--profile", "desktop").returncode in (0, 1)
    wait_for(lambda: n3.get("/api/v1/status")["state"]["applied_index"] > before, 30,
             "n3 to apply what the swarm commits")
