"""Real ``swarmnode serve`` processes, one per network namespace: config, start, kill -9,
SIGSTOP/SIGCONT, restart from the same data dir.

Each process runs in its own session (``start_new_session``), so signals go to the process
group: a build the node started is killed or frozen with it, as on a real machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

API_PORT_BASE = 21000  # inside the namespaces only; node k uses BASE + 10k and BASE + 10k + 1


@dataclass(frozen=True)
class Timings:
    """Short cluster and build timings (as tests/harness.py uses), so faults bite quickly."""

    cores: int = 2
    lease_ttl_s: float = 6.0
    heartbeat_s: float = 1.0
    poll_s: float = 0.5
    max_parallel_jobs: int = 2
    down_after_s: float = 3.0
    replicas: int = 2


@dataclass
class NodeProcess:
    """One node: its namespace, ports, config file, data dir and (while running) its process."""

    node_id: str
    netns: str
    index: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    operator_port: int = 0  # the never-faulted way in from the root namespace
    peers: list[str] = field(default_factory=list)

    @property
    def api_port(self) -> int:
        return API_PORT_BASE + 10 * self.index

    @property
    def raft_port(self) -> int:
        return self.api_port + 1

    @property
    def raft(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def config(self) -> Path:
        return self.root / f"{self.node_id}.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / self.node_id

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.node_id}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_config(self, cluster: str, secret: str, profiles_toml: str, t: Timings) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
[node]
id = "{self.node_id}"
data_dir = "{self.data_dir}"
listen = "127.0.0.1:{self.api_port}"
raft = "{self.raft}"
cores = {t.cores}

[cluster]
name = "{cluster}"
secret = "{secret}"
peers = {json.dumps(self.peers)}
replicas = {t.replicas}
down_after_s = {t.down_after_s}

[discovery]
mdns = false
tailscale = false

[build]
lease_ttl_s = {t.lease_ttl_s}
heartbeat_s = {t.heartbeat_s}
poll_s = {t.poll_s}
max_parallel_jobs = {t.max_parallel_jobs}

{profiles_toml}
""")

    def start(self) -> None:
        """Start ``swarmnode serve`` inside the namespace (returns at once)."""
        if self.running:
            raise RuntimeError(f"{self.node_id} is already running")
        with open(self.log_path, "ab") as out:
            out.write(f"--- nemesis: start #{self.starts + 1} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "swarmnode", "serve",
                 "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.starts += 1
        self.paused = False

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    async def kill9(self) -> None:
        """``kill -9`` of the whole process group; waits until the process is reaped."""
        proc = self.proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        self.proc = None
        self.paused = False

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (after SIGCONT, a stopped process cannot exit), then -9 if it hangs."""
        proc = self.proc
        if proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except asyncio.TimeoutError:
            pass
        await self.kill9()

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])
