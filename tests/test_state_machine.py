"""SwarmState: the commands every node relies on, determinism, and invariants under random use."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import msgpack
import pytest

from swarmnode.state import (BLOCKED, BUILT, FAILED, LEASED, PLANNED, READY, SwarmState)

P = "desktop"


class Swarm:
    """Drives one SwarmState with unique rids and a settable clock."""

    def __init__(self, state: SwarmState | None = None) -> None:
        self.s = state or SwarmState()
        self.n = 0
        self.ts = 1000.0
        self.log: list[dict[str, Any]] = []

    def do(self, op: str, rid: str | None = None, ts: float | None = None, **fields: Any) -> dict:
        self.n += 1
        cmd = {"op": op, "rid": rid or f"{op}-{self.n}", "ts": self.ts if ts is None else ts,
               **fields}
        self.log.append(cmd)
        return self.s.apply(cmd)

    def ok(self, op: str, **kw: Any) -> dict:
        res = self.do(op, **kw)
        assert res["ok"], res
        return res

    def node(self, node_id: str, cores: int = 4, profiles: tuple[str, ...] = (P,),
             tree_versions: dict[str, str] | None = None, sweeper: bool = False,
             raft: str | None = None) -> dict:
        return self.ok("register_node", node_id=node_id, url=f"http://{node_id}:7000",
                       cores=cores, profiles=list(profiles), sweeper=sweeper,
                       tree_versions=tree_versions or {}, raft=raft)

    def cycle(self, cycle_id: str, jobs: dict[str, list[str]], profile: str = P,
              reused: list[dict] | None = None, tree_version: str = "") -> dict:
        return self.do("start_cycle", cycle_id=cycle_id, profile=profile,
                       tree_version=tree_version, targets=sorted(jobs)[-1:],
                       jobs=[{"cpv": c, "slot": "0", "subslot": "", "use": [], "repo": "gentoo",
                              "deps": d, "reason": "test"} for c, d in jobs.items()],
                       reused=reused or [])

    def claim(self, node_id: str, free: int = 4, ttl: float = 60.0) -> dict:
        return self.ok("claim", node_id=node_id, free_cores=free, lease_ttl_s=ttl)

    def finish(self, node_id: str, claim: dict, success: bool = True, duration: float = 10.0,
               **kw: Any) -> dict:
        job, lease = claim["job"], claim["lease"]
        return self.do("complete", node_id=node_id, fence=lease["fence"], cycle_id=job["cycle_id"],
                       cpv=job["cpv"], success=success, duration_s=duration,
                       log_sha256="log-" + job["cpv"].replace("/", "_"),
                       artifact={"sha256": "sha-" + job["cpv"], "size": 100} if success else None,
                       error="" if success else "compile error", **kw)

    def build(self, node_id: str) -> dict:
        """Claim and successfully build the next job on ``node_id``; returns the claim."""
        claim = self.claim(node_id)
        assert claim["job"] is not None, claim
        assert self.finish(node_id, claim)["ok"]
        return claim

    def job(self, cpv: str, profile: str = P):
        return self.s.find_job(profile, cpv)


def reused_art(cpv: str, build_id: int = 3, holders: tuple[str, ...] = ("n1",)) -> dict:
    return {"cpv": cpv, "sha256": "old-" + cpv, "size": 7, "build_id": build_id, "slot": "0",
            "subslot": "", "use": [], "repo": "gentoo", "holders": list(holders)}


CHAIN = {"a/x-1": [], "a/y-1": ["a/x-1"], "a/z-1": ["a/y-1"]}


# ---------------------------------------------------------------------------- lifecycle


def test_full_lifecycle_through_finalize() -> None:
    w = Swarm()
    w.node("n1")
    res = w.cycle("c1", CHAIN, reused=[reused_art("b/keep-1")])
    assert res["ok"] and res["ready"] == 1
    assert [j.state for j in (w.job("a/x-1"), w.job("a/y-1"))] == [READY, PLANNED]
    for cpv in ("a/x-1", "a/y-1", "a/z-1"):
        claim = w.claim("n1")
        assert claim["job"]["cpv"] == cpv and claim["job"]["profile"] == P
        w.ts += 5
        assert w.ok("heartbeat", node_id="n1", fence=claim["lease"]["fence"],
                    lease_ttl_s=60)["lease"]["expires_at"] == w.ts + 60
        done = w.finish("n1", claim)
        assert done["ok"] and done["build_id"] == 1
    cyc = w.s.cycle("c1")
    assert cyc.finished and cyc.built == 3 and not w.s.active_cycles()
    fin = w.ok("finalize", release_id="r1", profile=P, force=False)
    rel = w.s.release("r1")
    assert sorted(rel.packages) == ["a/x-1", "a/y-1", "a/z-1", "b/keep-1"]
    assert rel.packages["b/keep-1"].build_id == 3
    assert rel.packages["a/x-1"].holders == ["n1"]
    assert w.s.production(P).release_id == "r1"
    assert w.s.production(P).timestamp == fin["timestamp"] == int(w.ts)
    assert w.s.cycle("c1").closed and w.s.cycle("c1").release_id == "r1"
    summary = json.loads(json.dumps(w.s.summary()))
    assert summary["profiles"][P]["production"]["release_id"] == "r1"
    assert pickle.loads(pickle.dumps(w.s)).digest() == w.s.digest()  # Raft may pickle it
    # the next cycle of the same package gets the next build id, and so does a reused cpv
    w.ok("start_cycle", cycle_id="c2", profile=P, tree_version="", targets=[],
         jobs=[{"cpv": "a/x-1"}, {"cpv": "b/keep-1"}], reused=[])
    ids = {c["job"]["cpv"]: w.finish("n1", c)["build_id"] for c in (w.claim("n1"), w.claim("n1"))}
    assert ids == {"a/x-1": 2, "b/keep-1": 4}


def test_build_id_is_allocated_with_the_lease_and_never_reused() -> None:
    """The builder stamps the lease's BUILD_ID into the binpkg, so it is known at claim time;
    an expired lease's id is burnt, never handed out twice."""
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.cycle("c1", {"a/x-1": []})
    first = w.claim("n1", ttl=5)
    assert first["lease"]["build_id"] == 1
    w.ts += 10
    w.ok("expire")
    second = w.claim("n2")
    assert second["lease"]["build_id"] == 2
    assert w.finish("n1", first)["stale"]
    assert w.finish("n2", second)["build_id"] == 2
    assert w.job("a/x-1").artifact.build_id == 2


def test_empty_cycle_is_complete_and_finalizes() -> None:
    w = Swarm()
    w.node("n1")  # the reused package's holder: finalize publishes only stored bytes
    res = w.cycle("c1", {}, reused=[reused_art("b/keep-1")])
    assert res["ok"] and res["complete"]
    assert w.ok("finalize", release_id="r1", profile=P)["packages"] == 1


def test_start_cycle_refusals() -> None:
    w = Swarm()
    w.node("n1")
    assert "not a job of this cycle" in w.cycle("c0", {"a/x-1": ["a/nope-1"]})["error"]
    assert "dependency cycle among a/x-1, a/y-1" in w.cycle(
        "c0", {"a/x-1": ["a/y-1"], "a/y-1": ["a/x-1"]})["error"]
    assert "listed twice" in w.do("start_cycle", cycle_id="c0", profile=P,
                                  jobs=[{"cpv": "a/x-1"}, {"cpv": "a/x-1"}])["error"]
    assert w.cycle("c1", CHAIN)["ok"]
    err = w.cycle("c2", {"a/q-1": []})["error"]
    assert err == ("start_cycle: cycle c1 for desktop is still running; wait, or "
                   "`swarmnode reset`")
    assert w.cycle("o1", {"a/q-1": []}, profile="server")["ok"]  # other profiles are independent
    assert "already exists" in w.cycle("c1", {}, profile="other")["error"]


# ---------------------------------------------------------------------------- idempotency


