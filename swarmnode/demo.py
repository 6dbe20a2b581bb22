"""`make demo`: a local swarm builds the example repository and a client installs from it.

Everything it does is what a user would type: start `swarmnode serve`, then drive it with
the `swarmnode` CLI (fresh --wait, verify, finalize, status), then a separate portage
installation installs the published packages over HTTP with signature verification on and
runs one of the programs it installed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from swarmnode.config import load_config
from swarmnode.portage.client import BinhostClient

PROJECT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get("SWARMNODE_DEMO_DIR", PROJECT / "demo-run"))
PORT = int(os.environ.get("SWARMNODE_DEMO_PORT", "7711"))
URL = f"http://127.0.0.1:{PORT}"


def say(text: str) -> None:
    print(f"\n\033[1;32m==>\033[0m \033[1m{text}\033[0m", flush=True)


def write_config(secret: str) -> Path:
    example = PROJECT / "config"
    cfg = RUN / "node1.toml"
    cfg.write_text(f"""\
[node]
id = "node1"
data_dir = "{RUN / 'node1'}"
listen = "127.0.0.1:{PORT}"
cores = {os.cpu_count() or 2}

[cluster]
name = "demo"
secret = "{secret}"

[build]
lease_ttl_s = 10
heartbeat_s = 2
max_parallel_jobs = 2

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


def wait_up(proc: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the node exited early; see {RUN / 'node1.log'}")
        try:
            urllib.request.urlopen(f"{URL}/api/v1/status", timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"demo: the node did not come up; see {RUN / 'node1.log'}")


def main() -> None:
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    cfg = write_config(secrets.token_hex(24))
    say(f"starting a swarm node on {URL} (log: {RUN / 'node1.log'})")
    with open(RUN / "node1.log", "wb") as log:
        node = subprocess.Popen([sys.executable, "-m", "swarmnode", "serve", "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_up(node)
        say("building the example repository's @world for the desktop profile with real portage")
        cli(cfg, "fresh", "--profile", "desktop", "--wait")
        say("checking the release candidate")
        cli(cfg, "verify", "--profile", "desktop")
        say("publishing it on the binhost")
        cli(cfg, "finalize", "--profile", "desktop")
        cli(cfg, "status")
        say("a separate portage installation installs from the binhost (signatures verified)")
        key = urllib.request.urlopen(f"{URL}/api/v1/key", timeout=10).read().decode()
        client = BinhostClient.create(RUN / "client", f"{URL}/binhost/desktop", key,
                                      PROJECT / "config/example/repo", "swarm/amd64")
        if not client.verifies_signatures():
            raise SystemExit("demo: the client does not verify signatures (unexpected)")
        print("client: portage reports verify-signature: True for the swarm binhost; "
              "the swarm's key is in its keyring")
        world = list(load_config(cfg).profile("desktop").world)
        print(f"$ emerge --getbinpkgonly {' '.join(world)}", flush=True)
        client.install(world)
        say("running programs the client installed from the binhost")
        for program in ("greeter", "report", "toylang2"):
            print(f"$ {program}\n" + client.run(program), end="", flush=True)
        say(f"demo done: binhost {URL}/binhost/desktop/, client root {client.root}")
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
