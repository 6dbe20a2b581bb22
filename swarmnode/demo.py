"""`make demo`: a local three-node swarm builds the example repository and a client installs
from it.

Everything it does is what a user would type: start `swarmnode serve` three times (one Raft
group on loopback), then drive it with the `swarmnode` CLI — `fresh --wait` through one node,
`verify` and `finalize` through another, `nodes` and `status` — then a separate portage
installation installs the published packages over HTTP from a third node's binhost, with
signature verification on, and runs programs it installed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from swarmnode.config import load_config
from swarmnode.portage.client import BinhostClient

PROJECT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get("SWARMNODE_DEMO_DIR", PROJECT / "demo-run"))
PORT = int(os.environ.get("SWARMNODE_DEMO_PORT", "7711"))  # node i: API PORT+i-1, Raft +10
NODES = (1, 2, 3)


def url(i: int) -> str:
    return f"http://127.0.0.1:{PORT + i - 1}"


def raft(i: int) -> str:
    return f"127.0.0.1:{PORT + 10 + i - 1}"


def say(text: str) -> None:
    print(f"\n\033[1;32m==>\033[0m \033[1m{text}\033[0m", flush=True)


def write_config(i: int, secret: str) -> Path:
    example = PROJECT / "config"
    cfg = RUN / f"node{i}.toml"
    peers = ", ".join(f'"{raft(j)}"' for j in NODES)
    cfg.write_text(f"""\
[node]
id = "node{i}"
data_dir = "{RUN / f'node{i}'}"
listen = "127.0.0.1:{PORT + i - 1}"
raft = "{raft(i)}"
cores = {os.cpu_count() or 2}
sweeper = {'true' if i == 3 else 'false'}

[cluster]
name = "demo"
secret = "{secret}"
peers = [{peers}]

[build]
lease_ttl_s = 10
heartbeat_s = 2
max_parallel_jobs = 1

[profiles.desktop]
repositories = ["{example / 'example/repo'}"]
portage_profile = "swarm/amd64"
portage_config = "{example / 'profiles/desktop'}"
distfiles = "{example / 'example/distfiles'}"
critical = ["dev-libs/libgreet"]

[profiles.server]
repositories = ["{example / 'example/repo'}"]
portage_profile = "swarm/amd64"
portage_config = "{example / 'profiles/server'}"
distfiles = "{example / 'example/distfiles'}"
""")
    return cfg


def cli(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "swarmnode", "--config", str(cfg), *args]
    print("$ swarmnode " + " ".join(args), flush=True)
    proc = subprocess.run(argv, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `swarmnode {' '.join(args)}` failed (exit {proc.returncode})")
    return proc


def wait_until(check: Callable[[], bool], what: str, deadline_s: float = 90) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.3)
    raise SystemExit(f"demo: timed out waiting for {what}; logs are in {RUN}")


def get(i: int, path: str) -> Any:
    try:
        return json.loads(urllib.request.urlopen(url(i) + path, timeout=5).read())
    except OSError:
        return None


def main() -> None:
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    secret = secrets.token_hex(24)
    cfgs = {i: write_config(i, secret) for i in NODES}
    procs: dict[int, subprocess.Popen[bytes]] = {}
    say(f"starting three swarm nodes: {', '.join(url(i) for i in NODES)} (logs in {RUN})")
    for i in NODES:
        with open(RUN / f"node{i}.log", "wb") as log:
            procs[i] = subprocess.Popen(
                [sys.executable, "-m", "swarmnode", "serve", "--config", str(cfgs[i])],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for i in NODES:
            def serving(i: int = i) -> bool:
                return procs[i].poll() is None and get(i, "/api/v1/status") is not None
            wait_until(serving, f"node{i} to serve its API")
        wait_until(lambda: (v := get(1, "/api/v1/nodes")) is not None and sum(
            1 for n in v["nodes"] if n.get("node_id") and n["up"]) == 3, "three registered nodes")
        say("one Raft group, a leader elected; any node answers")
        cli(cfgs[1], "nodes")
        say("building the example repository's @world for the desktop profile with real portage "
            "(asked through node2; every idle node claims jobs)")
        cli(cfgs[2], "fresh", "--profile", "desktop", "--wait")
        say("checking the release candidate (through node3)")
        cli(cfgs[3], "verify", "--profile", "desktop")
        say("publishing it: every node's binhost switches once it holds every package")
        cli(cfgs[3], "finalize", "--profile", "desktop")
        release = get(3, "/api/v1/releases?profile=desktop")["production"]
        wait_until(lambda: all((get(i, "/api/v1/status") or {}).get("profiles", {})
                               .get("desktop", {}).get("serving", {}) and
                               get(i, "/api/v1/status")["profiles"]["desktop"]["serving"]
                               ["release_id"] == release for i in NODES),
                   "every node to serve the release")
        cli(cfgs[1], "status")
        say("a separate portage installation installs from node1's binhost (signatures verified)")
        key = urllib.request.urlopen(f"{url(1)}/api/v1/key", timeout=10).read().decode()
        client = BinhostClient.create(RUN / "client", f"{url(1)}/binhost/desktop", key,
                                      PROJECT / "config/example/repo", "swarm/amd64")
        if not client.verifies_signatures():
            raise SystemExit("demo: the client does not verify signatures (unexpected)")
        print("client: portage reports verify-signature: True for the swarm binhost; "
              "the swarm's key is in its keyring")
        world = list(load_config(cfgs[1]).profile("desktop").world)
        print(f"$ emerge --getbinpkgonly {' '.join(world)}", flush=True)
        client.install(world)
        say("running programs the client installed from the binhost")
        for program in ("greeter", "report", "toylang2"):
            print(f"$ {program}\n" + client.run(program), end="", flush=True)
        say(f"demo done: binhosts {', '.join(url(i) + '/binhost/desktop/' for i in NODES)}; "
            f"client root {client.root}")
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