def _idempotency_scenarios() -> list[tuple[str, Any]]:
    """(op, setup) pairs: setup(w) prepares a state and returns the command fields."""

    def base(w: Swarm) -> dict:
        w.node("n1")
        w.node("n2")
        w.cycle("c1", CHAIN)
        return {}

    def leased(w: Swarm) -> dict:
        base(w)
        return w.claim("n1")

    def built_cycle(w: Swarm) -> None:
        w.node("n1")
        w.cycle("c1", {"a/x-1": []})
        w.build("n1")

    def released(w: Swarm) -> None:
        built_cycle(w)
        w.ok("finalize", release_id="r1", profile=P)
        w.cycle("c2", {"a/x-2": []})
        w.build("n1")
        w.ok("finalize", release_id="r2", profile=P)

    def complete(w: Swarm) -> dict:
        c = leased(w)
        return {"node_id": "n1", "fence": c["lease"]["fence"], "cycle_id": "c1", "cpv": "a/x-1",
                "success": True, "duration_s": 3.0, "log_sha256": "l",
                "artifact": {"sha256": "s", "size": 1}, "error": ""}

    def failed_complete(w: Swarm) -> dict:
        return {**complete(w), "success": False, "artifact": None, "error": "boom"}

    def stale_complete(w: Swarm) -> dict:
        fields = complete(w)
        w.ok("expire", ts=w.ts + 1000)
        return fields

    def expire(w: Swarm) -> dict:
        leased(w)
        w.ts += 1000
        return {}

    def reset(w: Swarm) -> dict:
        leased(w)
        return {"profile": P}

    def artifact_stored(w: Swarm) -> dict:
        built_cycle(w)
        w.node("n2")
        return {"node_id": "n2", "sha256": "sha-a/x-1"}

    def node_down(w: Swarm) -> dict:
        leased(w)
        return {"up": ["n2"], "down": ["n1"]}

    def tree_report(w: Swarm) -> dict:
        w.node("n1")
        return {"node_id": "n1", "tree_versions": {P: "t7"}, "sync_id": "s1", "error": ""}

    return [
        ("register_node", lambda w: {"node_id": "n9", "url": "u", "cores": 2, "profiles": [P],
                                     "sweeper": True, "tree_versions": {}, "raft": "h:1"}),
        ("start_cycle", lambda w: {"cycle_id": "c9", "profile": P, "tree_version": "t",
                                   "targets": [], "jobs": [{"cpv": "a/x-1"}], "reused": []}),
        ("claim", lambda w: (base(w), {"node_id": "n1", "free_cores": 4,
                                       "lease_ttl_s": 30.0})[1]),
        ("heartbeat", lambda w: (lambda c: {"node_id": "n1", "fence": c["lease"]["fence"],
                                            "lease_ttl_s": 90.0})(leased(w))),
        ("complete", complete),
        ("complete", failed_complete),
        ("complete", stale_complete),
        ("artifact_stored", artifact_stored),
        ("expire", expire),
        ("reset", reset),
        ("configure", lambda w: {"breaker_threshold": 2, "keep_releases": 3}),
        ("finalize", lambda w: (built_cycle(w), {"release_id": "r1", "profile": P,
                                                 "force": False})[1]),
        ("rollback", lambda w: (released(w), {"profile": P})[1]),
        ("node_status", node_down),
        ("request_sync", lambda w: {"sync_id": "s1"}),
        ("tree_report", tree_report),
        ("admit_node", lambda w: {"node_id": "n7", "raft": "10.0.0.7:7701",
                                  "url": "http://10.0.0.7:7700", "cores": 8,
                                  "discovery": "mdns"}),
        ("set_role", lambda w: (w.ok("admit_node", node_id="n7", raft="h:7", url="http://h",
                                     cores=1, discovery="mdns"),
                                {"node_id": "n7", "role": "nonvoter", "reason": "test"})[1]),
    ]


@pytest.mark.parametrize("op,setup", _idempotency_scenarios(),
                         ids=[f"{op}-{i}" for i, (op, _) in enumerate(_idempotency_scenarios())])
def test_every_op_is_idempotent_on_rid(op: str, setup: Any) -> None:
    w = Swarm()
    fields = setup(w)
    before = w.s.digest()
    first = w.do(op, rid="retry-me", **fields)
    assert w.s.digest() != before, f"{op} should have changed the state: {first}"
    after = w.s.digest()
    w.ts += 1  # a retry arrives later, possibly with a different clock
    again = w.do(op, rid="retry-me", **fields)
    assert again == first
    assert w.s.digest() == after


def test_results_are_copies() -> None:
    w = Swarm()
    w.node("n1")
    w.cycle("c1", CHAIN)
    claim = w.do("claim", rid="x", node_id="n1", free_cores=4, lease_ttl_s=60)
    claim["job"]["use"].append("junk")
    claim["lease"]["expires_at"] = 0
    assert w.do("claim", rid="x", node_id="n1", free_cores=4, lease_ttl_s=60)["lease"][
        "expires_at"] == w.ts + 60
    assert "junk" not in w.do("claim", rid="x", node_id="n1", free_cores=4,
                              lease_ttl_s=60)["job"]["use"]
    assert w.s.lease(claim["lease"]["fence"]).expires_at == w.ts + 60


# ---------------------------------------------------------------------------- determinism


def _scripted(w: Swarm) -> None:
    for n in ("n1", "n2", "n3"):
        w.node(n, cores=8)
    w.cycle("c1", {"a/x-1": [], "a/y-1": ["a/x-1"], "b/q-1": [], "b/r-1": ["b/q-1", "a/x-1"]})
    c1, c2 = w.claim("n1"), w.claim("n2")
    w.ts += 10
    w.finish("n1", c1, duration=42.0)
    w.finish("n2", c2, success=False)


def test_same_commands_give_same_digest() -> None:
    a, b = Swarm(), Swarm()
    _scripted(a)
    for cmd in a.log:
        b.s.apply(dict(cmd))
    assert a.s.digest() == b.s.digest()
    assert a.s.to_bytes() == b.s.to_bytes()


def test_round_trip_mid_cycle_keeps_digest_and_behaviour() -> None:
    w = Swarm()
    _scripted(w)
    clone = Swarm(SwarmState.from_bytes(w.s.to_bytes()))
    clone.n, clone.ts = w.n, w.ts
    assert clone.s.digest() == w.s.digest()
    for sw in (w, clone):
        sw.results = [sw.claim("n3"), sw.claim("n1"), sw.do("expire", ts=sw.ts + 500),
                      sw.claim("n2", free=1)]
        sw.results.append(sw.finish("n2", sw.results[-1], duration=7.0))
    assert clone.results == w.results
    assert clone.s.digest() == w.s.digest()


# ---------------------------------------------------------------------------- leases


def test_no_two_live_leases_on_one_job() -> None:
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.cycle("c1", {"a/x-1": []})
    first = w.claim("n1")
    assert first["job"]["cpv"] == "a/x-1"
    second = w.claim("n2")
    assert second["job"] is None and "nothing ready" in second["reason"]
    assert len(w.s.leases) == 1 and w.job("a/x-1").state == LEASED


def test_stale_completion_after_expiry_is_rejected_and_counted() -> None:
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.cycle("c1", {"a/x-1": []})
    old = w.claim("n1", ttl=30)
    assert not w.s.needs_maintenance(w.ts + 30) and w.s.needs_maintenance(w.ts + 31)
    exp = w.ok("expire", ts=w.ts + 31)
    assert not w.s.needs_maintenance(w.ts + 31)
    assert exp["count"] == 1 and exp["expired"] == [["c1", "a/x-1", "n1", old["lease"]["fence"]]]
    assert w.job("a/x-1").state == READY and w.job("a/x-1").attempts == 1
    lost = w.do("heartbeat", node_id="n1", fence=old["lease"]["fence"], lease_ttl_s=30)
    assert lost["ok"] is False and lost["lost"] is True
    w.ts += 40
    new = w.claim("n2")
    assert new["lease"]["fence"] > old["lease"]["fence"]
    stale = w.finish("n1", old)
    assert stale == {"ok": False, "stale": True, "error": stale["error"]}
    assert w.s.counters["stale_completions"] == 1
    job = w.job("a/x-1")
    assert job.state == LEASED and job.lease == new["lease"]["fence"] and job.artifact is None
    assert job.log_node is None
    assert w.finish("n2", new)["ok"]
    # a completion for a lease that timed out but was not yet swept is stale too
    w.ok("start_cycle", cycle_id="c2", profile=P, jobs=[{"cpv": "a/y-1"}])
    late = w.claim("n1", ttl=10)
    w.ts += 11
    assert w.finish("n1", late)["stale"] is True
    assert w.s.counters["stale_completions"] == 2


def test_heartbeat_from_another_node_does_not_extend() -> None:
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.cycle("c1", {"a/x-1": []})
    claim = w.claim("n1", ttl=30)
    res = w.do("heartbeat", node_id="n2", fence=claim["lease"]["fence"], lease_ttl_s=300)
    assert res["lost"] is True
    assert w.s.lease(claim["lease"]["fence"]).expires_at == w.ts + 30


# ---------------------------------------------------------------------------- failures


def test_failure_moves_to_another_node_then_fails_and_blocks_transitively() -> None:
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.node(n)
    w.cycle("c1", {"a/x-1": [], "a/y-1": ["a/x-1"], "a/z-1": ["a/y-1"], "a/w-1": ["a/x-1"],
                   "b/ok-1": []})
    c = w.claim("n1")
    assert c["job"]["cpv"] == "a/x-1"  # head of the longest chain
    res = w.finish("n1", c, success=False)
    assert res["state"] == READY
    job = w.job("a/x-1")
    assert job.failed_nodes == ["n1"] and job.log_node == "n1" and job.log_sha256
    assert job.error == "compile error"
    again = w.claim("n1")
    assert again["job"]["cpv"] == "b/ok-1"  # n1 never gets a job it failed
    other = w.claim("n2")
    assert other["job"]["cpv"] == "a/x-1"
    res = w.finish("n2", other, success=False)
    assert res["state"] == FAILED and res["blocked"] == ["a/w-1", "a/y-1", "a/z-1"]
    for cpv in ("a/y-1", "a/z-1", "a/w-1"):
        assert w.job(cpv).state == BLOCKED and w.job(cpv).blocked_by == ["a/x-1"]
    assert w.job("a/x-1").failed_nodes == ["n1", "n2"]
    assert w.finish("n1", again)["ok"]
    assert w.s.cycle("c1").finished and not w.s.active_cycles()
    assert w.claim("n3")["job"] is None


def test_single_serving_node_fails_job_after_one_failure() -> None:
    w = Swarm()
    w.node("n1")
    w.node("other", profiles=("server",))
    w.cycle("c1", {"a/x-1": [], "a/y-1": ["a/x-1"]})
    res = w.finish("n1", w.claim("n1"), success=False)
    assert res["state"] == FAILED and res["blocked"] == ["a/y-1"]


