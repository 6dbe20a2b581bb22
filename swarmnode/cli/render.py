"""Rich rendering of API results for humans (`--json` bypasses all of this)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from swarmnode.cli.client import ApiClient

console = Console()
STATE_STYLE = {"built": "green", "failed": "red", "blocked": "yellow", "leased": "cyan",
               "ready": "white", "planned": "dim"}
DONE = ("built", "failed", "blocked")


def initialised(report: Any) -> None:
    console.print(f"node [bold]{report.node_id}[/] ready: data in {report.data_dir}")
    if report.secret_file:
        console.print(f"  wrote a new cluster secret to {report.secret_file} — copy it to every "
                      "node of the swarm")
    console.print(f"  signing key {report.fingerprint}")
    console.print(f"  profiles: {', '.join(report.profiles)}")
    console.print(f"next: swarmnode serve --config {report.config}  (binhost at "
                  f"{report.url}/binhost/<profile>/, public key at {report.url}/api/v1/key)")


def cycle_started(result: dict[str, Any]) -> None:
    jobs, reused = result["jobs"], result["reused"]
    console.print(f"cycle [bold]{result['cycle_id']}[/] ({result['profile']}): "
                  f"{len(jobs)} to build, {len(reused)} reused from the release")
    for job in jobs[:20]:
        console.print(f"  [cyan]{job['cpv']}[/] [dim]{job['reason']}[/]")
    if len(jobs) > 20:
        console.print(f"  … and {len(jobs) - 20} more")


def wait_for_cycle(client: ApiClient, cycle_id: str, quiet: bool = False,
                   poll_s: float = 1.0) -> dict[str, Any]:
    """Poll the cycle until no job is planned, ready or leased; show a progress bar."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("building", total=None)
        while True:
            cycle = client.get(f"/api/v1/cycles/{cycle_id}")
            states = Counter(j["state"] for j in cycle["jobs"].values())
            done = sum(states[s] for s in DONE)
            building = [c for c, j in cycle["jobs"].items() if j["state"] == "leased"]
            desc = "building " + ", ".join(sorted(building)[:3]) if building else "waiting"
            bar.update(task, total=len(cycle["jobs"]), completed=done, description=desc)
            if done == len(cycle["jobs"]):
                break
            time.sleep(poll_s)
    if not quiet:
        parts = [f"[{STATE_STYLE[s]}]{states[s]} {s}[/]" for s in DONE if states[s]]
        console.print(f"cycle {cycle_id} finished: " + (", ".join(parts) or "nothing to build"))
        for cpv, job in sorted(cycle["jobs"].items()):
            if job["state"] == "failed":
                console.print(f"  [red]failed[/] {cpv}: {job.get('error') or ''} "
                              f"(swarmnode logs {cpv})")
    return cycle


def _copies(summary: dict[str, Any], indent: str) -> None:
    """Artifacts short of copies: being copied, or (none on an up node) lost for now."""
    short, gone = summary.get("under_replicated") or 0, summary.get("unavailable") or 0
    if short > gone:
        console.print(f"{indent}[yellow]{short - gone} artifacts below "
                      f"{summary.get('replica_target')} copies (replicating)[/]")
    if gone:
        console.print(f"{indent}[red]{gone} artifacts have no copy on an up node[/] (until "
                      "their node returns; an open cycle's are built again: docs/cluster.md)")


def _estimates(est: dict[str, int] | None) -> None:
    """How much the scheduler knows; a new swarm is told how to teach it."""
    if est is None:
        return
    if not est["packages"]:
        console.print("  [yellow]no build times known yet[/]: the first cycle guesses every "
                      "package small; `swarmnode history` teaches them from an emerge log")
        return
    told = f" ({est['from_history']} first from emerge logs)" if est["from_history"] else ""
    console.print(f"  build times known for {est['packages']} packages{told}")


def status(data: dict[str, Any]) -> None:
    node, cluster = data["node"], data["cluster"]
    console.print(f"node [bold]{node['id']}[/] {node['url']}  cluster {cluster['name']}  "
                  f"{cluster.get('role', '?')}, leader {cluster.get('leader') or '[red]none[/]'}")
    lag = cluster.get("leader_commit_index") or 0
    console.print(f"  state index {data['state']['applied_index']}"
                  + (f" (leader at {lag})" if lag and lag > data['state']['applied_index'] else "")
                  + ("" if cluster.get("has_quorum", True) else
                     "  [red]no quorum: reads may be stale, changes wait[/]"))
    summary = data.get("summary", {})
    _copies(summary, "  ")
    _estimates(summary.get("estimates"))
    table = Table("profile", "serving", "latest cycle", "jobs", box=None)
    for name, prof in data["profiles"].items():
        serving = prof["serving"]["release_id"] if prof["serving"] else "-"
        cycle = prof["cycle"]
        counts = ", ".join(f"[{STATE_STYLE.get(s, 'white')}]{n} {s}[/]"
                           for s, n in sorted((cycle or {}).get("counts", {}).items()) if n)
        table.add_row(name, serving, cycle["id"] if cycle else "-", counts or "-")
    console.print(table)
    for name, prof in data["profiles"].items():
        if prof.get("publish_error"):
            console.print(f"  [red]binhost {name} not updated:[/] {prof['publish_error']}")
    for build in node["building"]:
        console.print(f"  building [cyan]{build['cpv']}[/] on {build['cores']} cores "
                      f"(lease {build['lease']})")


