"""Nodes find each other on a LAN: real `swarmnode serve` processes in network namespaces on
one bridge, real mDNS multicast, no peer list anywhere.

In order, against one LAN: three nodes form a swarm through mDNS; a node of another cluster
stays out (and is listed as foreign); a node with the right name but a wrong secret is refused
and starts nothing; a node started while a cycle runs is admitted as a non-voting worker and
builds jobs of that cycle; a voter whose link goes down is marked down and the rest finish the
cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import PROJECT, NodeProc, profile_toml, wait_for
from heldout_repo import make_repository, program_atoms
from netns import Lan, lan_or_skip

pytestmark = pytest.mark.slow

EXTRA_PROGRAMS = 8
PROFILE = "lan"
SECRET = "lan-secret-0123456789abcdef"
WRONG = "not-the-lan-secret-0123456789"


class Swarm:
    def __init__(self, lan: Lan, root: Path, profiles: str) -> None:
        self.lan, self.root, self.profiles = lan, root, profiles
        self.nodes: dict[str, NodeProc] = {}

    def add(self, node_id: str, cluster: str = "lan", secret: str = SECRET,
            discovery: str = "tailscale = false") -> NodeProc:
        host = self.lan.add_host(node_id)
        node = NodeProc(self.root, node_id, self.profiles, secret=secret, port=7700,
                        raft_port=7701, host=host.ip, netns=host.netns, cluster_name=cluster,
                        cluster_toml="max_voters = 3\ndown_after_s = 3",
                        extra_toml=f"\n[discovery]\nbootstrap_wait_s = 3\n{discovery}\n")
        self.nodes[node_id] = node
        return node

    def host(self, node_id: str) -> Any:
        return next(h for h in self.lan.hosts if h.name == node_id)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("lan")
    repo, distfiles, _conf = make_repository(root, EXTRA_PROGRAMS)
    for ebuild in repo.glob("games-misc/tally*/*.ebuild"):  # builds long enough to join mid-way
        ebuild.write_text(ebuild.read_text().replace("src_compile() {", "src_compile() { sleep 3;"))
    world = json.dumps(program_atoms(EXTRA_PROGRAMS))
    profiles = profile_toml(PROFILE, repo, None, distfiles, portage_profile="base",
                            extra=f"world = {world}")
    lan = lan_or_skip("snd")
    s = Swarm(lan, root / "nodes", profiles)
    try:
        yield s
    finally:
        for n in s.nodes.values():
            n.stop()
        lan.close()


def nodes_view(n: NodeProc) -> dict[str, Any]:
    return n.get("/api/v1/nodes")


def members(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["node_id"]: e for e in view["nodes"] if e.get("node_id")}


def test_three_nodes_form_a_swarm_through_mdns_without_a_peer_list(swarm: Swarm) -> None:
    first = [swarm.add(f"n{i}") for i in (1, 2, 3)]
    for n in first:
        assert n.peers == []  # nothing but the cluster name and secret
        n.start(wait=False)
    for n in first:
        n.wait_serving(90)

    def formed() -> dict[str, Any] | None:
        view = nodes_view(first[0])
        found = members(view)
        if set(found) == {"n1", "n2", "n3"} and all(e["up"] for e in found.values()):
            return view
        return None

    view = wait_for(formed, 60, "n1 to list n1, n2, n3 as up members")
    found = members(view)
    assert sorted(e["role"] for e in found.values()) == ["leader", "voter", "voter"]
    assert {e["discovery"] for e in found.values()} == {"mdns"}
    assert {e["raft"] for e in found.values()} == {n.raft for n in first}
    leaders = {nodes_view(n)["leader"] for n in first}
    assert len(leaders) == 1 and leaders != {None}
    out = first[1].cli("nodes")
    assert out.returncode == 0, out.stderr
    assert "leader" in out.stdout and "mdns" in out.stdout and "3 voters" in out.stdout


def test_a_node_of_another_cluster_stays_out_and_is_listed_as_foreign(swarm: Swarm) -> None:
    n1 = swarm.nodes["n1"]
    other = swarm.add("f4", cluster="other")
    other.start(wait=False)
    other.wait_serving(60)  # it starts its own swarm: nobody of cluster "other" is around
    assert set(members(nodes_view(other))) == {"f4"}
    wait_for(lambda: any(m["node_id"] == "f4" and m["status"].startswith("foreign")
                         for m in nodes_view(n1)["nearby"]), 30, "n1 to list f4 as foreign")
    assert set(members(nodes_view(n1))) == {"n1", "n2", "n3"}


def test_a_node_with_a_wrong_secret_is_refused_and_starts_nothing(swarm: Swarm) -> None:
    n1 = swarm.nodes["n1"]
    intruder = swarm.add("w5", secret=WRONG)
    intruder.start(wait=False)

    def refused_nearby() -> bool:
        return any(m["node_id"] == "w5" and m["status"].startswith("refused")
                   for n in ("n1", "n2", "n3") for m in nodes_view(swarm.nodes[n])["nearby"])

    wait_for(refused_nearby, 30, "a member to list w5 as refused")
    # Well past its bootstrap wait: it still refuses to start a rival swarm with our name.
    wait_for(lambda: "refused" in intruder.log_tail(200), 30, "w5 to log the refusal")
    status, body = intruder.http("GET", "/api/v1/status")
    assert status == 503 and b"refused" in body, body
    assert "w5" not in members(nodes_view(n1))
    out = intruder.cli("status")
    assert out.returncode != 0 and "not serving yet" in out.stderr and "Traceback" not in out.stderr


def test_a_node_added_mid_cycle_builds_and_a_cut_link_is_marked_down(swarm: Swarm) -> None:
    n1 = swarm.nodes["n1"]
    started = n1.cli("fresh", "--profile", PROFILE)
    assert started.returncode == 0, started.stderr + n1.log_tail()
    late = swarm.add("n6")
    late.start(wait=False)

    def cycle() -> dict[str, Any]:
        return n1.get(f"/api/v1/cycles/latest?profile={PROFILE}")

    wait_for(lambda: members(nodes_view(n1)).get("n6", {}).get("up"), 60,
             "n6 to be admitted and registered")
    assert members(nodes_view(n1))["n6"]["role"] == "non-voter"  # max_voters = 3
    assert not cycle()["finished"], "the cycle ended before n6 could join: make builds longer"
    wait_for(lambda: any(j["node"] == "n6" for j in cycle()["jobs"].values()), 90,
             "n6 to build a job of the running cycle")

    view = nodes_view(n1)
    victim_id = next(i for i in ("n2", "n3") if members(view)[i]["role"] == "voter")
    watcher = swarm.nodes["n3" if victim_id == "n2" else "n2"]
    swarm.lan.link_down(swarm.host(victim_id))
    wait_for(lambda: not members(nodes_view(watcher))[victim_id]["up"], 30,
             f"{victim_id} (link down) to be marked down")
    final = wait_for(lambda: (c := cycle())["finished"] and c, 180,
                     "the rest to finish the cycle")
    assert final["counts"]["built"] == len(final["jobs"]), final["counts"]
    builders = {j["node"] for j in final["jobs"].values()}
    assert "n6" in builders
    swarm.lan.link_up(swarm.host(victim_id))
    wait_for(lambda: members(nodes_view(watcher))[victim_id]["up"], 60,
             f"{victim_id} to be marked up once its link is back")


def test_demoting_a_voter_promotes_a_worker_and_both_reopen_their_replicas(swarm: Swarm) -> None:
    n1 = swarm.nodes["n1"]

    def settled_leader() -> str | None:
        """The leader once every voter names it in the same term: the node the previous test
        cut off comes back with a higher term and forces an election (no pre-vote in
        pysyncobj), and the leader read before that would no longer be the leader."""
        views = [swarm.nodes[i].get("/api/v1/status")["cluster"] for i in ("n1", "n2", "n3")]
        agreed = {(v["leader"], v["term"]) for v in views}
        if len(agreed) == 1 and views[0]["leader"] and all(v["has_quorum"] for v in views):
            return str(views[0]["leader"])
        return None

    lead = wait_for(settled_leader, 60, "the voters to agree on one leader in one term")
    view = nodes_view(n1)
    refused = n1.cli("nodes", "demote", lead)
    assert refused.returncode == 1 and "is the leader" in refused.stderr
    voter = next(i for i in ("n2", "n3") if members(view)[i]["role"] == "voter")
    out = n1.cli("nodes", "demote", voter)
    assert out.returncode == 0 and f"demoted {voter}" in out.stdout, out.stdout + out.stderr

    def switched() -> bool:
        found = members(nodes_view(n1))
        return found["n6"]["role"] == "voter" and found[voter]["role"] == "non-voter"

    wait_for(switched, 60, f"n6 to take {voter}'s seat")
    wait_for(lambda: swarm.nodes["n6"].get("/api/v1/status")["cluster"]["voter"], 30,
             "n6 to reopen its replica as a voter")
    wait_for(lambda: not swarm.nodes[voter].get("/api/v1/status")["cluster"]["voter"], 30,
             f"{voter} to reopen its replica as a worker")
    # The swarm still commits, from the demoted worker too (forwarded to the leader).
    assert swarm.nodes[voter].cli("verify", "--profile", PROFILE).returncode in (0, 1)
    live = [swarm.nodes[i] for i in ("n1", "n2", "n3", "n6")]
    wait_for(lambda: len({(v["applied_index"], v["digest"]) for v in
                          (n.get("/api/v1/status")["state"] for n in live)}) == 1, 30,
             "replicas to converge")


def test_a_remote_node_without_mdns_joins_through_the_peers_tailscale_reports(
        swarm: Swarm, tmp_path: Path) -> None:
    """A node at another site: no mDNS reaches it, `tailscale status --json` lists the swarm.
    The tailscale command is a stand-in printing a real capture whose peers' tailnet addresses
    are replaced by the LAN's (the real tailscaled cannot run here)."""
    capture = json.loads((PROJECT / "tests/data/tailscale/status-1.94.2-tagged.json").read_text())
    peers = list(capture["Peer"].values())
    members_ips = [swarm.nodes[i].host for i in ("n1", "n2")]
    for peer, ip in zip(peers, members_ips):
        peer["TailscaleIPs"], peer["Online"] = [ip], True
    for peer in peers[len(members_ips):]:
        peer["Online"] = False
    status = tmp_path / "status.json"
    status.write_text(json.dumps(capture))
    fake = tmp_path / "tailscale"
    fake.write_text(f"#!/bin/sh\ncat {status}\n")
    fake.chmod(0o755)
    remote = swarm.add("r7", discovery=f'mdns = false\ntailscale_command = "{fake}"')
    remote.start(wait=False)
    remote.wait_serving(60)
    found = wait_for(lambda: members(nodes_view(swarm.nodes["n1"])).get("r7"), 30,
                     "r7 to be registered")
    assert found["discovery"] == "tailscale" and found["role"] == "non-voter"
    assert "tailscale" in remote.log_tail(200)