def test_circuit_breaker_grounds_then_probation_allows_one_job() -> None:
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.ok("configure", breaker_threshold=2, breaker_cooldown_s=100.0, fail_nodes=3)
    w.cycle("c1", {f"a/p{i}-1": [] for i in range(6)})
    assert w.finish("n1", w.claim("n1"), success=False)["node_grounded"] is False
    res = w.finish("n1", w.claim("n1"), success=False)
    assert res["node_grounded"] is True and res["grounded_until"] == w.ts + 100
    assert "grounded until" in w.claim("n1")["reason"]
    w.ts += 99
    assert w.claim("n1")["job"] is None
    w.ts += 1  # grounded_until <= ts: probation, exactly one job
    probe = w.claim("n1")
    assert probe["job"] is not None
    assert "probation" in w.claim("n1")["reason"]
    assert w.s.node("n1").breaker(w.ts) == "probation"
    # failing on probation grounds it again at once
    assert w.finish("n1", probe, success=False)["node_grounded"] is True
    w.ts += 100
    assert w.s.needs_maintenance(w.ts)
    assert w.ok("expire")["probation"] == ["n1"]
    probe = w.claim("n1")
    assert w.finish("n1", probe)["ok"]
    node = w.s.node("n1")
    assert node.breaker(w.ts) == "ok" and node.consecutive_failures == 0
    assert w.claim("n1")["job"] is not None and w.claim("n1")["job"] is not None


def test_reset_keeps_built_and_clears_failures() -> None:
    w = Swarm()
    w.node("n1")
    w.ok("configure", breaker_threshold=1)
    w.cycle("c1", {"a/x-1": [], "a/y-1": ["a/x-1"], "a/z-1": ["a/y-1"], "b/b-1": []})
    w.build("n1")                                  # a/x-1 built
    inflight = w.claim("n1")                       # a/y-1 leased
    assert inflight["job"]["cpv"] == "a/y-1"
    w.ts += 1
    bad = w.claim("n1")                            # b/b-1 leased, then fails
    w.finish("n1", bad, success=False)
    assert w.job("b/b-1").state == FAILED and w.s.node("n1").breaker(w.ts) == "grounded"
    res = w.ok("reset", profile=P)
    assert res["requeued"] == 1 and res["unfailed"] == 1 and res["breakers_cleared"] == 1
    states = {c: w.job(c).state for c in ("a/x-1", "a/y-1", "a/z-1", "b/b-1")}
    assert states == {"a/x-1": BUILT, "a/y-1": READY, "a/z-1": PLANNED, "b/b-1": READY}
    assert w.job("b/b-1").failed_nodes == [] and w.job("a/x-1").artifact.build_id == 1
    assert w.s.leases == {}
    assert w.finish("n1", inflight)["stale"] is True   # the old builder must stop
    assert w.s.node("n1").breaker(w.ts) == "ok"


# ---------------------------------------------------------------------------- placement


def test_tree_version_and_profile_gate_claims() -> None:
    w = Swarm()
    w.node("old", tree_versions={P: "t1"})
    w.node("srv", profiles=("server",))
    w.node("new", tree_versions={P: "t2"})
    w.cycle("c1", {"a/x-1": []}, tree_version="t2")
    assert "can take" in w.claim("old")["reason"]
    assert w.claim("srv")["job"] is None
    assert w.claim("new")["job"]["cpv"] == "a/x-1"


def test_artifact_stored_adds_holder_everywhere() -> None:
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.ok("configure", replicas=1)  # finalize with n1's copy alone, then replicate
    w.cycle("c1", {"a/x-1": []})
    w.build("n1")
    w.ok("finalize", release_id="r1", profile=P)
    res = w.ok("artifact_stored", node_id="n2", sha256="sha-a/x-1")
    assert res["updated"] == 2
    assert w.job("a/x-1").artifact.holders == ["n1", "n2"]
    assert w.s.release("r1").packages["a/x-1"].holders == ["n1", "n2"]
    clone = SwarmState.from_bytes(w.s.to_bytes())
    assert clone.release("r1").packages["a/x-1"].holders == ["n1", "n2"]
    assert "no artifact" in w.do("artifact_stored", node_id="n2", sha256="nope")["error"]


# ---------------------------------------------------------------------------- releases


def test_finalize_refusals_and_force() -> None:
    w = Swarm()
    w.node("n1")
    assert "no cycle" in w.do("finalize", release_id="r1", profile=P)["error"]
    w.cycle("c1", {"a/x-1": [], "a/y-1": ["a/x-1"], "b/b-1": []})
    err = w.do("finalize", release_id="r1", profile=P)["error"]
    assert err == "finalize: cycle c1 still has 3 jobs to build"
    w.finish("n1", w.claim("n1"), success=False)    # a/x-1 fails, a/y-1 blocked
    w.build("n1")                                   # b/b-1
    err = w.do("finalize", release_id="r1", profile=P, force=False)["error"]
    assert "1 failed and 1 blocked" in err
    res = w.ok("finalize", release_id="r1", profile=P, force=True)
    assert res["forced"] and sorted(w.s.release("r1").packages) == ["b/b-1"]
    assert "already finalized" in w.do("finalize", release_id="r2", profile=P,
                                       force=True)["error"]
    assert "already exists" in w.do("finalize", release_id="r1", profile=P)["error"]


def _release(w: Swarm, n: int) -> dict:
    w.cycle(f"c{n}", {f"a/x-{n}": []})
    w.build("n1")
    return w.ok("finalize", release_id=f"r{n}", profile=P)


def test_timestamps_only_grow_across_finalize_and_rollbacks() -> None:
    w = Swarm()
    w.node("n1")
    stamps = [_release(w, n)["timestamp"] for n in (1, 2, 3)]  # all at the same ts
    assert stamps == [1000, 1001, 1002]
    back = w.ok("rollback", profile=P)
    assert back["release_id"] == "r2" and back["previous"] == "r3"
    back2 = w.ok("rollback", profile=P)
    assert back2["release_id"] == "r1" and back2["timestamp"] > back["timestamp"] > stamps[-1]
    assert "no release of desktop older than r1" in w.do("rollback", profile=P)["error"]
    fwd = w.ok("rollback", profile=P, release_id="r3", ts=5000.0)
    assert fwd["timestamp"] == 5000 and w.s.production(P).release_id == "r3"
    assert "unknown release" in w.do("rollback", profile=P, release_id="zz")["error"]
    w.ok("start_cycle", cycle_id="s1", profile="server", jobs=[])
    w.ok("finalize", release_id="srv1", profile="server")
    assert "belongs to server" in w.do("rollback", profile=P, release_id="srv1")["error"]


def test_release_pruning_never_prunes_production() -> None:
    w = Swarm()
    w.node("n1")
    w.ok("configure", keep_releases=3)
    for n in (1, 2, 3):
        assert _release(w, n)["pruned"] == []
    assert _release(w, 4)["pruned"] == ["r1"]
    w.ok("rollback", profile=P, release_id="r2")
    res = w.ok("configure", keep_releases=1)
    assert res["pruned"] == ["r3"]                   # r2 survives: it is production
    assert [r.id for r in w.s.releases(P)] == ["r4", "r2"]
    assert _release(w, 5)["pruned"] == ["r2", "r4"]
    assert [r.id for r in w.s.releases(P)] == ["r5"]
    assert w.s.release("r2") is None and w.s.production(P).release_id == "r5"
    assert [c for c in w.s.cycles] == ["c5"]  # cycles are bounded the same way


# ---------------------------------------------------------------------------- bad input


