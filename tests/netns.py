"""A LAN of network namespaces on one bridge: real multicast between real processes.

The bridge lives in its own namespace, so the root namespace (the CI machine's network) is never
touched. Namespace names carry the creating pid ("<prefix>-<pid>-<rand>-<host>"): a new Lan and
every close() delete namespaces whose creator is dead, so a killed run does not leave them behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest

from simulation.nemesis.netns import delete_netns as _delete_netns, remove_stale

IFNAME = "eth0"  # every host's LAN link; names are per namespace, so they never collide
BRIDGE = "br0"


def _ip(*args: str) -> None:
    """Run `ip`; a failure raises with ip's own message (CalledProcessError hides it)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _kill(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # popen starts a session: take its children too
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Host:
    """One machine on the LAN: a namespace with `ifname` on the bridge at `ip`."""

    name: str
    netns: str
    ip: str
    ifname: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False, compare=False)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv inside the namespace, in its own session; the Lan kills it on close."""
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], **kw)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run argv inside the namespace (output captured as text, 60 s timeout by default)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], **kw)


class Lan:
    """Hosts on one bridge with multicast snooping off, so mDNS always floods to every port."""

    def __init__(self, prefix: str = "sn", subnet: str = "10.77.0") -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]*", prefix):
            raise ValueError(f"prefix must be lowercase letters/digits, got {prefix!r}")
        self.prefix = prefix
        self.subnet = subnet
        self.tag = f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}"
        self.bridge_ns = f"{self.tag}-br"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._ports: dict[str, str] = {}  # host netns -> its veth end on the bridge
        remove_stale(prefix)
        try:
            self._add_netns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", BRIDGE, "type", "bridge", "mcast_snooping", "0")
            _ip("-n", self.bridge_ns, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _add_netns(self, netns: str) -> None:
        self._namespaces.append(netns)  # first, so close() removes a half-made one
        _ip("netns", "add", netns)

    def add_host(self, name: str) -> Host:
        """A new namespace "<tag>-<name>" whose eth0 is on the bridge at <subnet>.<n>/24."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) or any(h.name == name for h in self.hosts):
            raise ValueError(f"host name must be unique lowercase letters/digits/'-', got {name!r}")
        n = len(self.hosts) + 1
        if n > 254:
            raise ValueError("a /24 LAN holds at most 254 hosts")
        netns, port, ip = f"{self.tag}-{name}", f"v{n}", f"{self.subnet}.{n}"
        self._add_netns(netns)
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", IFNAME,
            "netns", netns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", BRIDGE, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", IFNAME)
        _ip("-n", netns, "link", "set", IFNAME, "multicast", "on", "up")
        _ip("-n", netns, "route", "replace", "224.0.0.0/4", "dev", IFNAME)
        host = Host(name, netns, ip, IFNAME)
        self._ports[netns] = port
        self.hosts.append(host)
        return host

    def link_down(self, host: Host) -> None:
        """Unplug the host: both ends of its link go down (its routes on the link vanish)."""
        _ip("-n", self.bridge_ns, "link", "set", self._ports[host.netns], "down")
        _ip("-n", host.netns, "link", "set", host.ifname, "down")

    def link_up(self, host: Host) -> None:
        """Plug it back in; the multicast route is restored (the kernel dropped it on down)."""
        _ip("-n", self.bridge_ns, "link", "set", self._ports[host.netns], "up")
        _ip("-n", host.netns, "link", "set", host.ifname, "up")
        _ip("-n", host.netns, "route", "replace", "224.0.0.0/4", "dev", host.ifname)

    def close(self) -> None:
        """Kill started processes, delete every namespace (their links go with them); idempotent."""
        for host in self.hosts:
            for proc in host.procs:
                _kill(proc)
        for netns in reversed(self._namespaces):
            _delete_netns(netns)
        self._namespaces.clear()
        remove_stale(self.prefix)


def lan_or_skip(prefix: str = "sn", subnet: str = "10.77.0") -> Lan:
    """A Lan, or skip the test where namespaces cannot be made (CI runs as root: it runs there)."""
    if os.geteuid() != 0:
        pytest.skip("network-namespace LAN tests need root")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is missing; `make host-deps` installs it")
    return Lan(prefix, subnet)