def jobs(cycle: dict[str, Any]) -> None:
    console.print(f"cycle [bold]{cycle['id']}[/] ({cycle['profile']}), tree "
                  f"{cycle.get('tree_version') or '-'}: "
                  + ", ".join(f"{n} {s}" for s, n in sorted(cycle["counts"].items()) if n))
    table = Table("package", "state", "why", "node", "cores", "time", "note", box=None)
    for cpv, job in sorted(cycle["jobs"].items()):
        style = STATE_STYLE.get(job["state"], "white")
        note = job.get("error") or (f"blocked by {', '.join(job['blocked_by'])}"
                                    if job.get("blocked_by") else "")
        duration = f"{job['duration_s']:.0f}s" if job.get("duration_s") else ""
        table.add_row(cpv, f"[{style}]{job['state']}[/]", job.get("reason", ""),
                      job.get("node") or "", str(job.get("cores_used") or ""), duration,
                      note[:80])
    console.print(table)


def verify(report: dict[str, Any]) -> None:
    colour = "green" if report["safe"] else "red"
    console.print(f"{report['profile']} cycle {report['cycle_id']}: risk "
                  f"[bold {colour}]{report['score']}[/] / 100 "
                  f"({'safe to finalize' if report['safe'] else 'NOT safe to finalize'})")
    for reason in report["reasons"]:
        console.print(f"  - {reason}")


def finalized(result: dict[str, Any]) -> None:
    console.print(f"[green]published[/] release [bold]{result['release_id']}[/] for "
                  f"{result['profile']} (TIMESTAMP {result['timestamp']}, risk "
                  f"{result['risk']['score']})")
    if result.get("publish_error"):
        console.print(f"[red]this node's binhost still serves the previous release:[/] "
                      f"{result['publish_error']}")


def rolled_back(result: dict[str, Any]) -> None:
    console.print(f"{result['profile']} now serves release [bold]{result['release_id']}[/] "
                  f"(TIMESTAMP {result['timestamp']})")


def history(data: dict[str, Any]) -> None:
    hours = data["longest"]["wall_s"] / 3600
    console.print(f"read {data['builds']} builds of {data['packages']} packages from "
                  f"{data['log']} (built with -j{data['jobs']}; longest "
                  f"{data['longest']['package']}, {hours:.1f} h)")
    console.print(f"the swarm learned [bold]{data['added']}[/] new estimates; {data['known']} "
                  "packages it already knew keep their times")


def releases(data: dict[str, Any]) -> None:
    table = Table("", "release", "cycle", "packages", box=None)
    for rel in data["releases"]:
        mark = "[green]*[/]" if rel["id"] == data["production"] else ""
        table.add_row(mark, rel["id"], rel["cycle_id"], str(rel["packages"]))
    console.print(table)


def nodes(data: dict[str, Any]) -> None:
    sites = any(n.get("site") for n in data["nodes"])
    table = Table(box=None)
    # Narrow terminals wrap cells rather than cut them: ids and addresses are what you type.
    for name, width in (("node", 4), ("role", 9), ("address", 7), ("site", 4), ("cores", 5),
                        ("slots", 5), ("health", 6), ("tree", 8), ("via", 6)):
        if name != "site" or sites:
            table.add_column(name, min_width=width, overflow="fold")
    for n in data["nodes"]:
        health = ("[red]down[/]" if not n.get("up") else
                  f"[yellow]{n['breaker']}[/]" if n.get("breaker") not in (None, "ok") else
                  "[green]up[/]")
        versions = n.get("tree_versions", {})
        if len(set(versions.values())) == 1:  # the usual case: one tree for every profile
            tree = next(iter(versions.values()))[:12]
        else:
            tree = " ".join(f"{p}:{v[:8]}" for p, v in sorted(versions.items()))
        role = n["role"]
        if role == "leader":
            role = "[bold]leader[/]"
        row = [n.get("node_id") or "?", role, n["raft"]] + ([n.get("site") or "-"] if sites else [])
        busy = f"{len(n.get('leases', []))}/{n.get('slots') or '?'}"  # slots in use / slots
        table.add_row(*row, str(n.get("cores", "")), busy, health, tree[:8],
                      n.get("discovery", ""))
    console.print(table)
    voters = data.get("voters")
    if voters:
        console.print(f"{voters['count']} voters (a majority is {voters['majority']}; "
                      f"cluster.max_voters is {voters['wanted']}); the other nodes build "
                      "without voting")
    _copies(data, "")
    nearby = data.get("nearby") or []
    if nearby:
        console.print("seen nearby, not in this swarm:")
        near = Table("node", "cluster", "url", "status", "seen", box=None)
        for m in nearby:
            near.add_row(m["node_id"], m["cluster"], m["url"], m["status"],
                         f"{m['seen_s_ago']:.0f}s ago" + (" (said goodbye)" if m["gone"] else ""))
        console.print(near)


def synced(data: dict[str, Any]) -> None:
    console.print(f"sync {data['sync_id']}:")
    for n in data["nodes"]:
        if not n.get("node_id"):
            continue
        if n.get("sync_id") != data["sync_id"]:
            console.print(f"  {n['node_id']}: [yellow]not reported[/]"
                          + ("" if n.get("up") else " (down)"))
        elif n.get("sync_error"):
            console.print(f"  {n['node_id']}: [red]failed[/] {n['sync_error']}")
        else:
            tree = ", ".join(f"{p} at {v}" for p, v in sorted(n["tree_versions"].items()))
            console.print(f"  {n['node_id']}: [green]synced[/] {tree}")