BAD_COMMANDS = [
    "not a dict",
    {"rid": "b", "ts": 1.0},
    {"op": "explode", "rid": "b", "ts": 1.0},
    {"op": "claim", "ts": 1.0, "node_id": "n1", "free_cores": 1, "lease_ttl_s": 5},
    {"op": "claim", "rid": "b", "node_id": "n1", "free_cores": 1, "lease_ttl_s": 5},
    {"op": "claim", "rid": "b", "ts": "noon", "node_id": "n1", "free_cores": 1, "lease_ttl_s": 5},
    {"op": "claim", "rid": "b", "ts": 1.0, "node_id": "n1", "free_cores": 0, "lease_ttl_s": 5},
    {"op": "claim", "rid": "b", "ts": 1.0, "node_id": "n1", "free_cores": True, "lease_ttl_s": 5},
    {"op": "claim", "rid": "b", "ts": 1.0, "node_id": "n1", "free_cores": 2, "lease_ttl_s": -1},
    {"op": "register_node", "rid": "b", "ts": 1.0, "node_id": "n", "url": "u", "cores": 0,
     "profiles": [P]},
    {"op": "register_node", "rid": "b", "ts": 1.0, "node_id": "n", "url": "u", "cores": 2,
     "profiles": P},
    {"op": "start_cycle", "rid": "b", "ts": 1.0, "cycle_id": "c", "profile": P,
     "jobs": [{"cpv": "nocategory-1"}]},
    {"op": "start_cycle", "rid": "b", "ts": 1.0, "cycle_id": "c", "profile": P,
     "jobs": [{"cpv": "a/b-1", "deps": "a/c-1"}]},
    {"op": "start_cycle", "rid": "b", "ts": 1.0, "cycle_id": "c", "profile": P, "jobs": [],
     "reused": [{"cpv": "a/b-1", "sha256": "s", "size": 1}]},
    {"op": "complete", "rid": "b", "ts": 1.0, "node_id": "n1", "fence": 1, "cycle_id": "c1",
     "cpv": "a/x-1", "success": True, "duration_s": 1.0, "artifact": None},
    {"op": "complete", "rid": "b", "ts": 1.0, "node_id": "n1", "fence": "1", "cycle_id": "c1",
     "cpv": "a/x-1", "success": False, "duration_s": 1.0},
    {"op": "heartbeat", "rid": "b", "ts": 1.0, "node_id": "n1", "fence": 1},
    {"op": "configure", "rid": "b", "ts": 1.0, "fail_nodes": 0},
    {"op": "finalize", "rid": "b", "ts": 1.0, "profile": P, "release_id": "r", "force": "yes"},
    {"op": "rollback", "rid": "b", "ts": 1.0, "profile": P},
    {"op": "artifact_stored", "rid": "b", "ts": 1.0, "node_id": "ghost", "sha256": "x"},
    {"op": "reset", "rid": "b", "ts": 1.0, "profile": "nosuchprofile"},
    {"op": "register_node", "rid": "b", "ts": 1.0, "node_id": "n", "url": "u", "cores": 2,
     "profiles": [P], "raft": 4321},
    {"op": "configure", "rid": "b", "ts": 1.0, "replicas": 0},
    {"op": "node_status", "rid": "b", "ts": 1.0, "down": ["ghost"]},
    {"op": "node_status", "rid": "b", "ts": 1.0, "up": ["n1", "ghost"]},
    {"op": "node_status", "rid": "b", "ts": 1.0, "up": ["n1"], "down": ["n1"]},
    {"op": "node_status", "rid": "b", "ts": 1.0, "down": "n1"},
    {"op": "request_sync", "rid": "b", "ts": 1.0},
    {"op": "request_sync", "rid": "b", "ts": 1.0, "sync_id": ""},
    {"op": "tree_report", "rid": "b", "ts": 1.0, "node_id": "ghost", "tree_versions": {}},
    {"op": "tree_report", "rid": "b", "ts": 1.0, "node_id": "n1", "tree_versions": {P: 2}},
    {"op": "tree_report", "rid": "b", "ts": 1.0, "node_id": "n1"},
    {"op": "tree_report", "rid": "b", "ts": 1.0, "node_id": "n1", "tree_versions": {},
     "error": ["x"]},
    {"op": "barrier", "rid": "b"},
    {"op": "barrier", "ts": 1.0},
]


@pytest.mark.parametrize("cmd", BAD_COMMANDS, ids=range(len(BAD_COMMANDS)))
def test_bad_input_is_an_error_and_leaves_digest_unchanged(cmd: Any) -> None:
    w = Swarm()
    w.node("n1")
    w.cycle("c1", CHAIN)
    w.claim("n1")
    before = w.s.digest()
    res = w.s.apply(cmd)
    assert res["ok"] is False and res["error"] and "internal error" not in res["error"]
    assert "\n" not in res["error"]
    assert w.s.digest() == before


def test_bad_field_message_names_the_field() -> None:
    res = SwarmState().apply({"op": "register_node", "rid": "r", "ts": 1.0, "node_id": "n",
                              "url": "u", "cores": "many", "profiles": [P]})
    assert res == {"ok": False,
                   "error": "register_node: field 'cores' must be an integer ≥ 1 (got 'many')"}


# ---------------------------------------------------------------------------- random


def _check_invariants(s: SwarmState) -> None:
    by_job: dict[tuple[str, str], int] = {}
    for fence, lease in s.leases.items():
        key = (lease.cycle_id, lease.cpv)
        assert key not in by_job, f"two live leases on {key}"
        by_job[key] = fence
        job = s.cycle(lease.cycle_id).jobs[lease.cpv]
        assert job.state == LEASED and job.lease == fence
        holder = s.node(lease.node_id)  # a node going down loses its live leases at once
        assert holder.up or lease.expires_at < holder.down_since, f"down node holds {fence}"
    seen_ids: set[tuple[str, int]] = set()
    for cyc in s.cycles.values():
        for cpv, job in cyc.jobs.items():
            assert cpv in cyc.cpvs_in(job.state)
            if job.state == LEASED:
                assert by_job.get((cyc.id, cpv)) == job.lease
            if job.state == READY:
                assert all(cyc.jobs[d].state == BUILT for d in job.deps)
            if job.state == BUILT:
                assert job.artifact is not None and job.artifact.cpv == cpv
                key = (cpv, job.artifact.build_id)
                assert key not in seen_ids, f"build id reused: {key}"
                seen_ids.add(key)
        assert sum(cyc.counts.values()) == len(cyc.jobs)


def _random_sequence(rng: random.Random) -> tuple[Swarm, list[dict], list[dict]]:
    w = Swarm()
    nodes = ["n1", "n2", "n3"][: rng.randint(1, 3)]
    profiles = ["desktop", "server"]
    claims: list[dict] = []
    cycles = 0
    results: list[dict] = []
    for n in nodes:  # a registered fleet, so most commands have something to act on
        results.append(w.node(n, cores=rng.randint(1, 8), profiles=tuple(profiles)))
    for _ in range(rng.randint(20, 60)):
        w.ts += rng.choice([0, 1, 2, 5, 20, 90])
        roll = rng.random()
        node = rng.choice(nodes) if rng.random() < 0.9 else "ghost"
        if roll < 0.08:
            res = w.do("register_node", node_id=rng.choice(nodes), url="u",
                       cores=rng.randint(1, 8), profiles=rng.sample(profiles, rng.randint(1, 2)),
                       sweeper=False, tree_versions={})
        elif roll < 0.16:
            cycles += 1
            n = rng.randint(0, 9)
            cpvs = [f"c/p{rng.randint(0, 9)}-1" for _ in range(n)]
            cpvs = sorted(set(cpvs))
            jobs = {c: [d for d in cpvs[:i] if rng.random() < 0.3] for i, c in enumerate(cpvs)}
            res = w.cycle(f"cy{cycles}", jobs, profile=rng.choice(profiles))
        elif roll < 0.40:
            res = w.do("claim", node_id=node, free_cores=rng.randint(1, 8),
                       lease_ttl_s=rng.choice([30.0, 120.0]))
            if res.get("job"):
                claims.append(res)
        elif roll < 0.62 and claims:
            c = claims.pop(rng.randrange(len(claims))) if rng.random() < 0.8 else claims[-1]
            res = w.finish(c["lease"]["node_id"] if rng.random() < 0.85 else node, c,
                           success=rng.random() < 0.7, duration=rng.uniform(1, 500))
        elif roll < 0.70 and claims:
            c = claims[-1]
            res = w.do("heartbeat", node_id=c["lease"]["node_id"], fence=c["lease"]["fence"],
                       lease_ttl_s=60.0)
        elif roll < 0.78:
            res = w.do("expire")
        elif roll < 0.82:
            res = w.do("reset", profile=rng.choice(profiles + [None]))
        elif roll < 0.88:
            res = w.do("finalize", release_id=f"rel{w.n}", profile=rng.choice(profiles),
                       force=rng.random() < 0.5)
        elif roll < 0.91:
            res = w.do("rollback", profile=rng.choice(profiles))
        elif roll < 0.93:
            res = w.do("configure", breaker_threshold=rng.randint(1, 4),
                       fail_nodes=rng.randint(1, 3), keep_releases=rng.randint(1, 3),
                       breaker_cooldown_s=rng.choice([0.0, 50.0]),
                       replicas=rng.randint(1, 3))
        elif roll < 0.96:
            down = rng.sample(nodes, rng.randint(0, len(nodes)))
            up = [n for n in nodes if n not in down and rng.random() < 0.7]
            if rng.random() < 0.1:
                up.append(rng.choice(["ghost", *down]))  # refused: unknown or both
            res = w.do("node_status", up=up, down=down)
        elif roll < 0.975 and w.log:
            old = rng.choice(w.log)       # a client retry of any earlier command
            stored = old["rid"] in w.s.applied
            before = w.s.digest()
            res = w.s.apply(dict(old))
            w.log.append(dict(old))
            if stored:
                assert w.s.digest() == before
        else:
            sha = f"sha-c/p{rng.randint(0, 9)}-1"
            res = w.do("artifact_stored", node_id=node, sha256=sha)
        results.append(res)
        assert "internal error" not in str(res.get("error", "")), res
        _check_invariants(w.s)
        # the bytes built from kept parts are the whole state's; the kept answer follows
        # every change of artifacts, holders, up nodes and target
        packed = w.s.to_bytes()
        assert packed == msgpack.packb(w.s.to_dict(), use_bin_type=True)
        fresh = SwarmState.from_bytes(packed)
        assert w.s.under_replicated() == fresh.under_replicated()
    return w, w.log, results


def test_random_command_sequences_keep_invariants() -> None:
    rng = random.Random(20240607)
    for _ in range(300):
        w, log, results = _random_sequence(rng)
        replica = SwarmState()
        replayed = [replica.apply(dict(cmd)) for cmd in log]
        assert replica.digest() == w.s.digest()
        assert replayed == results
        restored = SwarmState.from_bytes(w.s.to_bytes())
        assert restored.digest() == w.s.digest()
        _check_invariants(restored)


