"""Real `swarmnode serve` processes for end-to-end tests, and the CLI run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT / "config" / "example"
PROFILES = PROJECT / "config" / "profiles"

sys.path.insert(0, str(PROJECT))  # `simulation` is not an installed package
from simulation.ports import free_port  # noqa: E402


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout` s."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def profile_toml(name: str, repo: Path, config_dir: Path | None, distfiles: Path,
                 portage_profile: str = "swarm/amd64", extra: str = "") -> str:
    config_line = f'portage_config = "{config_dir}"' if config_dir is not None else ""
    return f"""
[profiles.{name}]
repositories = ["{repo}"]
portage_profile = "{portage_profile}"
{config_line}
distfiles = "{distfiles}"
{extra}
"""


@dataclass
class NodeProc:
    """One node: its config file, data dir and (while running) its serve process."""

    root: Path
    node_id: str
    profiles_toml: str
    secret: str = "test-secret-0123456789abcdef"
    port: int = field(default_factory=free_port)
    raft_port: int = field(default_factory=free_port)
    peers: list[str] = field(default_factory=list)  # Raft addresses of the whole cluster
    extra_toml: str = ""  # appended to [build] (may open further tables)
    cluster_toml: str = ""  # appended to [cluster]
    max_parallel_jobs: int = 2  # builds at once
    emerge_log: str = ""  # build.emerge_log ("" off: a test host's own log must not leak in)
    cluster_name: str = "test"
    host: str = "127.0.0.1"  # the address it listens on (a namespace's LAN address)
    netns: str | None = None  # run the node, its CLI and HTTP calls in this network namespace
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def raft(self) -> str:
        return f"{self.host}:{self.raft_port}"

    def _argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    @property
    def config(self) -> Path:
        return self.root / f"{self.node_id}.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / self.node_id

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.node_id}.log"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
[node]
id = "{self.node_id}"
data_dir = "{self.data_dir}"
listen = "{self.host}:{self.port}"
raft = "{self.raft}"
cores = 2

[cluster]
name = "{self.cluster_name}"
secret = "{self.secret}"
peers = {json.dumps(self.peers)}
{self.cluster_toml}

[build]
lease_ttl_s = 6
heartbeat_s = 1
poll_s = 0.5
max_parallel_jobs = {self.max_parallel_jobs}
emerge_log = {json.dumps(self.emerge_log)}
{self.extra_toml}
{self.profiles_toml}
""")

    def start(self, wait: bool = True) -> None:
        self.write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self._argv([sys.executable, "-m", "swarmnode", "serve", "--config", str(self.config)]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 60) -> None:
        wait_for(self._up, timeout, f"node {self.node_id} to serve its API")

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"node {self.node_id} exited: {self.log_tail()}")
        if self.netns:
            return self.http("GET", "/api/v1/status")[0] == 200
        try:
            urllib.request.urlopen(self.url + "/api/v1/status", timeout=2).read()
            return True
        except OSError:
            return False

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def cli(self, *args: str, secret: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, SWARMNODE_URL=self.url, COLUMNS="200")
        env.pop("SWARMNODE_SECRET", None)
        if secret:
            env["SWARMNODE_SECRET"] = self.secret
        return subprocess.run(self._argv([sys.executable, "-m", "swarmnode", *args]), env=env,
                              text=True, capture_output=True, timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        proc = self.cli(*args, "--json")
        assert proc.returncode == 0, f"swarmnode {args}: {proc.stderr}\n{self.log_tail()}"
        return json.loads(proc.stdout)

    def get(self, path: str) -> Any:
        status, body = self.http("GET", path)
        assert status == 200, f"GET {path}: {status} {body[:500]!r}\n{self.log_tail()}"
        return json.loads(body)

    def http(self, method: str, path: str, body: bytes | None = None,
             secret: str | None = None) -> tuple[int, bytes]:
        if self.netns:  # the test runs outside the namespace: ask from inside it
            done = subprocess.run(
                self._argv([sys.executable, str(Path(__file__).parent / "http_call.py"),
                            method, self.url + path, secret or ""]),
                input=body or b"", capture_output=True, timeout=90)
            status, _, reply = done.stdout.partition(b"\n")
            if not status.strip().isdigit():
                return 0, done.stderr
            return int(status), reply
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if secret:
            req.add_header("Authorization", f"Bearer {secret}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def copy_example(root: Path) -> tuple[Path, Path]:
    """The example repository and its distfiles, copied under ``root`` (tests edit the copy)."""
    repo, distfiles = root / "repo", root / "distfiles"
    shutil.copytree(EXAMPLE / "repo", repo, symlinks=True)
    shutil.copytree(EXAMPLE / "distfiles", distfiles)
    return repo, distfiles


def run_cluster(root: Path, profiles_toml: str, count: int = 3,
                **node: Any) -> Iterator[list[NodeProc]]:
    """For a fixture: ``count`` nodes n1… peered with each other, started, and stopped after."""
    nodes = [NodeProc(root, f"n{i}", profiles_toml, **node) for i in range(1, count + 1)]
    for n in nodes:
        n.peers = [m.raft for m in nodes]
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()
