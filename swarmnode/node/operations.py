"""What users ask a node to do: start a cycle, verify, finalize, roll back, reset, read logs.

Each operation validates its input, turns it into state-machine commands and returns a plain
JSON-able dict. The API layer is only transport around these functions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from portage.dep import Atom, match_from_list
from portage.versions import cpv_getkey

from swarmnode.binhost import PackageRef
from swarmnode.config import MAX_LOG_JOBS, check_raft_address
from swarmnode.consensus.raft import NoQuorum
from swarmnode.errors import UserError
from swarmnode.node import decisions
from swarmnode.node.commands import command
from swarmnode.node.runtime import Node
from swarmnode.portage import atoms, history, index, planner
from swarmnode.state.records import (BLOCKED, FAILED, NONVOTER, REMOVED, UNFINISHED, VOTER,
                                     Artifact)
from swarmnode.state.risk import SAFE_BELOW, risk_score


def _ok(result: dict[str, Any], status: int = 409) -> dict[str, Any]:
    if not result.get("ok"):
        raise UserError(result.get("error", "refused"), status)
    return result


async def fresh(node: Node, profile_name: str | None, targets: list[str]) -> dict[str, Any]:
    """Plan a build cycle for a profile (incremental against its production release)."""
    profile = node.config.profile(profile_name)
    targets = atoms.validate_targets(targets or list(profile.targets))
    if "@world" in targets and not profile.world:
        raise UserError(f"@world of profile {profile.name} is empty: name packages "
                        f"(`swarmnode fresh --profile {profile.name} cat/pkg …`), or list them in "
                        "`world = [...]` in its config table or in a `world` file in its "
                        "portage_config")
    running = node.log.state.latest_cycle(profile.name)
    if running is not None and not running.finished and not running.closed:
        raise UserError(f"cycle {running.id} for {profile.name} is still running; wait for it, "
                        "or `swarmnode reset` it", 409)
    release_dir = node.binhost.current_dir(profile.name)
    workdir = node.paths.work / f"plan-{profile.name}"
    plan = await asyncio.to_thread(planner.plan, profile, targets, workdir, release_dir)
    reused = [a.to_dict() for a in _carried_over(node, profile.name, targets, plan)]
    await node.refresh_tree_versions(min_interval_s=0)  # this node can build what it planned
    cycle_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{profile.name}-{uuid.uuid4().hex[:4]}"
    result = _ok(await node.submit(command(
        "start_cycle", cycle_id=cycle_id, profile=profile.name, tree_version=plan.tree_version,
        targets=targets, jobs=[j.to_dict() for j in plan.jobs], reused=reused)))
    return {"cycle_id": cycle_id, "profile": profile.name, "targets": targets,
            "jobs": [j.to_dict() for j in plan.jobs], "reused": [a["cpv"] for a in reused],
            "tree_version": plan.tree_version, "result": result}


def _carried_over(node: Node, profile: str, targets: list[str],
                  plan: planner.Plan) -> list[Artifact]:
    """Packages of the production release that the new cycle's release keeps.

    A cycle over @world defines the whole release: what portage reuses from it (packages that
    left @world's closure drop out). A cycle over some atoms updates the release: it keeps every
    package except those the cycle rebuilds in the same slot.
    """
    prod = node.log.state.production(profile)
    release = node.log.state.release(prod.release_id) if prod is not None else None
    if release is None:
        return []
    keep = set(plan.reused)
    if "@world" not in targets:
        replaced = {(cpv_getkey(j.cpv), j.slot) for j in plan.jobs}
        keep |= {cpv for cpv, a in release.packages.items()
                 if (cpv_getkey(cpv), a.slot) not in replaced}
    return [a for cpv, a in sorted(release.packages.items()) if cpv in keep]


def cycle_view(node: Node, cycle_id: str) -> dict[str, Any]:
    cycle = node.log.state.cycle(cycle_id)
    if cycle is None:
        raise UserError(f"no cycle {cycle_id!r}; `swarmnode status` lists cycles", 404)
    view = {**cycle.to_dict(), "finished": cycle.finished, "counts": cycle.counts}
    for cpv, job in view["jobs"].items():  # where it is building, or was built last
        lease = node.log.state.lease(job["lease"]) if job["lease"] is not None else None
        job["node"] = lease.node_id if lease is not None else job["log_node"]
    return view


def _critical(profile_critical: tuple[str, ...], cpvs: list[str]) -> list[str]:
    hits = []
    for spec in profile_critical:
        hits += match_from_list(Atom(spec), cpvs)
    return sorted(set(hits))


async def verify(node: Node, profile_name: str | None) -> dict[str, Any]:
    """Risk score 0–100 of finalizing the profile's latest cycle now (under 15 is safe)."""
    profile = node.config.profile(profile_name)
    stale = ""
    try:
        await node.barrier(timeout=5.0)  # judge the current state, not a lagging replica
    except NoQuorum as exc:
        stale = f"this node has no quorum, the report may be stale ({exc.message})"
    cycle = node.log.state.latest_cycle(profile.name)
    if cycle is None:
        raise UserError(f"profile {profile.name} has no build cycle yet; run `swarmnode fresh`", 409)
    failed, blocked = cycle.cpvs_in(FAILED), cycle.cpvs_in(BLOCKED)
    pending = sorted(cpv for state in UNFINISHED for cpv in cycle.cpvs_in(state))
    artifacts = cycle.artifacts()
    refs = [PackageRef.of(a) for a in artifacts]
    await node.ensure_local(artifacts)  # built elsewhere: fetch, so any node can verify

    def check_release() -> tuple[list[str], list[str]]:
        """Reads package metadata from the store (file I/O: off the event loop)."""
        entries, missing = [], []
        for ref in refs:
            try:
                entries += node.binhost.entries([ref])
            except UserError:
                missing.append(ref.cpv)
        return index.unmet_runtime_deps(entries), missing

    unmet, missing = await asyncio.to_thread(check_release)
    critical = _critical(profile.critical, failed + blocked)
    score, reasons = risk_score(failed, blocked, unmet, critical)
    if missing:
        score = 100
        reasons.append(f"{len(missing)} artifacts missing from this node's store: "
                       + ", ".join(missing[:5]))
    if pending:
        reasons.insert(0, f"cycle still has {len(pending)} packages to build")
    if stale:
        reasons.insert(0, stale)
    return {"profile": profile.name, "cycle_id": cycle.id, "score": score,
            "safe": score < SAFE_BELOW and not pending and not stale, "reasons": reasons,
            "failed": failed, "blocked": blocked, "pending": pending, "unmet_runtime_deps": unmet,
            "critical_failed": critical, "packages": len(refs)}


async def finalize(node: Node, profile_name: str | None, force: bool) -> dict[str, Any]:
    """Record a release of the latest cycle and publish it on this node's binhost (every
    other node publishes it too, fetching what it lacks)."""
    await node.barrier()  # decide on the current state, not a lagging replica
    report = await verify(node, profile_name)
    profile = report["profile"]
    if report["pending"]:
        raise UserError(f"cycle {report['cycle_id']} still has {len(report['pending'])} packages "
                        "to build; wait for it (`swarmnode fresh --wait`)", 409)
    if not report["safe"] and not force:
        raise UserError(f"refusing to finalize {profile}: risk score {report['score']} "
                        f"(safe is under {SAFE_BELOW}): " + "; ".join(report["reasons"])
                        + ". Fix it, or finalize --force", 409)
    release_id = f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    result = _ok(await node.submit(command("finalize", release_id=release_id, profile=profile,
                                           force=force)))
    await node.reconcile_binhost()
    return {"release_id": release_id, "profile": profile, "risk": report,
            "timestamp": result["timestamp"], "result": result,
            "publish_error": node.publish_errors.get(profile)}


async def rollback(node: Node, profile_name: str | None, release_id: str | None) -> dict[str, Any]:
    profile = node.config.profile(profile_name)
    result = _ok(await node.submit(command("rollback", profile=profile.name,
                                           release_id=release_id)))
    await node.reconcile_binhost()
    return {"profile": profile.name, "release_id": result["release_id"],
            "previous": result["previous"], "timestamp": result["timestamp"],
            "publish_error": node.publish_errors.get(profile.name)}


async def reset(node: Node, profile_name: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if profile_name is not None:
        fields["profile"] = node.config.profile(profile_name).name
    return _ok(await node.submit(command("reset", **fields)))


async def learn_history(node: Node, packages: Any, jobs: Any, source: Any) -> dict[str, Any]:
    """Seed estimates of packages the swarm never built from wall seconds recorded elsewhere
    (an emerge log, built with ``jobs`` make jobs); packages it has built keep theirs."""
    if not isinstance(packages, dict) or not packages:
        raise UserError("history: 'packages' must be a non-empty object of category/package "
                        "to wall seconds")
    if len(packages) > history.BATCH:
        raise UserError(f"history: {len(packages)} packages in one request; at most "
                        f"{history.BATCH} (send them in batches)")
    if isinstance(jobs, bool) or not isinstance(jobs, int) \
            or not 1 <= jobs <= MAX_LOG_JOBS:
        raise UserError(f"history: 'jobs' (the make jobs the builds ran with) must be an "
                        f"integer in 1..{MAX_LOG_JOBS} (got {str(jobs)[:20]})")
    if not isinstance(source, str) or len(source) > 200:
        raise UserError("history: 'source' must be a short text (where the times come from)")
    walls: dict[str, float] = {}
    for key, wall in packages.items():
        atoms.validate_package_key(key)
        if isinstance(wall, bool) or not isinstance(wall, (int, float)) \
                or not 0 < wall <= history.MAX_BUILD_S:
            raise UserError(f"history: {key}: wall seconds must be a number in "
                            f"(0, {history.MAX_BUILD_S:g}] (got {str(wall)[:20]})")
        walls[key] = float(wall)
    result = _ok(await node.submit(command(
        "learn_history", durations=history.core_seconds(walls, jobs), source=source)))
    return {"added": result["added"], "known": result["known"], "source": source}


async def build_log(node: Node, profile_name: str | None, cpv: str,
                    local_only: bool = False) -> bytes:
    """The log of a package's build: live while it builds (on whichever node), else its
    latest attempt (fetched from the node that built it if this one has no copy)."""
    profile = node.config.profile(profile_name)
    cpv = atoms.validate_cpv(cpv)
    state = node.log.state
    job = state.find_job(profile.name, cpv)
    if job is None:
        raise UserError(f"{cpv} was not built in any cycle of {profile.name}", 404)
    lease = state.lease(job.lease) if job.lease is not None else None
    if lease is not None and lease.node_id == node.node_id:
        live = node.paths.builds / str(lease.fence) / "build.log"
        if live.is_file():
            return await asyncio.to_thread(live.read_bytes)
    elif lease is not None and not local_only:  # building elsewhere: ask that node
        urls = node.peer_urls([lease.node_id])
        if urls:
            text = await node.fetcher.get_bytes(
                f"{urls[0]}/api/v1/logs/{cpv}?profile={profile.name}&local=1")
            if text is not None:
                return text
    if not job.log_sha256:
        where = f" on {lease.node_id}" if lease is not None else ""
        raise UserError(f"{cpv} has no build log yet (state: {job.state}{where})", 404)
    if not local_only and job.log_node and not await asyncio.to_thread(node.store.has,
                                                                        job.log_sha256):
        item = decisions.Fetch(job.log_sha256, 0, f"log of {cpv}", (job.log_node,))
        if not await node.fetcher.fetch(item, node.peer_urls([job.log_node])):
            raise UserError(f"the log of {cpv} is on {job.log_node}, which does not answer; "
                            "try again when it is up", 503)
    return await asyncio.to_thread(node.store.read_bytes, job.log_sha256)


def latest_cycle_view(node: Node, profile_name: str | None) -> dict[str, Any]:
    profile = node.config.profile(profile_name)
    cycle = node.log.state.latest_cycle(profile.name)
    if cycle is None:
        raise UserError(f"profile {profile.name} has no build cycle yet; run `swarmnode fresh`",
                        404)
    return cycle_view(node, cycle.id)


def releases(node: Node, profile_name: str | None) -> dict[str, Any]:
    profile = node.config.profile(profile_name)
    state = node.log.state
    prod = state.production(profile.name)
    return {"profile": profile.name,
            "production": prod.release_id if prod else None,
            "releases": [{"id": r.id, "cycle_id": r.cycle_id, "created": r.created_ts,
                          "packages": len(r.packages)} for r in state.releases(profile.name)]}


async def request_sync(node: Node) -> dict[str, Any]:
    """Ask every node to sync its repositories (each reports its new tree version)."""
    sync_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    _ok(await node.submit(command("request_sync", sync_id=sync_id)))
    return {"sync_id": sync_id}


def nodes(node: Node) -> dict[str, Any]:
    """Every node: role (leader, voter, non-voter), addresses, site, cores, slots, leases,
    tree versions, health and how it was discovered; then machines seen nearby that are not
    in the swarm (another cluster, a refused secret, still joining)."""
    state = node.log.state
    members = node.log.members()
    leader = node.log.leader_address
    summary = state.summary()
    out = []
    known = set()
    for entry in summary["nodes"]:
        known.add(entry["raft"])
        if entry["role"] == REMOVED:
            role = "removed"
        elif entry["raft"] == leader:
            role = "leader"
        elif entry["raft"] in members:
            role = "voter" if entry["role"] != NONVOTER else "voter (being demoted)"
        else:
            role = {VOTER: "voter (being added)", NONVOTER: "non-voter"}.get(entry["role"],
                                                                            "removed")
        out.append({**entry, "role": role,
                    "connected": members.get(entry["raft"]) if entry["node_id"] != node.node_id
                    else True,
                    "breaker": state.node(entry["node_id"]).breaker(time.time())})  # type: ignore[union-attr]
    for address, connected in sorted(members.items()):
        if address not in known:  # a voter that has not registered (yet): show it anyway
            out.append({"node_id": None, "raft": address, "role": "voter (unregistered)",
                        "connected": connected, "up": connected})
    return {"nodes": out, "leader": node.log.leader_id, "sync": summary["sync"],
            "replica_target": summary["replica_target"],
            "under_replicated": summary["under_replicated"],
            "unavailable": summary["unavailable"],
            "voters": {"wanted": state.config["max_voters"], "count": len(members),
                       "majority": len(members) // 2 + 1},
            "nearby": node.lan.view({n.node_id for n in state.nodes() if n.role != REMOVED})}


async def change_membership(node: Node, action: str, target: str) -> dict[str, Any]:
    """`swarmnode nodes add|remove|promote|demote`: change who votes, through the log.

    ``add`` takes a Raft HOST:PORT (a statically configured node, started with the others in
    its cluster.peers). The others take a node id (or a voter's address): ``remove`` retires a
    machine for good, ``promote``/``demote`` move a node between voter and worker; the leader
    then changes pysyncobj's voter set to match.
    """
    if action not in ("add", "remove", "promote", "demote"):
        raise UserError(f"action must be add, remove, promote or demote, got {action!r}")
    members = node.log.members()
    if action == "add":
        address = check_raft_address(target, "address")
        if address in members:
            raise UserError(f"{address} is already a voter", 409)
        await node.log.change_membership("add", address)
        return {"action": action, "address": address, "members": sorted(node.log.members())}
    found = node.log.state.node(target) or next(
        (n for n in node.log.state.nodes() if n.raft and n.raft == target), None)
    if found is None:
        if action == "remove" and target in members:  # a voter that never registered
            if target == node.config.node.raft_address:
                raise UserError("a node cannot remove itself; ask another node", 409)
            await node.log.change_membership("remove", target)
            return {"action": action, "address": target, "members": sorted(node.log.members())}
        raise UserError(f"no node {target!r}: give a node id or a voter's Raft address "
                        "(`swarmnode nodes` lists them)", 404)
    if found.node_id == node.node_id and action == "remove":
        raise UserError("a node cannot remove itself; ask another node", 409)
    if action in ("remove", "demote") and found.raft and found.raft == node.log.leader_address:
        raise UserError(f"{found.node_id} is the leader: stop it (a new leader is elected) or "
                        f"ask again once another node leads", 409)
    role = {"remove": REMOVED, "promote": VOTER, "demote": NONVOTER}[action]
    result = _ok(await node.submit(command("set_role", node_id=found.node_id, role=role,
                                           reason=f"{action}d by an operator")))
    if not result["changed"]:
        raise UserError(f"{found.node_id} is already {'a ' if role != REMOVED else ''}"
                        f"{'non-voter' if role == NONVOTER else role}", 409)
    return {"action": action, "address": found.raft, "node_id": found.node_id,
            "members": sorted(node.log.members())}


def status(node: Node) -> dict[str, Any]:
    state = node.log.state
    cfg = node.config
    summary = state.summary()
    profiles = {}
    for name in cfg.profiles:
        prod = state.production(name)
        served = node.binhost.current(name)
        profiles[name] = {
            "production": {"release_id": prod.release_id, "timestamp": prod.timestamp}
            if prod else None,
            "serving": {"release_id": served[0], "timestamp": served[1]} if served else None,
            "publish_error": node.publish_errors.get(name),
            "cycle": summary["profiles"].get(name, {}).get("cycle"),
        }
    return {
        "node": {"id": cfg.node.node_id, "url": cfg.node.advertise_url, "cores": cfg.node.cores,
                 "uptime_s": round(time.time() - node.started, 1),
                 "building": [{"cpv": b.cpv, "cycle_id": b.cycle_id, "cores": b.cores,
                               "lease": b.fence} for b in node.worker.running.values()]},
        "cluster": {"name": cfg.cluster.name, "is_leader": node.log.is_leader,
                    "voter": node.log.is_voter, "raft": cfg.node.raft_address,
                    "voters": sorted(node.log.members()), **node.log.freshness()},
        "state": {"applied_index": node.log.applied_index, "digest": state.digest(),
                  "as_of": time.time()},
        "profiles": profiles,
        "summary": summary,
    }