def test_referenced_objects_are_what_kept_releases_and_cycles_name() -> None:
    w = Swarm()
    w.node("n1")
    w.ok("configure", keep_releases=1)
    for i in (1, 2):
        w.cycle(f"c{i}", {f"a/x-{i}": []})
        w.build("n1")
        w.ok("finalize", release_id=f"r{i}", profile=P)
    refs = w.s.referenced_objects()
    assert "sha-a/x-2" in refs and "log-a_x-2" in refs
    assert "sha-a/x-1" not in refs and "log-a_x-1" not in refs  # r1 and c1 were pruned


# ---------------------------------------------------------------------------- node status


def test_node_going_down_loses_its_leases_at_once_and_its_late_result_is_stale() -> None:
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.node(n)
    w.cycle("c1", {"a/x-1": [], "b/y-1": []})
    lost, kept = w.claim("n1", ttl=600), w.claim("n2", ttl=600)
    assert (lost["job"]["cpv"], kept["job"]["cpv"]) == ("a/x-1", "b/y-1")
    w.ts += 3
    res = w.ok("node_status", up=["n2", "n3"], down=["n1"])
    fence = lost["lease"]["fence"]
    assert res == {"ok": True, "went_down": ["n1"], "came_up": [],
                   "revoked": [["c1", "a/x-1", "n1", fence]], "rebuild": []}
    job = w.job("a/x-1")
    assert job.state == READY and job.lease is None and job.attempts == 1
    assert w.s.lease(fence) is None and w.s.lease(kept["lease"]["fence"]) is not None
    assert w.s.counters["revoked_leases"] == 1
    node = w.s.node("n1")
    assert node.up is False and node.down_since == w.ts
    # the down node keeps talking: its heartbeat says lost, its claims are refused
    beat = w.do("heartbeat", node_id="n1", fence=fence, lease_ttl_s=60)
    assert beat["ok"] is False and beat["lost"] is True
    before = w.s.digest()
    refused = w.claim("n1")
    assert refused == {"ok": True, "job": None,
                       "reason": "node n1 is marked down; it claims again once the leader sees it"}
    assert w.s.digest() == before
    again = w.claim("n3")
    assert again["job"]["cpv"] == "a/x-1" and again["lease"]["fence"] > fence
    stale = w.finish("n1", lost)
    assert stale["ok"] is False and stale["stale"] is True
    assert w.s.counters["stale_completions"] == 1
    assert w.job("a/x-1").lease == again["lease"]["fence"] and w.job("a/x-1").artifact is None
    # saying it again changes nothing; coming back clears down_since
    before = w.s.digest()
    w.ts += 5
    assert w.ok("node_status", down=["n1"]) == {"ok": True, "went_down": [], "came_up": [],
                                                "revoked": [], "rebuild": []}
    assert w.s.digest() == before and w.s.node("n1").down_since == w.ts - 5
    assert w.ok("node_status", up=["n1"])["came_up"] == ["n1"]
    assert w.s.node("n1").up and w.s.node("n1").down_since is None
    assert "nothing ready" in w.claim("n1")["reason"]


def test_registering_marks_a_down_node_up() -> None:
    w = Swarm()
    w.node("n1")
    w.ok("node_status", down=["n1"])
    assert w.claim("n1")["job"] is None
    w.node("n1", raft="10.0.0.1:4321")
    node = w.s.node("n1")
    assert node.up and node.down_since is None and node.raft == "10.0.0.1:4321"
    w.cycle("c1", {"a/x-1": []})
    assert w.claim("n1")["job"]["cpv"] == "a/x-1"


def test_a_build_whose_every_copy_is_on_a_down_node_is_built_again() -> None:
    """n1 dies a moment after building a/x-1, before anyone copied it: its dependent must not
    wait for n1 to come back (it may never); a/x-1 is built again and the dependent's lease,
    whose builder could only wait for bytes nobody up has, is requeued."""
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.node(n)
    w.cycle("c1", {"a/x-1": [], "b/y-1": ["a/x-1"], "c/z-1": ["b/y-1"], "d/w-1": [],
                   "e/v-1": ["a/x-1"]})
    assert w.build("n1")["job"]["cpv"] == "a/x-1"
    waiting = w.claim("n2")                           # fetching a/x-1 from n1 …
    assert waiting["job"]["cpv"] == "b/y-1"
    assert w.build("n3")["job"]["cpv"] == "d/w-1"     # kept: n3 stays up
    assert w.job("e/v-1").state == READY
    w.ts += 3
    res = w.ok("node_status", up=["n2", "n3"], down=["n1"])
    assert res["rebuild"] == [["c1", "a/x-1", ["b/y-1"]]]
    assert w.s.counters["lost_builds"] == 1
    x = w.job("a/x-1")
    assert x.state == READY and x.artifact is None
    assert [w.job(c).state for c in ("b/y-1", "c/z-1", "e/v-1")] == [PLANNED] * 3
    assert w.job("d/w-1").state == BUILT
    assert w.s.under_replicated() == [{"sha256": "sha-d/w-1", "size": 100, "cpv": "d/w-1",
                                       "holders": ["n3"], "missing": 1}]
    beat = w.do("heartbeat", node_id="n2", fence=waiting["lease"]["fence"], lease_ttl_s=60)
    assert beat["ok"] is False and beat["lost"] is True
    assert w.finish("n2", waiting)["stale"] is True
    # built again elsewhere; the dependents follow; n1 coming back changes nothing
    again = w.build("n2")
    assert again["job"]["cpv"] == "a/x-1" and again["lease"]["build_id"] == 2
    assert w.job("a/x-1").artifact.holders == ["n2"]
    assert {w.job("b/y-1").state, w.job("e/v-1").state} == {READY}
    before = w.s.digest()
    res = w.ok("node_status", up=["n1"])
    assert res["rebuild"] == [] and w.job("a/x-1").artifact.holders == ["n2"]
    assert w.s.cycle("c1").counts[BUILT] == 2 and w.s.digest() != before


def test_only_builds_no_up_node_holds_are_built_again() -> None:
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.node(n)
    # z/base-1 sorts after its dependent: both lost, the dependent must wait for it again
    w.cycle("c1", {"z/base-1": [], "a/top-1": ["z/base-1"], "m/kept-1": [], "q/next-1": ["a/top-1"]})
    for _ in range(3):
        w.build("n1")
    w.ok("artifact_stored", node_id="n2", sha256="sha-m/kept-1")
    res = w.ok("node_status", down=["n1"])
    assert [r[1] for r in res["rebuild"]] == ["a/top-1", "z/base-1"]
    assert [w.job(c).state for c in ("z/base-1", "a/top-1", "m/kept-1", "q/next-1")] == \
        [READY, PLANNED, BUILT, PLANNED]
    assert w.job("m/kept-1").artifact.holders == ["n1", "n2"]
    assert w.claim("n2")["job"]["cpv"] == "z/base-1"
    # another node going down with nothing lost reopens nothing
    assert w.ok("node_status", down=["n3"])["rebuild"] == []


def test_a_rebuilt_job_is_ranked_alike_on_a_replica_restored_from_a_snapshot() -> None:
    """Found by the simulator (seed 121): a replica that kept a built job's stale estimate in
    its cached paths ranked the job differently, once it was to be built again, from one
    restored from a snapshot — the same claim gave two replicas two different jobs."""
    a = Swarm()
    for n in ("n1", "n2"):
        a.node(n)
    a.cycle("c1", {"a/x-1": [], "c/z-1": ["a/x-1"],
                   "b/y-1": [], "g/l-1": ["b/y-1"], "h/l-1": ["g/l-1"], "i/l-1": ["h/l-1"]})
    first, second = a.claim("n1"), a.claim("n2")
    assert (first["job"]["cpv"], second["job"]["cpv"]) == ("b/y-1", "a/x-1")
    a.finish("n2", second, duration=5000.0)          # a/x is far longer than guessed
    a.finish("n1", first)
    b = Swarm(SwarmState.from_bytes(a.s.to_bytes()))
    b.ts, b.n = a.ts, a.n
    for w in (a, b):
        assert w.ok("node_status", rid="down", down=["n2"])["rebuild"] == [["c1", "a/x-1", []]]
        assert w.claim("n1")["job"]["cpv"] == "a/x-1"  # its chain is the longest now
    assert a.s.digest() == b.s.digest()


def test_a_lost_build_nothing_waits_for_is_rebuilt_only_after_lost_after_s() -> None:
    """A rebooting node's copies come back with it: a lost build no job still needs (here:
    the cycle is finished) is built again only once its node has been down lost_after_s —
    and an older unfinalized cycle is never reopened (it would block the next cycle)."""
    w = Swarm()
    for n in ("n1", "n2"):
        w.node(n)
    w.cycle("c1", {"a/x-1": []})
    w.build("n1")
    w.cycle("c2", {"b/y-1": []})                      # c1 finished, never finalized
    w.build("n1")
    assert w.s.cycle("c2").finished
    down_at = w.ts
    assert w.ok("node_status", down=["n1"])["rebuild"] == []
    assert w.s.summary()["unavailable"] == 2          # c1's a/x-1 and c2's b/y-1
    err = w.do("finalize", release_id="r1", profile=P)["error"]
    assert err == ("finalize: 1 package is stored only on nodes that are down (b/y-1 on n1); "
                   "start one of those nodes again (a package this cycle built is also built "
                   "again once every node holding it has been down cluster.lost_after_s, 600 s)")
    w.ts = down_at + 599
    assert not w.s.needs_maintenance(w.ts)
    w.ts = down_at + 600
    assert w.s.needs_maintenance(w.ts)
    assert w.ok("expire")["rebuild"] == [["c2", "b/y-1", []]]
    assert not w.s.needs_maintenance(w.ts)
    assert w.s.cycle("c1").jobs["a/x-1"].state == BUILT
    assert w.job("b/y-1").state == READY
    err = w.do("finalize", release_id="r1", profile=P)["error"]
    assert err == "finalize: cycle c2 still has 1 jobs to build"
    w.build("n2")
    assert w.ok("finalize", release_id="r1", profile=P)["packages"] == 1
    w.ok("configure", lost_after_s=30.0)
    assert w.s.config["lost_after_s"] == 30.0


