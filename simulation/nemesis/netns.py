"""Loopback-only network namespaces, and sockets made inside them from this process.

Every node runs in its own namespace so that each directed link can be cut on its own while
every node still reaches node j at the same ``127.0.0.1:P_j`` (Raft names nodes by address).
Names carry the creating pid (``<prefix>-<pid>-<rand>-<name>``): a new :class:`Namespaces`
deletes namespaces of its prefix whose creator is dead, so a killed run leaves nothing behind.

A socket belongs for life to the namespace of the thread that created it; Python 3.11 has no
``os.setns``, so :class:`SocketFactory` calls libc ``setns`` in one dedicated thread, creates
the socket there and switches that thread back at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"


def ip(*args: str) -> None:
    """Run ``ip``; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def delete_netns(name: str) -> None:
    """Kill what still runs inside (a namespace outlives ``ip netns del`` while it has
    processes), then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in pids.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale(prefix: str) -> None:
    """Delete namespaces of this prefix whose creating process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-[0-9a-f]{{4}}-")
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        match = pattern.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            delete_netns(name)


@dataclass
class Namespaces:
    """Namespaces with only ``lo`` (up); ``close()`` deletes them (idempotent)."""

    prefix: str = "nem"
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]*", self.prefix):
            raise ValueError(f"prefix must be lowercase letters/digits, got {self.prefix!r}")
        self.tag = f"{self.prefix}-{os.getpid()}-{secrets.token_hex(2)}"
        remove_stale(self.prefix)

    def add(self, name: str) -> str:
        netns = f"{self.tag}-{name}"
        self.names.append(netns)  # first, so close() removes a half-made one
        ip("netns", "add", netns)
        ip("-n", netns, "link", "set", "lo", "up")
        return netns

    def close(self) -> None:
        for netns in reversed(self.names):
            delete_netns(netns)
        self.names.clear()

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SocketFactory:
    """Makes TCP sockets inside a named namespace (``None``: the one this process started in)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        self._fds: dict[str, int] = {}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="netns")

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    def _make(self, netns: str | None, bind: tuple[str, int] | None) -> socket.socket:
        """In the dedicated thread: enter ``netns``, create (and bind) the socket, go home."""
        if netns is None:
            return self._socket(bind)
        fd = self._fds.get(netns)
        if fd is None:
            fd = self._fds[netns] = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY)
        self._setns(fd)
        try:
            return self._socket(bind)
        finally:
            self._setns(self._home)  # if this fails the thread is unusable: let it raise

    @staticmethod
    def _socket(bind: tuple[str, int] | None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if bind is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(bind)
                sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return sock

    async def listener(self, netns: str | None, host: str, port: int) -> socket.socket:
        """A listening non-blocking socket on ``host:port`` inside ``netns``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._make, netns, (host, port))

    async def connect(self, netns: str | None, host: str, port: int) -> socket.socket:
        """A socket connected from inside ``netns`` (non-blocking connect on the loop)."""
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(self._thread, self._make, netns, None)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Idempotent."""
        self._thread.shutdown(wait=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._home >= 0:
            os.close(self._home)
            self._home = -1
