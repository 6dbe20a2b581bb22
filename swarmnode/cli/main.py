"""The `swarmnode` command: one CLI that talks to any node (typer + rich)."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from swarmnode.cli import render
from swarmnode.cli.client import ApiClient
from swarmnode.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build Gentoo binary packages across a swarm of machines.")

DEFAULT_URL = "http://127.0.0.1:7700"
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p",
                                                   help="Profile (default: the first one).")]


@dataclass
class Ctx:
    node: str
    secret: str | None

    @property
    def client(self) -> ApiClient:
        return ApiClient(self.node, self.secret)


def _ctx(ctx: typer.Context) -> Ctx:
    return ctx.obj  # type: ignore[no-any-return]


@app.callback()
def _global(
    ctx: typer.Context,
    node: Annotated[Optional[str], typer.Option("--node", envvar="SWARMNODE_URL",
                                                help=f"Node URL (default {DEFAULT_URL}).")] = None,
    secret: Annotated[Optional[str], typer.Option("--secret", envvar="SWARMNODE_SECRET",
                                                  help="Cluster secret for mutating commands.",
                                                  show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", envvar="SWARMNODE_CONFIG",
                                                   help="Read node URL and secret from this "
                                                        "config file.")] = None,
) -> None:
    if config is not None and ctx.invoked_subcommand != "serve":
        from swarmnode.config import load_config

        cfg = load_config(config)
        node = node or cfg.node.advertise_url
        secret = secret or cfg.cluster.secret
    ctx.obj = Ctx(node or DEFAULT_URL, secret)


def _emit(data: Any, as_json: bool, show: Any = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    elif show is not None:
        show(data)


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="SWARMNODE_CONFIG",
                                         help="The node's TOML config.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run this machine's node: state, builder, binhost and API."""
    from swarmnode.api.serve import serve as run
    from swarmnode.config import load_config

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(load_config(config))


@app.command()
def init(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="SWARMNODE_CONFIG",
                                         help="The node's TOML config.")],
    as_json: JsonOpt = False,
) -> None:
    """Prepare this node: cluster secret file (if missing), data dir, signing key."""
    from dataclasses import asdict

    from swarmnode.node.init import init_node

    report = init_node(config)
    _emit({k: str(v) if isinstance(v, Path) else v for k, v in asdict(report).items()},
          as_json, lambda _: render.initialised(report))


