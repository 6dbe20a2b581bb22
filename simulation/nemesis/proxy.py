"""A TCP proxy per directed link that can pass, delay, blackhole or reset its connections.

Link ``i→j`` carries the connections initiated inside ``i``'s namespace towards ``j`` (both
byte directions). Its fault applies to existing and new connections alike:

* ``pass`` — bytes are forwarded as they come;
* ``delay(ms)`` — each chunk is forwarded ``ms`` after it arrived, order kept;
* ``blackhole`` — a silent cut, like a pulled cable: existing connections stop forwarding
  in both directions, new ones are accepted but never forwarded (nobody is told);
* ``reset`` — existing connections are closed with an RST (``SO_LINGER`` 0) on both sides,
  new ones are reset at once.

Going back to pass or delay after a blackhole resets the stalled connections (bytes were
swallowed, so the stream cannot resume): the peers notice and reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

from .netns import SocketFactory

log = logging.getLogger(__name__)

PASS, DELAY, BLACKHOLE, RESET = "pass", "delay", "blackhole", "reset"
CHUNK = 64 * 1024
QUEUE_CHUNKS = 64  # per direction: backpressure once this many chunks wait for their time
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class LinkFault:
    """What a link does to its traffic (see the module docstring)."""

    mode: str = PASS
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in (PASS, DELAY, BLACKHOLE, RESET):
            raise ValueError(f"unknown link mode {self.mode!r}")
        if self.delay_ms < 0 or (self.mode == DELAY) != (self.delay_ms > 0):
            raise ValueError("a delay needs a positive delay_ms, other modes none")

    def __str__(self) -> str:
        return f"delay({self.delay_ms:g}ms)" if self.mode == DELAY else self.mode


HEALTHY = LinkFault()
CUT = LinkFault(BLACKHOLE)
RST = LinkFault(RESET)


def delay(ms: float) -> LinkFault:
    return LinkFault(DELAY, float(ms))


@dataclass(frozen=True)
class Endpoint:
    """``host:port`` inside a namespace (``None``: the proxy process's own)."""

    netns: str | None
    port: int
    host: str = "127.0.0.1"


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    writer.transport.abort()


class _Conn:
    """One proxied connection: the accepted side, the upstream side, two pumps."""

    def __init__(self, link: Link, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.link = link
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.stalled = False
        self.closed = False
        self._eofs = 0

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.upstream = (reader, writer)
        for src, dst in ((self.client[0], writer), (reader, self.client[1])):
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
            self.tasks.append(asyncio.create_task(self._read(src, queue)))
            self.tasks.append(asyncio.create_task(self._write(queue, dst)))

    async def _read(self, src: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    await queue.put(None)
                    return
                await queue.put((loop.time() + self.link.fault.delay_ms / 1000.0, data))
        except (ConnectionError, OSError):
            self.reset()  # the peer reset: pass the RST on

    async def _write(self, queue: asyncio.Queue[tuple[float, bytes] | None],
                     dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    if dst.can_write_eof():
                        dst.write_eof()
                    self._eofs += 1
                    if self._eofs == 2:
                        self.close()
                    return
                at, data = item
                if at > loop.time():
                    await asyncio.sleep(at - loop.time())
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            self.reset()

    def _stop_pumps(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.tasks.clear()

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client[1]] + ([self.upstream[1]] if self.upstream else [])

    def stall(self) -> None:
        """Forward nothing more; the sockets stay open (the peers are not told)."""
        if not self.closed and not self.stalled:
            self.stalled = True
            self.link.counts["stalled"] += 1
            self._stop_pumps()

    def reset(self) -> None:
        """Close both sides with an RST."""
        if self.closed:
            return
        self.closed = True
        self.link.counts["reset"] += 1
        self._stop_pumps()
        for writer in self.writers():
            _rst(writer)
        self.link.conns.discard(self)

    def close(self) -> None:
        """Both directions ended normally."""
        if self.closed:
            return
        self.closed = True
        self._stop_pumps()
        for writer in self.writers():
            writer.close()
        self.link.conns.discard(self)


@dataclass(eq=False)
class Link:
    """One directed link ``src→dst``: its fault and its live connections."""

    src: str
    dst: str
    fault: LinkFault = HEALTHY
    conns: set[_Conn] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    def set(self, fault: LinkFault) -> None:
        self.fault = fault
        for conn in list(self.conns):
            if fault.mode == RESET:
                conn.reset()
            elif fault.mode == BLACKHOLE:
                conn.stall()
            elif conn.stalled:
                conn.reset()  # swallowed bytes: the stream cannot resume, make them reconnect


class Proxy:
    """Every forwarded port of every link, and the faults on them."""

    def __init__(self, sockets: SocketFactory | None = None) -> None:
        self._own_sockets = sockets is None
        self.sockets = sockets or SocketFactory()
        self.links: dict[tuple[str, str], Link] = {}
        self._servers: list[asyncio.base_events.Server] = []

    def link(self, src: str, dst: str) -> Link:
        key = (src, dst)
        if key not in self.links:
            self.links[key] = Link(src, dst)
        return self.links[key]

    async def forward(self, src: str, dst: str, listen: Endpoint, target: Endpoint) -> int:
        """Accept on ``listen`` as part of link ``src→dst`` and forward to ``target``;
        returns the bound port (``listen.port`` 0 picks a free one)."""
        link = self.link(src, dst)
        sock = await self.sockets.listener(listen.netns, listen.host, listen.port)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accepted(link, target, reader, writer)

        server = await asyncio.start_server(accepted, sock=sock, limit=CHUNK * 2)
        self._servers.append(server)
        return int(sock.getsockname()[1])

    async def _accepted(self, link: Link, target: Endpoint, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        conn = _Conn(link, reader, writer)
        link.conns.add(conn)
        link.counts["accepted"] += 1
        if link.fault.mode == RESET:
            conn.reset()
            return
        if link.fault.mode == BLACKHOLE:
            conn.stall()  # held open, silent, until the link heals
            return
        try:
            sock = await self.sockets.connect(target.netns, target.host, target.port)
        except OSError:
            conn.reset()  # nobody listens there (the node is down): refuse like it would
            return
        if conn.closed or conn.stalled:  # the link changed while we connected
            sock.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(sock=sock, limit=CHUNK * 2)
        except OSError:
            sock.close()
            conn.reset()
            return
        conn.attach(up_reader, up_writer)

    def set(self, src: str, dst: str, fault: LinkFault) -> None:
        self.link(src, dst).set(fault)

    def fault(self, src: str, dst: str) -> LinkFault:
        return self.link(src, dst).fault

    def heal(self) -> None:
        """Every link back to pass."""
        for link in self.links.values():
            if link.fault != HEALTHY:
                link.set(HEALTHY)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for link in self.links.values():
            for conn in list(link.conns):
                conn.reset()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._own_sockets:
            self.sockets.close()