def test_a_job_waits_for_a_lost_build_it_installs_through_a_built_dependency() -> None:
    """w needs m, m needs x (a build installs every dependency, transitively). x's copies are
    all on down nodes while m's copy survives elsewhere: w must wait for x to be built again
    — it becomes ready when x is, though x is not its direct dependency."""
    s = Swarm()
    for n in ("n1", "n2", "n3"):
        s.node(n)
    s.cycle("c1", {"d/x-1": [], "d/m-1": ["d/x-1"], "d/w-1": ["d/m-1"], "a/v-1": ["d/m-1"]})
    s.build("n1")                                     # x on n1
    s.build("n2")                                     # m on n2 (which fetched x: a holder)
    s.ok("artifact_stored", node_id="n2", sha256="sha-d/x-1")
    s.ok("artifact_stored", node_id="n3", sha256="sha-d/m-1")
    leased = s.claim("n3")
    assert leased["job"]["cpv"] == "a/v-1" and s.job("d/w-1").state == READY
    res = s.ok("node_status", down=["n1", "n2"])
    assert res["rebuild"] == [["c1", "d/x-1", ["a/v-1"]]]
    assert [s.job(c).state for c in ("d/x-1", "d/m-1", "d/w-1", "a/v-1")] == \
        [READY, BUILT, PLANNED, PLANNED]
    assert s.s.cycle("c1").reopened and s.s.lease(leased["lease"]["fence"]) is None
    s.ok("node_status", up=["n2"])                    # n2 is back: nothing is undone
    assert s.job("d/x-1").state == READY
    assert s.build("n3")["job"]["cpv"] == "d/x-1"
    assert [s.job(c).state for c in ("d/w-1", "a/v-1")] == [READY, READY]


def test_reset_rebuilds_a_lost_build_a_retried_job_needs() -> None:
    """x is lost while the only job needing it is blocked (by y's failure): nothing waits for
    x then; after reset, w waits for it again, so x is built again at once."""
    s = Swarm()
    for n in ("n1", "n2", "n3"):
        s.node(n)
    s.cycle("c1", {"d/x-1": [], "d/y-1": [], "d/w-1": ["d/x-1", "d/y-1"]})
    claims = {c["job"]["cpv"]: c for c in (s.claim("n1"), s.claim("n2"))}
    s.finish("n1", claims["d/x-1"])
    s.finish("n2", claims["d/y-1"], success=False)
    s.finish("n3", s.claim("n3"), success=False)
    assert [s.job(c).state for c in ("d/x-1", "d/y-1", "d/w-1")] == [BUILT, FAILED, BLOCKED]
    assert s.ok("node_status", down=["n1"])["rebuild"] == []
    res = s.ok("reset")
    assert res["rebuilt"] == 1 and res["unfailed"] == 1 and res["unblocked"] == 1
    assert [s.job(c).state for c in ("d/x-1", "d/y-1", "d/w-1")] == [READY, READY, PLANNED]


def test_reset_keeps_a_job_waiting_for_a_lost_build_it_installs() -> None:
    s = Swarm()
    for n in ("n1", "n2", "n3"):
        s.node(n)
    s.cycle("c1", {"d/x-1": [], "d/m-1": ["d/x-1"], "d/w-1": ["d/m-1"]})
    s.build("n1")
    s.build("n2")
    s.ok("artifact_stored", node_id="n3", sha256="sha-d/m-1")
    s.ok("node_status", down=["n1", "n2"])
    for node in ("n3", "n1"):                         # x now fails on two nodes: w blocked
        s.ok("node_status", up=[node])
        assert s.finish(node, s.claim(node), success=False)["ok"]
    assert [s.job(c).state for c in ("d/x-1", "d/m-1", "d/w-1")] == [FAILED, BUILT, BLOCKED]
    s.ok("reset")
    assert [s.job(c).state for c in ("d/x-1", "d/m-1", "d/w-1")] == [READY, BUILT, PLANNED]


# ---------------------------------------------------------------------------- durability


def test_under_replicated_tracks_live_holders_with_two_replicas_on_three_nodes() -> None:
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.node(n)
    w.cycle("c1", {"a/x-1": []})
    w.build("n1")
    art = w.job("a/x-1").artifact
    assert w.s.replica_target() == 2
    assert w.s.live_holders(art) == ["n1"] and not w.s.durable(art)
    assert w.s.under_replicated() == [{"sha256": "sha-a/x-1", "size": 100, "cpv": "a/x-1",
                                       "holders": ["n1"], "missing": 1}]
    summary = w.s.summary()
    assert summary["under_replicated"] == 1 and summary["replica_target"] == 2
    w.ok("artifact_stored", node_id="n2", sha256="sha-a/x-1")
    assert w.s.durable(art) and w.s.under_replicated() == []
    # a holder going down makes it under-replicated again; a copy on n3 fixes that
    w.ok("node_status", down=["n2"])
    assert w.s.replica_target() == 2 and art.holders == ["n1", "n2"]
    assert w.s.under_replicated() == [{"sha256": "sha-a/x-1", "size": 100, "cpv": "a/x-1",
                                       "holders": ["n1"], "missing": 1}]
    w.ok("artifact_stored", node_id="n3", sha256="sha-a/x-1")
    assert w.s.live_holders(art) == ["n1", "n3"] and w.s.under_replicated() == []
    # with one node up the target shrinks to what the swarm can hold
    w.ok("node_status", up=["n2"], down=["n1", "n3"])
    assert w.s.replica_target() == 1 and w.s.live_holders(art) == ["n2"]
    assert w.s.durable(art)
    w.ok("node_status", up=["n1", "n3"])
    w.ok("configure", replicas=3)
    assert w.s.replica_target() == 3 and w.s.durable(art)
    assert w.s.summary()["under_replicated"] == 0


def test_under_replicated_lists_each_sha_once_across_cycles_and_releases() -> None:
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.cycle("c1", {"a/x-1": []}, reused=[reused_art("b/old-1", holders=("n1", "n2")),
                                         reused_art("c/few-1", holders=("n2",))])
    w.build("n1")
    w.ok("artifact_stored", node_id="n2", sha256="sha-a/x-1")
    w.ok("configure", replicas=1)
    w.ok("finalize", release_id="r1", profile=P)     # each sha is now in c1 and in r1
    w.ok("configure", replicas=2)
    assert [(e["cpv"], e["holders"], e["missing"]) for e in w.s.under_replicated()] == [
        ("c/few-1", ["n2"], 1)]
    w.ok("node_status", down=["n2"])                 # target 1: c/few-1 has no live copy
    assert [(e["cpv"], e["holders"], e["missing"]) for e in w.s.under_replicated()] == [
        ("c/few-1", [], 1)]
    w.node("n3")                                     # target 2 with n1 and n3 up
    entries = w.s.under_replicated()
    assert [e["sha256"] for e in entries] == ["old-b/old-1", "old-c/few-1", "sha-a/x-1"]
    assert [e["holders"] for e in entries] == [["n1"], [], ["n1"]]
    assert [e["missing"] for e in entries] == [1, 2, 1]
    assert entries[1] == {"sha256": "old-c/few-1", "size": 7, "cpv": "c/few-1",
                          "holders": [], "missing": 2}


def test_finalize_waits_until_every_package_is_durable() -> None:
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.node(n)
    w.cycle("c1", {"a/x-1": [], "b/y-1": []}, reused=[reused_art("c/old-1", holders=("n1", "n3"))])
    w.build("n1")
    w.build("n1")
    before = w.s.digest()
    for force in (False, True):  # force overrides failed jobs, never missing copies
        err = w.do("finalize", release_id="r1", profile=P, force=force)["error"]
        assert err == ("finalize: 2 packages are not yet stored on 2 nodes (a/x-1, b/y-1); "
                       "replication catches up within seconds — try again")
    assert w.s.digest() == before
    w.ok("artifact_stored", node_id="n2", sha256="sha-a/x-1")
    err = w.do("finalize", release_id="r1", profile=P)["error"]
    assert err.startswith("finalize: 1 package is not yet stored on 2 nodes (b/y-1);")
    w.ok("artifact_stored", node_id="n3", sha256="sha-b/y-1")
    res = w.ok("finalize", release_id="r1", profile=P)
    assert res["packages"] == 3 and w.s.production(P).release_id == "r1"
    assert w.s.release("r1").packages["b/y-1"].holders == ["n1", "n3"]


