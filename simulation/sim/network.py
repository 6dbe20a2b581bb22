"""The simulated network and pysyncobj's Transport over it.

The contract kept is TCPTransport's, which pysyncobj's Raft relies on:

* a connection is per pair of nodes, set up by the side with the greater address (a read-only
  node — a non-voting worker — connects to every voter); the acceptor learns who called from
  the first message, and drops a caller it does not know (not yet a member);
* messages on a connection arrive in order (FIFO), each after a latency drawn from the seed;
* nothing is ever lost silently: loss is a *connection break* — every message in flight is
  dropped and both sides get their disconnect callbacks — and the caller reconnects every
  ``connectionRetryTime``, as TCPTransport does; a partition keeps those attempts failing;
* messages are copied (pickled, as TCPTransport does) so nodes never share objects.

A paused node (SIGSTOP) reads nothing: what reaches it waits in its socket buffer (its inbox)
until it resumes, unless its peers time it out first (``connectionTimeout``).
"""

from __future__ import annotations

import functools
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.node import Node
from pysyncobj.transport import Transport

from .clock import VirtualLoop

HELLO = "__sim_hello__"  # the first message of a connection: who is calling


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


@dataclass
class Connection:
    """One TCP connection attempt between ``caller`` and ``callee`` (node addresses)."""

    seq: int
    caller: str
    callee: str
    alive: bool = True
    caller_up: bool = False       # the caller's side is CONNECTED
    callee_node: Node | None = None  # set when the callee identified the caller
    last_arrival: dict[str, float] = field(default_factory=dict)  # receiver → last arrival


class SimNetwork:
    """All links of one simulated cluster; faults act here (partitions, breaks, pauses)."""

    def __init__(self, loop: VirtualLoop, rng: random.Random,
                 record: Callable[..., None], latency_s: tuple[float, float] = (0.0002, 0.002),
                 connection_timeout_s: float = 2.0) -> None:
        self.loop = loop
        self.rng = rng
        self.record = record
        self.latency_s = latency_s
        self.connection_timeout_s = connection_timeout_s
        self.endpoints: dict[str, SimTransport] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.paused: set[str] = set()
        self.inbox: dict[str, list[tuple[Connection, str, Any]]] = {}
        self._base: dict[tuple[str, str], float] = {}
        self._seq = 0
        self.messages = 0

    # -- topology ---------------------------------------------------------------------------
    def latency(self, a: str, b: str) -> float:
        """One message's delay on the link a–b: the link's base (drawn once) with jitter."""
        key = pair(a, b)
        base = self._base.get(key)
        if base is None:
            base = self._base[key] = self.rng.uniform(*self.latency_s)
        return base * self.rng.uniform(0.5, 1.5)

    def reachable(self, a: str, b: str) -> bool:
        """Could a packet from a reach b now (both running, no partition between them)?"""
        return (a in self.endpoints and b in self.endpoints and pair(a, b) not in self.blocked
                and a not in self.paused and b not in self.paused)

    def attach(self, transport: SimTransport) -> None:
        self.endpoints[transport.address] = transport

    def detach(self, transport: SimTransport) -> None:
        """A node's process ended (crash or close): its peers see the connections reset."""
        if self.endpoints.get(transport.address) is transport:
            del self.endpoints[transport.address]
        for conn in transport.connections():
            self.break_connection(conn)  # no longer attached: only the peers are told
        self.inbox.pop(transport.address, None)

    def block(self, pairs: set[tuple[str, str]]) -> None:
        """Partition: these links break now and stay down until :meth:`unblock`."""
        self.blocked |= pairs
        for address in sorted(self.endpoints):
            for conn in self.endpoints[address].connections():
                if pair(conn.caller, conn.callee) in pairs:
                    self.break_connection(conn)

    def unblock(self, pairs: set[tuple[str, str]] | None = None) -> None:
        self.blocked = set() if pairs is None else self.blocked - pairs

    def break_random(self) -> tuple[str, str] | None:
        """Flaky link: reset one established connection, chosen by the seed."""
        conns = sorted({c.seq: c for t in self.endpoints.values() for c in t.connections()
                        if c.alive and c.caller_up}.items())
        if not conns:
            return None
        conn = self.rng.choice(conns)[1]
        self.break_connection(conn)
        return conn.caller, conn.callee

    # -- connections ------------------------------------------------------------------------
    def connect(self, caller: SimTransport, callee: str) -> Connection:
        """Start a connection; it is up after a round trip, or fails if the callee is gone
        or partitioned away (a refused or unreachable connect)."""
        self._seq += 1
        conn = Connection(self._seq, caller.address, callee)
        rtt = 2 * self.latency(caller.address, callee)
        target = self.endpoints.get(callee)
        ok = (target is not None and target.voter  # only a voter listens for Raft
              and pair(caller.address, callee) not in self.blocked)
        self.loop.call_at(self.loop.time() + rtt, self._connected if ok else self._refused,
                          conn, caller)
        return conn

    def _refused(self, conn: Connection, caller: SimTransport) -> None:
        if conn.alive:
            self.break_connection(conn)

    def _connected(self, conn: Connection, caller: SimTransport) -> None:
        if not conn.alive:
            return
        if (self.endpoints.get(conn.callee) is None or caller.destroyed
                or pair(conn.caller, conn.callee) in self.blocked):
            self.break_connection(conn)
            return
        conn.caller_up = True
        caller.on_established(conn)
        if conn.alive:
            self.transmit(conn, conn.caller, HELLO if caller.voter else "readonly",
                          hello=True)

    def transmit(self, conn: Connection, sender: str, message: Any, hello: bool = False) -> None:
        """Queue a copy of ``message`` on the connection, delivered in order after a latency."""
        receiver = conn.callee if sender == conn.caller else conn.caller
        data = pickle.dumps(message if not hello else (HELLO, sender, message))
        now = self.loop.time()
        at = max(now + self.latency(sender, receiver), conn.last_arrival.get(receiver, 0.0))
        conn.last_arrival[receiver] = at
        self.messages += 1
        self.loop.call_at(at, self._arrive, conn, receiver, data)

    def _arrive(self, conn: Connection, receiver: str, data: bytes) -> None:
        if not conn.alive:
            return  # the connection broke while this was in flight: lost with it
        if receiver in self.paused:
            self.inbox.setdefault(receiver, []).append((conn, receiver, data))
            return
        target = self.endpoints.get(receiver)
        if target is None:
            self.break_connection(conn)
            return
        target.on_data(conn, pickle.loads(data))

    def break_connection(self, conn: Connection) -> None:
        """The connection resets: in-flight messages are lost, both sides are told."""
        if not conn.alive:
            return
        conn.alive = False
        for address in (conn.caller, conn.callee):
            transport = self.endpoints.get(address)
            if transport is not None:
                transport.on_closed(conn)

    # -- pauses -----------------------------------------------------------------------------
    def pause(self, address: str) -> None:
        self.paused.add(address)
        self.loop.call_at(self.loop.time() + self.connection_timeout_s, self._time_out, address)

    def _time_out(self, address: str) -> None:
        """Peers stop waiting for a stopped process: their connections to it time out."""
        transport = self.endpoints.get(address)
        if address in self.paused and transport is not None:
            for conn in transport.connections():
                self.break_connection(conn)

    def resume(self, address: str) -> None:
        self.paused.discard(address)
        for conn, receiver, data in self.inbox.pop(address, []):
            self._arrive(conn, receiver, data)