@app.command()
def fresh(
    ctx: typer.Context,
    targets: Annotated[Optional[list[str]], typer.Argument(help="Atoms or sets (default: "
                                                                 "the profile's targets).")] = None,
    profile: ProfileOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the cycle ends.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Plan a build cycle (only what changed since the production release) and start it."""
    c = _ctx(ctx).client
    result = c.post("/api/v1/cycles", {"profile": profile, "targets": targets or []})
    if not as_json:
        render.cycle_started(result)
    if wait:
        cycle = render.wait_for_cycle(c, result["cycle_id"], quiet=as_json)
        result["final"] = cycle
    if as_json:
        _emit(result, True)
    if wait and any(j["state"] in ("failed", "blocked") for j in result["final"]["jobs"].values()):
        raise typer.Exit(3)


@app.command()
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """What the swarm is doing: cycles, builds, releases."""
    _emit(_ctx(ctx).client.get("/api/v1/status"), as_json, render.status)


@app.command()
def verify(ctx: typer.Context, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Risk score (0-100) of finalizing now; under 15 is safe. Exit code 1 when unsafe."""
    report = _ctx(ctx).client.get("/api/v1/verify", profile=profile)
    _emit(report, as_json, render.verify)
    if not report["safe"]:
        raise typer.Exit(1)


@app.command()
def finalize(ctx: typer.Context, profile: ProfileOpt = None,
             force: Annotated[bool, typer.Option("--force", help="Publish even if verify "
                                                                 "fails.")] = False,
             as_json: JsonOpt = False) -> None:
    """Publish the latest cycle as a release on every node's binhost."""
    result = _ctx(ctx).client.post("/api/v1/finalize", {"profile": profile, "force": force})
    _emit(result, as_json, render.finalized)


@app.command()
def rollback(ctx: typer.Context,
             release: Annotated[Optional[str], typer.Argument(help="Release id (default: the "
                                                                   "one before).")] = None,
             profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Serve an older release again (with a new TIMESTAMP so clients notice)."""
    result = _ctx(ctx).client.post("/api/v1/rollback", {"profile": profile, "release": release})
    _emit(result, as_json, render.rolled_back)


@app.command()
def reset(ctx: typer.Context, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Return in-flight and failed jobs to the queue; built packages are kept."""
    result = _ctx(ctx).client.post("/api/v1/reset", {"profile": profile})
    _emit(result, as_json, lambda r: render.console.print("[green]reset done[/]"))


@app.command()
def history(ctx: typer.Context,
            emerge_log: Annotated[Path, typer.Option(
                "--emerge-log", help="A Gentoo host's emerge log.")] = Path("/var/log/emerge.log"),
            make_jobs: Annotated[Optional[int], typer.Option(
                "--jobs", "-j", help="The make jobs (MAKEOPTS -jN) the logged builds ran with "
                                     "(default: this machine's cores).")] = None,
            as_json: JsonOpt = False) -> None:
    """Teach the swarm build times from an emerge log, before its first cycle.

    Packages the swarm already knows (from its own builds or an earlier log) keep their times.
    """
    import socket

    from swarmnode.config import MAX_LOG_JOBS
    from swarmnode.portage import history as hist

    jobs_n = make_jobs if make_jobs is not None else (os.cpu_count() or 1)
    if not 1 <= jobs_n <= MAX_LOG_JOBS:
        raise UserError(f"--jobs must be within 1..{MAX_LOG_JOBS} (got {jobs_n})")
    builds = hist.read_log(emerge_log)
    walls = hist.wall_seconds(builds)
    source = f"{emerge_log} on {socket.gethostname()}"[:200]
    client = _ctx(ctx).client
    added = known = 0
    for batch in hist.batches(walls):
        result = client.post("/api/v1/history",
                             {"packages": batch, "jobs": jobs_n, "source": source})
        added, known = added + result["added"], known + result["known"]
    longest = max(walls, key=lambda k: (walls[k], k))
    summary = {"log": str(emerge_log), "builds": len(builds), "packages": len(walls),
               "jobs": jobs_n, "added": added, "known": known,
               "longest": {"package": longest, "wall_s": walls[longest]}}
    _emit(summary, as_json, render.history)


@app.command()
def jobs(ctx: typer.Context, cycle: Annotated[Optional[str], typer.Argument(
             help="Cycle id (default: the profile's latest).")] = None,
         profile: ProfileOpt = None,
         state: Annotated[Optional[str], typer.Option(
             "--state", help="Only jobs in this state (planned, ready, leased, built, failed, "
                             "blocked).")] = None,
         as_json: JsonOpt = False) -> None:
    """The jobs of a cycle: state, why it is built, where, how long, errors."""
    data = _ctx(ctx).client.get(f"/api/v1/cycles/{cycle or 'latest'}", profile=profile)
    if state:
        data["jobs"] = {c: j for c, j in data["jobs"].items() if j["state"] == state}
    _emit(data, as_json, render.jobs)


@app.command()
def releases(ctx: typer.Context, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """List a profile's releases; the production one is marked."""
    _emit(_ctx(ctx).client.get("/api/v1/releases", profile=profile), as_json, render.releases)


@app.command()
def logs(ctx: typer.Context, cpv: Annotated[str, typer.Argument(help="e.g. app-misc/foo-1.0")],
         profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Print the build log of a package: live while it builds here, else its latest attempt."""
    text = _ctx(ctx).client.get_text(f"/api/v1/logs/{cpv}", profile=profile)
    if as_json:
        _emit({"cpv": cpv, "log": text}, True)
    else:
        sys.stdout.write(text)


@app.command()
def key(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the swarm's public signing key (clients import it to verify packages)."""
    text = _ctx(ctx).client.get_text("/api/v1/key")
    if as_json:
        _emit({"key": text}, True)
    else:
        sys.stdout.write(text)


@app.command()
def sync(ctx: typer.Context,
         wait: Annotated[bool, typer.Option("--wait", help="Wait until every node reported.")] = True,
         timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 1800.0,
         as_json: JsonOpt = False) -> None:
    """Make every node sync its repositories (a real emaint sync); shows each tree version."""
    import time

    c = _ctx(ctx).client
    sync_id = c.post("/api/v1/sync", {})["sync_id"]
    data = c.get("/api/v1/nodes")
    end = time.monotonic() + timeout
    while wait and any(n.get("up") and n.get("node_id") and n.get("sync_id") != sync_id
                       for n in data["nodes"]):
        if time.monotonic() > end:
            raise UserError(f"sync {sync_id}: not every node reported within {timeout:.0f}s; "
                            "`swarmnode nodes` shows which", 504)
        time.sleep(1.0)
        data = c.get("/api/v1/nodes")
    data["sync_id"] = sync_id
    _emit(data, as_json, render.synced)
    if any(n.get("sync_error") for n in data["nodes"] if n.get("sync_id") == sync_id):
        raise typer.Exit(1)


nodes_app = typer.Typer(help="The swarm's nodes: list them; add, remove, promote or demote "
                             "Raft voters.",
                        invoke_without_command=True)
app.add_typer(nodes_app, name="nodes")


@nodes_app.callback()
def nodes(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List every node: role (leader, voter, non-voter), address, site, cores, slots, leases,
    health, tree version and how it was discovered; then machines seen nearby that are not in
    the swarm (another cluster, a wrong secret)."""
    if ctx.invoked_subcommand is None:
        _emit(_ctx(ctx).client.get("/api/v1/nodes"), as_json, render.nodes)


def _change_voters(ctx: typer.Context, action: str, address: str, as_json: bool) -> None:
    result = _ctx(ctx).client.post("/api/v1/nodes", {"action": action, "address": address})
    done = {"add": "added", "remove": "removed", "promote": "promoted", "demote": "demoted"}
    _emit(result, as_json, lambda r: render.console.print(
        f"[green]{done[action]}[/] {r.get('node_id') or address}; voters now: "
        f"{', '.join(r['members'])}" + ("" if action == "add" else
                                        " (the leader applies the change in a moment)")))


AddressArg = Annotated[str, typer.Argument(help="The node's Raft HOST:PORT (its node.raft).")]
NodeArg = Annotated[str, typer.Argument(help="A node id (or a voter's Raft HOST:PORT).")]


@nodes_app.command("add")
def nodes_add(ctx: typer.Context, address: AddressArg, as_json: JsonOpt = False) -> None:
    """Add a voter (then start the new node with the others in its cluster.peers)."""
    _change_voters(ctx, "add", address, as_json)


@nodes_app.command("remove")
def nodes_remove(ctx: typer.Context, node: NodeArg, as_json: JsonOpt = False) -> None:
    """Remove a node (a machine retired for good); its artifacts are re-replicated. To bring
    it back, wipe its data dir's state/ and start it: it joins again."""
    _change_voters(ctx, "remove", node, as_json)


@nodes_app.command("promote")
def nodes_promote(ctx: typer.Context, node: NodeArg, as_json: JsonOpt = False) -> None:
    """Make a non-voting worker a voter (up to cluster.max_voters)."""
    _change_voters(ctx, "promote", node, as_json)


@nodes_app.command("demote")
def nodes_demote(ctx: typer.Context, node: NodeArg, as_json: JsonOpt = False) -> None:
    """Make a voter a non-voting worker; an up worker then takes its seat."""
    _change_voters(ctx, "demote", node, as_json)


def main() -> None:
    """Entry point: every failure is one line on stderr and a non-zero exit, no traceback."""
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as exc:
        typer.echo(f"swarmnode: error: {exc.message}", err=True)
        sys.exit(2 if exc.status in (503, 504) else 1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("swarmnode: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `swarmnode jobs | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as exc:  # usage errors from typer's click, and anything unexpected
        format_message = getattr(exc, "format_message", None)
        if callable(format_message):
            typer.echo(f"swarmnode: error: {format_message()} (see --help)", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        if os.environ.get("SWARMNODE_DEBUG"):
            raise
        typer.echo(f"swarmnode: internal error: {exc!r} (set SWARMNODE_DEBUG=1 for a traceback)",
                   err=True)
        sys.exit(70)