def test_finalize_tells_copies_on_their_way_from_bytes_only_down_nodes_hold() -> None:
    """Retrying helps the first kind only: the refusal says which is which, and where."""
    w = Swarm()
    for n in ("n1", "n2", "n3", "n4"):
        w.node(n)
    w.cycle("c1", {"a/x-1": []}, reused=[reused_art("c/old-1", holders=("n2", "n3"))])
    w.build("n1")
    w.ok("node_status", down=["n2", "n3"])
    before = w.s.digest()
    err = w.do("finalize", release_id="r1", profile=P)["error"]
    assert err == ("finalize: 1 package is not yet stored on 2 nodes (a/x-1); replication "
                   "catches up within seconds — try again; 1 package is stored only on nodes "
                   "that are down (c/old-1 on n2, n3); start one of those nodes again (a "
                   "package this cycle built is also built again once every node holding it "
                   "has been down cluster.lost_after_s, 600 s)")
    assert w.s.digest() == before
    w.ok("node_status", up=["n2"])                  # target 2 again: both need a copy
    err = w.do("finalize", release_id="r1", profile=P)["error"]
    assert err == ("finalize: 2 packages are not yet stored on 2 nodes (a/x-1, c/old-1); "
                   "replication catches up within seconds — try again")
    w.ok("artifact_stored", node_id="n2", sha256="sha-a/x-1")
    w.ok("artifact_stored", node_id="n1", sha256="old-c/old-1")
    assert w.ok("finalize", release_id="r1", profile=P)["packages"] == 2


def test_finalize_refusal_names_at_most_five_packages() -> None:
    w = Swarm()
    w.node("n1")
    w.node("n2")
    w.cycle("c1", {f"a/p{i}-1": [] for i in range(7)})
    for _ in range(7):
        w.build("n1")
    err = w.do("finalize", release_id="r1", profile=P)["error"]
    assert err == ("finalize: 7 packages are not yet stored on 2 nodes (a/p0-1, a/p1-1, a/p2-1, "
                   "a/p3-1, a/p4-1, …); replication catches up within seconds — try again")


def test_single_node_swarm_finalizes_at_once() -> None:
    w = Swarm()
    w.node("n1")
    w.cycle("c1", {"a/x-1": []})
    w.build("n1")
    assert w.s.replica_target() == 1 and w.s.under_replicated() == []
    assert w.ok("finalize", release_id="r1", profile=P)["packages"] == 1


# ---------------------------------------------------------------------------- sweepers


def test_sweeper_takes_retries_first_then_the_critical_path_like_any_node() -> None:
    w = Swarm()
    w.node("n1")
    w.node("sw", profiles=(P, "server"), sweeper=True)
    w.node("n3", profiles=("server",))
    w.cycle("c0", {"w/long-1": []})
    w.finish("n1", w.claim("n1"), duration=200.0)    # 1 core: w/long costs 200 core-s
    w.cycle("s1", {"m/flaky-1": []}, profile="server")
    assert w.finish("n3", w.claim("n3"), success=False)["state"] == READY  # a retry now
    chain = {"z/a-1": [], "z/b-1": ["z/a-1"], "z/c-1": ["z/b-1"], "z/d-1": ["z/c-1"]}
    w.cycle("c1", {**chain, "w/long-2": [], "a/short-1": []})
    # same state, two kinds of node: the normal one takes the 240 s chain head
    twin = Swarm(SwarmState.from_bytes(w.s.to_bytes()))
    twin.ts = w.ts
    assert twin.claim("n1")["job"]["cpv"] == "z/a-1"
    # the sweeper: the retry first (its path is 60 s), then the longest path like any node —
    # not the longest build: a sweeper that took those put critical builds on its few cores
    assert [w.claim("sw")["job"]["cpv"] for _ in range(3)] == ["m/flaky-1", "z/a-1",
                                                               "w/long-2"]
    assert w.claim("n1")["job"]["cpv"] == "a/short-1"


def test_sweeper_ranks_a_job_whose_lease_expired_as_a_retry() -> None:
    w = Swarm()
    w.node("n1")
    w.node("sw", sweeper=True)
    w.cycle("c0", {"w/long-1": []})
    w.finish("n1", w.claim("n1"), duration=200.0)
    w.cycle("c1", {"a/short-1": [], "w/long-2": []})
    assert w.claim("n1", ttl=600)["job"]["cpv"] == "w/long-2"
    assert w.claim("n1", ttl=5)["job"]["cpv"] == "a/short-1"
    w.ts += 10
    w.ok("expire")                                # a/short-1 lost its lease: attempts 1
    w.ok("reset", profile=P)                      # w/long-2 back to ready, attempts 0
    assert (w.job("a/short-1").attempts, w.job("w/long-2").attempts) == (1, 0)
    assert w.job("a/short-1").failed_nodes == []
    assert w.claim("sw")["job"]["cpv"] == "a/short-1"
    assert w.claim("sw")["job"]["cpv"] == "w/long-2"


# ---------------------------------------------------------------------------- tree versions


def test_claims_of_a_pinned_cycle_need_exactly_its_tree_version() -> None:
    w = Swarm()
    for n in ("old", "new", "silent"):
        w.node(n)
    w.ok("tree_report", node_id="old", tree_versions={P: "V1"})
    w.ok("tree_report", node_id="new", tree_versions={P: "V2", "server": "V1"})
    w.cycle("c1", {"a/x-1": [], "a/y-1": []}, tree_version="V2")
    before = w.s.digest()
    assert w.claim("old")["reason"] == (
        "no ready job node old can take: its portage tree for desktop is at V1, the cycle is "
        "pinned to V2; run `swarmnode sync`")
    assert w.claim("silent")["reason"] == (
        "no ready job node silent can take: its portage tree for desktop has not been "
        "reported, the cycle is pinned to V2; run `swarmnode sync`")
    assert w.s.digest() == before
    assert w.claim("new")["job"]["cpv"] == "a/x-1"
    w.ok("tree_report", node_id="old", tree_versions={P: "V2"}, sync_id="s1")
    assert w.claim("old")["job"]["cpv"] == "a/y-1"


def test_an_unpinned_cycle_takes_any_tree() -> None:
    w = Swarm()
    w.node("silent")
    w.cycle("c1", {"a/x-1": []})
    assert w.claim("silent")["job"]["cpv"] == "a/x-1"


def test_request_sync_tree_report_and_barrier() -> None:
    w = Swarm()
    w.node("n1", raft="n1.lan:7001")
    res = w.ok("request_sync", sync_id="s1")
    assert res == {"ok": True, "sync": {"id": "s1", "ts": w.ts}, "new": True}
    before = w.s.digest()
    w.ts += 5
    again = w.ok("request_sync", sync_id="s1")        # a second request for the same sync
    assert again["new"] is False and again["sync"] == {"id": "s1", "ts": w.ts - 5}
    assert w.s.digest() == before
    w.ok("tree_report", node_id="n1", tree_versions={P: "V1"}, sync_id="s1",
         error="emerge --sync: rsync timed out")
    node = w.s.node("n1")
    assert (node.tree_versions, node.sync_id, node.sync_error) == (
        {P: "V1"}, "s1", "emerge --sync: rsync timed out")
    w.ok("tree_report", node_id="n1", tree_versions={P: "V2"})  # sync_id/error default ""
    assert (w.s.node("n1").sync_id, w.s.node("n1").sync_error) == ("", "")
    summary = json.loads(json.dumps(w.s.summary()))
    assert summary["sync"] == {"id": "s1", "ts": w.ts - 5}
    entry = summary["nodes"][0]
    assert {k: entry[k] for k in ("up", "raft", "down_since", "sync_id", "sync_error",
                                  "tree_versions")} == {
        "up": True, "raft": "n1.lan:7001", "down_since": None, "sync_id": "", "sync_error": "",
        "tree_versions": {P: "V2"}}
    clone = SwarmState.from_bytes(w.s.to_bytes())
    assert clone.sync == w.s.sync and clone.node("n1") == w.s.node("n1")
    before, applied = w.s.digest(), len(w.s.applied)
    assert w.do("barrier", rid="b1") == {"ok": True}
    assert w.do("barrier", rid="b1") == {"ok": True}
    assert w.s.digest() == before and len(w.s.applied) == applied


def test_a_snapshot_of_another_format_is_refused() -> None:
    raw = SwarmState().to_dict()
    raw["version"] = 1
    with pytest.raises(ValueError, match="unsupported swarm state format 1"):
        SwarmState.from_bytes(msgpack.packb(raw, use_bin_type=True))


# ---------------------------------------------------------------------------- determinism (2)


def _swarm_script(w: Swarm) -> None:
    for n in ("n1", "n2", "n3"):
        w.node(n, raft=f"{n}:7001", sweeper=n == "n3")
    w.ok("request_sync", sync_id="s1")
    for n in ("n1", "n2", "n3"):
        w.ok("tree_report", node_id=n, tree_versions={P: "V1"}, sync_id="s1")
    w.cycle("c1", {"a/x-1": [], "a/y-1": ["a/x-1"], "b/q-1": [], "b/r-1": []}, tree_version="V1")
    c1, c2, c3 = w.claim("n1"), w.claim("n2"), w.claim("n3")
    w.ts += 7
    w.ok("node_status", down=["n2"])
    w.finish("n1", c1, duration=30.0)
    w.finish("n2", c2)                                  # stale: revoked
    w.finish("n3", c3, duration=90.0)
    w.ok("artifact_stored", node_id="n3", sha256=f"sha-{c1['job']['cpv']}")
    w.ok("node_status", up=["n2"])
    w.do("barrier")


