"""Scheduling policy: which job a node gets, how many cores, how estimates learn; risk score."""

from __future__ import annotations

from typing import Any

import pytest
from portage.versions import cpv_getkey

from swarmnode.state import SAFE_BELOW, SwarmState, risk_score
from swarmnode.state.scheduling import (DEFAULT_CORE_SECONDS, allocate_cores, critical_paths,
                                        package_key, topo_order)

P = "desktop"


class Swarm:
    """Minimal driver: unique rids, a fixed clock."""

    def __init__(self) -> None:
        self.s = SwarmState()
        self.n = 0
        self.ts = 500.0

    def ok(self, op: str, **fields: Any) -> dict:
        self.n += 1
        res = self.s.apply({"op": op, "rid": f"r{self.n}", "ts": self.ts, **fields})
        assert res["ok"], res
        return res

    def node(self, node_id: str, cores: int = 8, profiles: tuple[str, ...] = (P,)) -> None:
        self.ok("register_node", node_id=node_id, url="http://x", cores=cores,
                profiles=list(profiles), sweeper=False, tree_versions={})

    def cycle(self, cycle_id: str, jobs: dict[str, list[str]], profile: str = P) -> None:
        self.ok("start_cycle", cycle_id=cycle_id, profile=profile, tree_version="", targets=[],
                jobs=[{"cpv": c, "deps": d} for c, d in jobs.items()], reused=[])

    def claim(self, node_id: str = "n1", free: int = 8) -> dict:
        return self.ok("claim", node_id=node_id, free_cores=free, lease_ttl_s=60.0)

    def build(self, node_id: str, claim: dict, duration: float) -> None:
        self.ok("complete", node_id=node_id, fence=claim["lease"]["fence"],
                cycle_id=claim["job"]["cycle_id"], cpv=claim["job"]["cpv"], success=True,
                duration_s=duration, log_sha256="l",
                artifact={"sha256": "s" + claim["job"]["cpv"], "size": 1}, error="")


@pytest.mark.parametrize("cpv", [
    "dev-libs/openssl-3.0.13-r1", "x11-libs/gtk+-3.24.41", "dev-lang/python-3.12.3_p1",
    "app-misc/foo-bar-1.0_rc2_p3", "sys-libs/db-18.1.40-r1", "dev-qt/qt5-5.15.2",
    "media-libs/libvpx-1.14.1", "dev-util/foo-1a", "net-misc/x-2-r0",
])
def test_package_key_matches_portage(cpv: str) -> None:
    assert package_key(cpv) == cpv_getkey(cpv)


def test_critical_path_picks_head_of_the_long_chain_first() -> None:
    w = Swarm()
    w.node("n1")
    chain = {"z/head-1": [], "z/mid-1": ["z/head-1"], "z/tail-1": ["z/mid-1"]}
    leaves = {f"a/leaf{i}-1": [] for i in range(5)}  # sort before the chain by name
    w.cycle("c1", {**leaves, **chain})
    order = [w.claim()["job"]["cpv"] for _ in range(3)]
    assert order == ["z/head-1", "a/leaf0-1", "a/leaf1-1"]  # then ties break by cpv


def test_learned_duration_outranks_a_chain_of_unknowns() -> None:
    w = Swarm()
    w.node("n1")
    w.cycle("c1", {"www/browser-1": []})
    w.build("n1", w.claim(), duration=1000.0)        # 1 core for 1000 s = 1000 core-s
    assert w.s.estimate("www/browser-2") == 1000.0    # learned per cat/pn, any version
    w.cycle("c2", {"www/browser-2": [], "z/a-1": [], "z/b-1": ["z/a-1"], "z/c-1": ["z/b-1"]})
    first = w.claim()
    assert first["job"]["cpv"] == "www/browser-2" and first["job"]["est_core_s"] == 1000.0
    assert first["lease"]["cores"] == 8               # ceil(1000/120)=9, capped at free cores