class SimTransport(Transport):
    """pysyncobj Transport over :class:`SimNetwork` (see the module docstring).

    Built by SyncObj as ``transportClass(syncObj, selfNode, otherNodes)``: the network, this
    node's address (also for a read-only node, whose ``selfNode`` is None) and the callback
    that ticks the node are bound with :func:`functools.partial` (see :func:`factory`).
    """

    def __init__(self, network: SimNetwork, address: str, kick: Callable[[], None],
                 after_message: Callable[[], None], syncObj: Any, selfNode: Node | None,
                 otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.network = network
        self.address = address
        self.voter = selfNode is not None
        self.kick = kick
        self.after_message = after_message
        self.destroyed = False
        self._retry_s = float(syncObj.conf.connectionRetryTime)
        self._nodes: dict[str, Node] = {}           # voter peers by address
        self._conns: dict[str, Connection] = {}     # peer address → connection to it
        self._readonly: dict[int, Node] = {}        # connection seq → read-only peer
        self._readonly_conns: dict[int, Connection] = {}
        self._last_attempt: dict[str, float] = {}
        self._readonly_counter = 0
        network.attach(self)
        for node in sorted(otherNodes, key=lambda n: n.id):
            self.addNode(node)
        syncObj.addOnTickCallback(self._on_tick)

    # -- pysyncobj's interface --------------------------------------------------------------
    def addNode(self, node: Node) -> None:  # noqa: N802 (pysyncobj's name)
        self._nodes[node.id] = node
        self.kick()

    def dropNode(self, node: Node) -> None:  # noqa: N802
        conn = self._conns.pop(node.id, None)
        self._nodes.pop(node.id, None)
        self._last_attempt.pop(node.id, None)
        for seq, ro in sorted(self._readonly.items()):
            if ro == node:
                conn = self._readonly_conns.get(seq)
        if conn is not None:
            self.network.break_connection(conn)

    def send(self, node: Node, message: Any) -> bool:
        conn = self._conn_for(node)
        if conn is None or not conn.alive:
            return False
        if not self._side_up(conn):
            return False
        self.network.transmit(conn, self.address, message)
        return True

    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        self.setOnMessageReceivedCallback(None)
        self.setOnNodeConnectedCallback(None)
        self.setOnNodeDisconnectedCallback(None)
        self.setOnReadonlyNodeConnectedCallback(None)
        self.setOnReadonlyNodeDisconnectedCallback(None)
        self.network.detach(self)

    # -- helpers ----------------------------------------------------------------------------
    def connections(self) -> list[Connection]:
        found = {c.seq: c for c in self._conns.values()}
        found.update(self._readonly_conns)
        return [found[k] for k in sorted(found) if found[k].alive]

    def _conn_for(self, node: Node) -> Connection | None:
        conn = self._conns.get(node.id)
        if conn is not None:
            return conn
        for seq, ro in self._readonly.items():
            if ro == node:
                return self._readonly_conns.get(seq)
        return None

    def _side_up(self, conn: Connection) -> bool:
        return conn.caller_up if conn.caller == self.address else conn.callee_node is not None

    def _should_connect(self, address: str) -> bool:
        return not self.voter or self.address > address

    def _on_tick(self) -> None:
        """TCPTransport._connectIfNecessary: (re)connect, at most every connectionRetryTime."""
        if self.destroyed:
            return
        now = self.network.loop.time()
        for address in sorted(self._nodes):
            if not self._should_connect(address):
                continue
            conn = self._conns.get(address)
            if conn is not None and conn.alive:
                continue
            last = self._last_attempt.get(address)
            if last is not None and now - last < self._retry_s:
                continue
            self._last_attempt[address] = now
            self._conns[address] = self.network.connect(self, address)

    # -- what the network tells this side ---------------------------------------------------
    def on_established(self, conn: Connection) -> None:
        """Our outgoing connection is up (TCPTransport._onOutgoingConnected, no encryption)."""
        node = self._nodes.get(conn.callee)
        if node is None or self._conns.get(conn.callee) is not conn:
            self.network.break_connection(conn)
            return
        self._onNodeConnected(node)
        self.kick()

    def on_data(self, conn: Connection, message: Any) -> None:
        if self.destroyed:
            return
        if isinstance(message, tuple) and len(message) == 3 and message[0] == HELLO:
            self._on_hello(conn, message[1], message[2])
            return
        node = self._node_of(conn)
        if node is None:
            return
        self._onMessageReceived(node, message)
        if not self.destroyed:
            self.after_message()
        self.kick()

    def _node_of(self, conn: Connection) -> Node | None:
        if conn.caller == self.address:
            return self._nodes.get(conn.callee)
        if conn.seq in self._readonly:
            return self._readonly[conn.seq]
        return conn.callee_node

    def _on_hello(self, conn: Connection, caller: str, kind: str) -> None:
        """TCPTransport._onIncomingMessageReceived: identify the caller, or hang up."""
        if kind == "readonly":
            node = Node(str(self._readonly_counter))
            self._readonly_counter += 1
            conn.callee_node = node
            self._readonly[conn.seq] = node
            self._readonly_conns[conn.seq] = conn
            self._onReadonlyNodeConnected(node)
            self.kick()
            return
        known = self._nodes.get(caller)
        if known is None or not self.voter:
            self.network.break_connection(conn)
            return
        old = self._conns.get(caller)
        conn.callee_node = known
        self._conns[caller] = conn
        if old is not None and old is not conn:
            self.network.break_connection(old)
        self._onNodeConnected(known)
        self.kick()

    def on_closed(self, conn: Connection) -> None:
        """The connection reset (TCPTransport._onDisconnected)."""
        if conn.seq in self._readonly_conns:
            node = self._readonly.pop(conn.seq)
            del self._readonly_conns[conn.seq]
            self._onReadonlyNodeDisconnected(node)
        else:
            peer = conn.callee if conn.caller == self.address else conn.caller
            if self._conns.get(peer) is conn:
                del self._conns[peer]
                node = self._nodes.get(peer)
                was_up = self._side_up(conn)
                if node is not None and (was_up or conn.caller == self.address):
                    self._onNodeDisconnected(node)
        if not self.destroyed:
            self.kick()


def factory(network: SimNetwork, address: str, kick: Callable[[], None],
            after_message: Callable[[], None]) -> Callable[..., Any]:
    """The ``transportClass`` for SyncObj: a SimTransport bound to this node."""
    return functools.partial(SimTransport, network, address, kick, after_message)
