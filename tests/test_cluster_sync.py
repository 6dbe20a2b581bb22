"""`swarmnode sync` across two real nodes: each clones/pulls the example repository from a git
repository over file:// with portage's own sync and reports its tree version; a cycle is
pinned to one version, and a node whose tree differs takes none of its jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import NodeProc, PROFILES, profile_toml, wait_for
from test_sync import make_git_repo, push_bump

pytestmark = pytest.mark.slow


def synced_profile(repo: Path, bare: Path) -> str:
    return (profile_toml("desktop", repo, PROFILES / "desktop",
                         PROFILES.parent / "example" / "distfiles")
            + f'sync_uris = ["file://{bare}"]\n')


def test_sync_makes_every_node_report_the_same_tree(tmp_path: Path) -> None:
    bare = tmp_path / "example.git"
    head = make_git_repo(bare)
    nodes = [NodeProc(tmp_path, f"s{i}", synced_profile(tmp_path / f"s{i}-repo", bare))
             for i in (1, 2)]
    for n in nodes:
        n.peers = [m.raft for m in nodes]
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: sum(1 for x in nodes[0].get("/api/v1/nodes")["nodes"]
                             if x.get("node_id")) == 2, 60, "two registered nodes")
        first = nodes[1].cli_json("sync", "--timeout", "300")
        trees = {x["node_id"]: x["tree_versions"]["desktop"] for x in first["nodes"]}
        assert trees == {"s1": head, "s2": head}, first
        assert all((tmp_path / f"s{i}-repo" / "profiles" / "repo_name").is_file() for i in (1, 2))

        new_head = push_bump(bare, tmp_path / "upstream-work")
        again = nodes[0].cli("sync", "--timeout", "300")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "synced" in again.stdout and new_head in again.stdout
        view = nodes[0].get("/api/v1/nodes")
        assert {x["tree_versions"]["desktop"] for x in view["nodes"]} == {new_head}

        # s2's tree drifts (a local commit): a cycle planned on s1 is pinned to s1's tree,
        # and s2 is told why it takes nothing.
        repo2 = tmp_path / "s2-repo"
        (repo2 / "app-misc" / "motd" / "motd-1.0.ebuild").write_text(
            (repo2 / "app-misc" / "motd" / "motd-1.0.ebuild").read_text() + "# local edit\n")
        started = nodes[0].cli_json("fresh", "--profile", "desktop", "app-misc/motd")
        assert started["tree_version"] == new_head
        wait_for(lambda: (v := nodes[0].get("/api/v1/nodes")) and any(
            x["node_id"] == "s2" and x["tree_versions"]["desktop"] != new_head
            for x in v["nodes"]), 60, "s2 to report its drifted tree")
        done = wait_for(lambda: (c := nodes[0].get("/api/v1/cycles/latest?profile=desktop"))
                        ["finished"] and c, 300, "the pinned cycle to finish on s1")
        assert {j["log_node"] for j in done["jobs"].values()} == {"s1"}
    finally:
        for n in nodes:
            n.stop()
