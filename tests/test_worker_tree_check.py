"""The worker looks at its portage tree right before it claims a pinned cycle's job, and
again when the build ends: a build of an edited tree does not count.

The node is a stand-in (this is a unit test of swarmnode/node/worker.py): a real SwarmState
applies what the worker submits; ``refresh_tree_versions`` reports what a re-read of the
tree would find.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from swarmnode.consensus.raft import NoQuorum
from swarmnode.node.worker import PRE_CLAIM_CHECK_S, Worker
from swarmnode.portage.builder import BuildResult
from swarmnode.state.records import BUILT, READY
from test_state_machine import P, Swarm


class FakeNode:
    def __init__(self, swarm: Swarm, tree_now: str) -> None:
        self.swarm = swarm
        self.log = SimpleNamespace(state=swarm.s)
        self.config = SimpleNamespace(
            node=SimpleNamespace(node_id="n1", cores=4, workstation=False, reserve_cores=0),
            build=SimpleNamespace(max_parallel_jobs=2, lease_ttl_s=60.0, heartbeat_s=60.0,
                                  keep_build_roots=False),
            profile=lambda name: SimpleNamespace(name=name))
        self.store = SimpleNamespace(put_file=lambda path: SimpleNamespace(sha256="ab" * 32,
                                                                           size=1))
        self.tree_now = tree_now          # what the repository holds at this moment
        self.checks: list[float | None] = []   # min_interval_s of every refresh asked for
        self.submitted: list[str] = []
        self.tree_read: dict[str, str] = {}

    async def refresh_tree_versions(self, min_interval_s: float | None = None) -> None:
        self.checks.append(min_interval_s)
        self.tree_read = {P: self.tree_now}
        me = self.swarm.s.node("n1")
        if me is not None and me.tree_versions.get(P) != self.tree_now:
            self.swarm.ok("tree_report", node_id="n1", tree_versions={P: self.tree_now})

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.submitted.append(cmd["op"])
        fields = {k: v for k, v in cmd.items() if k not in ("op", "rid", "ts")}
        return self.swarm.do(cmd["op"], **fields)


def _worker(tree_now: str) -> tuple[Worker, FakeNode, list[str]]:
    w = Swarm()
    w.node("n1", tree_versions={P: "t1"})
    w.cycle("c1", {"a/x-1": [], "a/y-1": []}, tree_version="t1")
    node = FakeNode(w, tree_now)
    worker = Worker(node)  # type: ignore[arg-type]
    started: list[str] = []
    worker._start = lambda job, lease: started.append(job["cpv"])  # type: ignore[method-assign]
    return worker, node, started


def test_a_tree_edited_since_the_last_look_is_reported_before_any_claim() -> None:
    # the last look (≤ 10 s ago) saw t1; the repository has been edited since
    worker, node, started = _worker(tree_now="t2")
    node.refresh_tree_versions = _skip_rate_limited(node)  # type: ignore[method-assign]
    asyncio.run(worker.claim_round())
    assert node.submitted == [] and started == []          # no claim was even proposed
    assert node.checks == [None, PRE_CLAIM_CHECK_S]
    assert node.swarm.s.node("n1").tree_versions == {P: "t2"}
    assert node.swarm.s.cycle("c1").ready == 2             # both jobs left for other nodes


def test_an_unchanged_tree_is_read_once_for_a_burst_of_claims() -> None:
    worker, node, started = _worker(tree_now="t1")
    asyncio.run(worker.claim_round())
    assert node.checks == [None, PRE_CLAIM_CHECK_S]
    assert sorted(started) == ["a/x-1", "a/y-1"] and node.submitted == ["claim", "claim"]


def _skip_rate_limited(node: FakeNode) -> Any:
    """The periodic look is rate-limited and finds nothing new; only the pre-claim one reads."""
    real = node.refresh_tree_versions

    async def refresh(min_interval_s: float | None = None) -> None:
        if min_interval_s is None:
            node.checks.append(min_interval_s)
            return
        await real(min_interval_s)
    return refresh


@pytest.mark.parametrize("edited,quorum", [(False, True), (True, True), (True, False)])
def test_a_build_that_ends_on_an_edited_tree_is_handed_back(tmp_path: Path, edited: bool,
                                                             quorum: bool) -> None:
    worker, node, _ = _worker(tree_now="t1")
    node.paths = SimpleNamespace(builds=tmp_path)  # type: ignore[attr-defined]
    claim = node.swarm.claim("n1")
    if not quorum:  # the tree is read, but its report cannot be committed right then

        async def unreported(min_interval_s: float | None = None) -> None:
            node.tree_read = {P: node.tree_now}
            raise NoQuorum("no leader")
        node.refresh_tree_versions = unreported  # type: ignore[method-assign]

    async def build(job: Any, profile: Any, workdir: Path, log_path: Path,
                    lease: Any) -> BuildResult:
        if edited:  # someone edits the repository while the package compiles
            node.tree_now = "t2"
        return BuildResult(True, workdir / "a.gpkg.tar", log_path, 12.0, "")
    worker._build = build  # type: ignore[method-assign]
    asyncio.run(worker._run_job(claim["job"], claim["lease"]))
    job = node.swarm.s.cycle("c1").jobs[claim["job"]["cpv"]]
    if not edited:
        assert job.state == BUILT and job.artifact is not None
        return
    assert job.state == READY and job.artifact is None and job.failed_nodes == []
    reported = node.swarm.s.node("n1").tree_versions
    assert reported == ({P: "t2"} if quorum else {P: "t1"})   # reported on the way, if it could
    assert node.swarm.s.node("n1").consecutive_failures == 0