def test_learning_mid_cycle_reranks_other_slots_of_the_package() -> None:
    w = Swarm()
    w.node("n1")
    w.cycle("c1", {"a/h-1": [], "a/t-1": ["a/h-1"], "z/big-1": [], "z/big-2": []})
    head, big1 = w.claim(), w.claim()
    assert (head["job"]["cpv"], big1["job"]["cpv"]) == ("a/h-1", "z/big-1")
    w.build("n1", head, duration=5.0)
    w.build("n1", big1, duration=1000.0)              # z/big-2 (another slot) now costs 1000
    clone = SwarmState.from_bytes(w.s.to_bytes())
    assert w.claim()["job"]["cpv"] == "z/big-2"        # not a/t-1, which wins ties by name
    res = clone.apply({"op": "claim", "rid": "c", "ts": w.ts, "node_id": "n1", "free_cores": 8,
                       "lease_ttl_s": 60.0})
    assert res["job"]["cpv"] == "z/big-2"


def test_estimate_is_an_ewma_of_core_seconds() -> None:
    w = Swarm()
    w.node("n1")
    assert w.s.estimate("a/new-1") == DEFAULT_CORE_SECONDS
    w.cycle("c1", {"a/p-1": []})
    c = w.claim(free=1)
    assert c["lease"]["cores"] == 1
    w.build("n1", c, duration=100.0)                 # 1 core × 100 s
    w.cycle("c2", {"a/p-2": []})
    c = w.claim(free=8)
    assert c["lease"]["cores"] == 1                  # ceil(100/120)
    w.build("n1", c, duration=300.0)                 # 1 core × 300 s
    assert w.s.estimate("a/p-3") == pytest.approx(200.0)
    w.cycle("c3", {"a/p-3": []})
    assert w.claim(free=8)["lease"]["cores"] == 2    # ceil(200/120)
    clone = SwarmState.from_bytes(w.s.to_bytes())
    assert clone.estimate("a/p-3") == pytest.approx(200.0)


@pytest.mark.parametrize("est,free,cores", [
    (60.0, 8, 1), (120.0, 8, 1), (121.0, 8, 2), (959.0, 8, 8), (5000.0, 8, 8),
    (5000.0, 3, 3), (0.0, 4, 1), (600.0, 1, 1),
])
def test_core_allocation(est: float, free: int, cores: int) -> None:
    assert allocate_cores(est, free) == cores


def test_claims_span_profiles_by_global_priority() -> None:
    w = Swarm()
    w.node("n1", profiles=(P, "server"))
    w.node("d", profiles=(P,))
    w.cycle("c1", {"d/one-1": []}, profile=P)
    w.cycle("c2", {"s/a-1": [], "s/b-1": ["s/a-1"]}, profile="server")
    assert w.claim("d")["job"]["cpv"] == "d/one-1"      # only what its profile serves
    assert w.claim("n1")["job"]["cpv"] == "s/a-1"


def test_critical_paths_and_topo_order() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    dependents = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    est = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 10.0}
    assert critical_paths(deps, dependents, est) == {"a": 16.0, "b": 15.0, "c": 12.0, "d": 10.0}
    assert topo_order(deps) == (["a", "b", "c", "d"], [])
    assert topo_order({"x": ["y"], "y": ["x"], "z": []}) == (["z"], ["x", "y"])


def test_risk_score() -> None:
    assert risk_score([], [], [], []) == (0, [])
    score, reasons = risk_score([], ["a/b-1", "a/c-1"], [], [])
    assert score == 10 and score < SAFE_BELOW and "a/b-1" in reasons[0]
    score, _ = risk_score(["a/x-1"], [], [], [])
    assert score == 20 and score >= SAFE_BELOW
    assert risk_score([], [], ["dev-libs/glib"], [])[0] == 15
    score, reasons = risk_score([], ["sys-libs/glibc-2.39"], [], ["sys-libs/glibc-2.39"])
    assert score == 50 and any("critical" in r for r in reasons)
    assert risk_score([f"a/p{i}-1" for i in range(9)], [], [], [])[0] == 100
    assert risk_score(["a/x-1", "a/x-1"], [], [], [])[0] == 20