def test_same_swarm_commands_give_same_digest_and_survive_a_snapshot() -> None:
    a, b = Swarm(), Swarm()
    _swarm_script(a)
    assert a.s.counters["revoked_leases"] == 1 and a.s.counters["stale_completions"] == 1
    for cmd in a.log:
        b.s.apply(dict(cmd))
    assert a.s.digest() == b.s.digest()
    restored = SwarmState.from_bytes(a.s.to_bytes())
    assert restored.digest() == a.s.digest()
    assert restored.under_replicated() == a.s.under_replicated() != []
    assert restored.summary() == a.s.summary()


def test_the_first_signing_key_offered_becomes_the_swarms() -> None:
    sw = Swarm()
    first = sw.ok("set_signing_key", fingerprint="AAA", public_key="pub-a", secret="enc-a")
    assert first["accepted"] and first["fingerprint"] == "AAA"
    digest = sw.s.digest()
    second = sw.ok("set_signing_key", fingerprint="BBB", public_key="pub-b", secret="enc-b")
    assert not second["accepted"]
    assert (second["fingerprint"], second["secret"]) == ("AAA", "enc-a")  # adopt this one
    assert sw.s.digest() == digest
    assert SwarmState.from_bytes(sw.s.to_bytes()).signing["fingerprint"] == "AAA"


def test_a_build_that_could_not_run_is_requeued_without_failing_the_package() -> None:
    sw = Swarm()
    sw.node("n1")
    assert sw.cycle("c1", {"app-misc/a-1": []})["ok"]
    claim = sw.claim("n1")
    res = sw.finish("n1", claim, success=False, not_run=True)
    assert res["ok"] and res["requeued"] and res["state"] == READY
    job = sw.s.cycle("c1").jobs["app-misc/a-1"]
    assert job.failed_nodes == [] and job.state == READY and job.lease is None
    assert sw.s.node("n1").consecutive_failures == 1  # the node's breaker still counts it
    again = sw.claim("n1")
    bad = sw.finish("n1", again, success=True, not_run=True)
    assert not bad["ok"] and "cannot both succeed" in bad["error"]


def test_a_build_whose_tree_changed_is_requeued_without_counting_against_anyone() -> None:
    sw = Swarm()
    sw.node("n1", tree_versions={P: "t1"})
    assert sw.cycle("c1", {"app-misc/a-1": []}, tree_version="t1")["ok"]
    claim = sw.claim("n1")
    res = sw.finish("n1", claim, success=False, tree_changed=True)
    assert res["ok"] and res["requeued"] and not res["node_grounded"]
    job = sw.s.cycle("c1").jobs["app-misc/a-1"]
    assert job.state == READY and job.failed_nodes == [] and job.artifact is None
    assert sw.s.node("n1").consecutive_failures == 0      # an edited tree is not a bad node
    assert sw.s.counters["builds_tree_changed"] == 1
    again = sw.claim("n1")
    bad = sw.finish("n1", again, success=True, tree_changed=True)
    assert not bad["ok"] and "cannot both succeed" in bad["error"]


def admit(w: Swarm, node_id: str, raft: str | None = None, source: str = "mdns") -> dict:
    return w.ok("admit_node", node_id=node_id, raft=raft or f"10.0.0.{node_id[1:]}:7701",
                url=f"http://{node_id}:7700", cores=4, discovery=source)


def test_admission_fills_max_voters_then_admits_workers_in_log_order() -> None:
    w = Swarm()
    w.ok("configure", max_voters=3)
    roles = [admit(w, f"n{i}")["role"] for i in range(1, 6)]
    assert roles == ["voter", "voter", "voter", "nonvoter", "nonvoter"]
    assert [n.node_id for n in w.s.voters()] == ["n1", "n2", "n3"]
    again = admit(w, "n4")  # a re-admitted node keeps its role
    assert again["role"] == "nonvoter" and again["voters"] == [f"10.0.0.{i}:7701" for i in (1, 2, 3)]
    assert w.s.node("n4").discovery == "mdns"


def test_admission_refuses_an_address_another_node_owns_and_bad_sources() -> None:
    w = Swarm()
    admit(w, "n1", raft="10.0.0.1:7701")
    res = w.do("admit_node", node_id="n2", raft="10.0.0.1:7701", url="http://n2", cores=1,
               discovery="mdns")
    assert not res["ok"] and "already belongs to node n1" in res["error"]
    res = w.do("admit_node", node_id="n2", raft="h:2", url="http://n2", cores=1,
               discovery="carrier-pigeon")
    assert not res["ok"] and "'discovery' must be one of" in res["error"]


def test_set_role_keeps_the_voter_bound_and_a_removed_node_can_be_admitted_again() -> None:
    w = Swarm()
    w.ok("configure", max_voters=2)
    for i in (1, 2, 3):
        admit(w, f"n{i}")
    before = w.s.digest()
    res = w.do("set_role", node_id="n3", role="voter", reason="operator")
    assert not res["ok"] and "already has 2 voters" in res["error"] and w.s.digest() == before
    w.ok("set_role", node_id="n2", role="nonvoter", reason="operator")
    w.ok("set_role", node_id="n3", role="voter", reason="operator")
    assert [n.node_id for n in w.s.voters()] == ["n1", "n3"]
    w.ok("set_role", node_id="n1", role="removed", reason="retired")
    assert admit(w, "n1")["role"] == "voter"  # it proved the secret again: a free seat
    assert not w.do("set_role", node_id="nx", role="voter")["ok"]
    assert not w.do("set_role", node_id="n1", role="king")["ok"]


def test_a_registering_static_node_gets_its_role_once() -> None:
    w = Swarm()
    w.ok("register_node", node_id="s1", url="u", cores=2, profiles=[P], raft="h:1", voter=True)
    w.ok("register_node", node_id="s2", url="u", cores=2, profiles=[P], raft="h:2", voter=False,
         slots=3, site="colo")
    assert (w.s.node("s1").role, w.s.node("s2").role) == ("voter", "nonvoter")
    assert (w.s.node("s2").slots, w.s.node("s2").site) == (3, "colo")
    w.ok("set_role", node_id="s2", role="voter", reason="operator")
    w.ok("register_node", node_id="s2", url="u", cores=2, profiles=[P], raft="h:2", voter=False)
    assert w.s.node("s2").role == "voter"  # the swarm's decision stands over a restart


def test_idle_nodes_take_ready_jobs_rather_than_wait_behind_a_first_build() -> None:
    """A build not ready yet is only booked ahead behind builds with learned estimates: behind
    a package never built, when it is ready is a guess (60 core-s; it may take hours), and the
    node holding the booking would keep off every ready job that overlaps it meanwhile."""
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.ok("register_node", node_id=n, url=f"http://{n}:7000", cores=2, profiles=[P],
             sweeper=False, tree_versions={}, raft=None, slots=1)
    took = {"a/user-1": 5000.0, "a/busy-1": 600.0, "a/busy-2": 600.0}
    w.cycle("c0", {cpv: [] for cpv in took})  # built before; a/gate is new
    for _ in took:
        claim = w.claim("n1", free=2)
        w.ts += 1
        assert w.finish("n1", claim, duration=took[claim["job"]["cpv"]])["ok"]
    w.cycle("c1", {"a/gate-1": [], "a/user-1": ["a/gate-1"], "a/busy-1": [], "a/busy-2": []})
    assert w.claim("n3", free=2)["job"]["cpv"] == "a/gate-1"
    w.ts += 5
    taken = {n: w.claim(n, free=2) for n in ("n1", "n2")}
    assert sorted((c["job"] or {}).get("cpv", c.get("reason")) for c in taken.values()) \
        == ["a/busy-1", "a/busy-2"], taken


def test_equal_idle_nodes_agree_where_a_build_not_ready_yet_goes() -> None:
    """With learned estimates too: a long build waiting behind a running one is booked on the
    same node in every claim. With ties to the asking node, two equal idle nodes each held it
    on themselves, sent the ready builds (which would have overlapped it) to the other, and
    neither started anything until the running build ended."""
    w = Swarm()
    for n in ("n1", "n2", "n3"):
        w.ok("register_node", node_id=n, url=f"http://{n}:7000", cores=2, profiles=[P],
             sweeper=False, tree_versions={}, raft=None, slots=1)
    took = {"a/gate-1": 100.0, "a/user-1": 5000.0, "a/busy-1": 600.0, "a/busy-2": 600.0}
    w.cycle("c0", {cpv: [] for cpv in took})  # the swarm has built them all once before
    for _ in took:
        claim = w.claim("n1", free=2)
        w.ts += 1
        assert w.finish("n1", claim, duration=took[claim["job"]["cpv"]])["ok"]
    assert sorted(w.s.durations) == ["a/busy", "a/gate", "a/user"]
    w.cycle("c1", {"a/gate-1": [], "a/user-1": ["a/gate-1"], "a/busy-1": [], "a/busy-2": []})
    assert w.claim("n1", free=2)["job"]["cpv"] == "a/gate-1"
    w.ts += 5
    taken = {n: w.claim(n, free=2) for n in ("n2", "n3")}
    assert sorted((c["job"] or {}).get("cpv", c.get("reason")) for c in taken.values()) \
        == ["a/busy-1", "a/busy-2"], taken
