"""Free loopback ports for child processes that bind them later.

Binding port 0 and closing hands out a port from the kernel's *ephemeral* range — the same range
every outgoing connection takes its source port from. Between picking the port and the child
binding it, any connect() on the machine (a Raft node retrying a peer, the driver polling
status) may take it, and the child then fails to start. So ports come from below that range,
where the kernel never allocates on its own; each is checked free and handed out once per
process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # stay clear of well-known and commonly configured service ports
_given: set[int] = set()
_rng = random.Random()


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port that is free now and that the kernel will not hand out as a
    connection's source port."""
    top = _ephemeral_start()
    if top - _LOWEST < 1000:  # an unusual range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(1000):
        port = _rng.randrange(_LOWEST, top)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {_LOWEST}-{top - 1}")
