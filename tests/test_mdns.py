"""mDNS discovery: TXT parsing offline, then real peers in network namespaces on one bridge."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from netns import Host, Lan, lan_or_skip
from zeroconf import BadTypeInNameException
from zeroconf._utils.name import service_type_name

from swarmnode.discovery.mdns import (SERVICE_TYPE, Advert, MdnsDiscovery, Sighting, advert_from_txt,
                                      advert_to_txt, instance_name, resolve_interfaces)
from swarmnode.errors import UserError

PEER = Path(__file__).with_name("mdns_peer.py")
GOOD = {b"c": b"alpha", b"n": b"n1", b"a": b"8100", b"r": b"9100", b"v": b"0.1.0", b"k": b"",
        b"m": b"0"}
MISSING = object()


def make_advert(cluster: str, node_id: str, port: int = 8100, **kw: Any) -> Advert:
    fields: dict[str, Any] = {"version": "0.1.0", "key": "", "member": False, **kw}
    return Advert(cluster, node_id, api_port=port, raft_port=port + 1000, **fields)


# ---------------------------------------------------------------- offline

def test_txt_round_trips_with_the_record_addresses() -> None:
    advert = make_advert("alpha", "build-1.lan", member=True, key="SHA256:abcd")
    txt = {k.encode(): v.encode() for k, v in advert_to_txt(advert).items()}
    assert advert_from_txt(txt, ["10.0.0.5"]) == replace(advert, addresses=("10.0.0.5",))


@pytest.mark.parametrize("key, value", [
    (b"c", MISSING), (b"k", MISSING),
    (b"c", b""),                          # empty cluster
    (b"n", b"\xff\xfe"),                  # not UTF-8
    (b"a", b"0"), (b"a", b"65536"), (b"a", b"http"), (b"a", b"+80"), (b"a", "٨٠".encode()),
    (b"r", b""),
    (b"m", b"yes"),
    (b"m", None),                         # a key without "="
])
def test_malformed_txt_is_ignored(key: bytes, value: object) -> None:
    txt: dict[bytes, Any] = dict(GOOD)
    if value is MISSING:
        del txt[key]
    else:
        txt[key] = value
    assert advert_from_txt(txt, ["10.0.0.5"]) is None


def test_unknown_txt_keys_are_ignored() -> None:
    assert advert_from_txt({**GOOD, b"zz": b"later", b"flag": None}) == make_advert("alpha", "n1")


def test_instance_names_fit_dns_sd_with_room_for_a_rename() -> None:
    long = make_advert("clüster" * 10, "ñode." * 20)
    name = instance_name(long)
    assert len(name.encode()) <= 56 and "." not in name
    service_type_name(f"{name}-99.{SERVICE_TYPE}")  # what zeroconf checks after renaming
    assert instance_name(make_advert("a", "n1")) != instance_name(make_advert("b", "n1"))
    with pytest.raises(BadTypeInNameException):  # why we truncate at all
        service_type_name(f"{'x' * 64}.{SERVICE_TYPE}")


def test_interfaces_resolve_by_name_and_address_and_unknown_ones_are_named() -> None:
    assert "127.0.0.1" in resolve_interfaces(("lo",))
    assert resolve_interfaces(("127.0.0.1",)) == ("127.0.0.1",)
    with pytest.raises(UserError, match=r"unknown network interface 'nope0'.*\blo\b"):
        MdnsDiscovery(make_advert("a", "n1"), ("nope0",))
    with pytest.raises(UserError, match="192.0.2.55"):
        resolve_interfaces(("192.0.2.55",))


def test_api_url_prefers_ipv4() -> None:
    def url(*addresses: str) -> str:
        advert = replace(make_advert("a", "n1", port=8123), addresses=addresses)
        return Sighting(advert, "n1 [a]", 0.0, 0.0).api_url
    assert url("fd00::5", "10.0.0.7") == "http://10.0.0.7:8123"
    assert url("fd00::5") == "http://[fd00::5]:8123"


# ---------------------------------------------------------------- on a namespace LAN

class Peer:
    """An mdns_peer.py child in a namespace; its JSON lines are read on a thread."""

    def __init__(self, host: Host, advert: Advert, log: Path, interfaces: tuple[str, ...]) -> None:
        self.host, self.advert, self.log = host, advert, log
        self.sightings: dict[str, dict[str, Any]] = {}
        self.instance: str | None = None
        self.updates = 0
        self.closed = False
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with log.open("w") as err:
            self.proc = host.popen([sys.executable, str(PEER), json.dumps(asdict(advert)), *interfaces],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                   text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def key(self) -> tuple[str, str]:
        return self.advert.cluster, self.advert.node_id

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._events.put(json.loads(line))
        self._events.put(None)

    def _apply(self, event: dict[str, Any] | None) -> None:
        if event is None:
            raise AssertionError(f"{self.host.name}: peer exited\n{self.log.read_text()[-3000:]}")
        self.sightings = event.get("sightings", self.sightings)
        self.instance = event.get("started", self.instance)
        self.updates += bool(event.get("updated"))
        self.closed = self.closed or bool(event.get("closed"))

    def within(self, cond: Callable[[], bool], timeout: float) -> bool:
        """Whether cond holds by the deadline, re-checked after every line the peer prints."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                while True:  # catch up with what the peer already printed
                    self._apply(self._events.get_nowait())
            except queue.Empty:
                pass
            if cond():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                self._apply(self._events.get(timeout=remaining))
            except queue.Empty:
                pass

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        if not self.within(cond, timeout):
            pytest.fail(f"{self.host.name}: no {what} within {timeout} s; sees {self.nodes()}\n"
                        f"{self.log.read_text()[-3000:]}")

    def nodes(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Sightings keyed by (cluster, node id)."""
        return {(s["advert"]["cluster"], s["advert"]["node_id"]): s for s in self.sightings.values()}

    def sees(self, *peers: Peer) -> bool:
        return set(self.nodes()) == {p.key for p in peers}

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def update(self, **changes: Any) -> None:
        self.advert = replace(self.advert, **changes)
        done = self.updates + 1
        self.send({"update": asdict(self.advert)})
        self.wait(lambda: self.updates >= done, "update acknowledged")

    def stop(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.close()  # EOF: the peer unregisters (goodbye) and exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def lan() -> Iterator[Lan]:
    with lan_or_skip() as lan:
        yield lan


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def start(host: Host, advert: Advert, interfaces: tuple[str, ...] = ()) -> Peer:
        peers.append(Peer(host, advert, tmp_path / f"{host.name}.log", interfaces))
        return peers[-1]

    yield start
    for peer in peers:
        peer.stop()


def assert_sighting(seer: Peer, peer: Peer) -> None:
    seen = seer.nodes()[peer.key]
    assert {**seen["advert"], "addresses": ()} == asdict(replace(peer.advert, addresses=()))
    assert seen["advert"]["addresses"] == [peer.host.ip]
    assert seen["api_url"] == f"http://{peer.host.ip}:{peer.advert.api_port}"
    assert not seen["gone"]


@pytest.mark.slow
def test_three_hosts_see_each_other_across_clusters(lan: Lan, spawn: Callable[..., Peer]) -> None:
    a, b, c = lan.add_host("a"), lan.add_host("b"), lan.add_host("c")
    pa = spawn(a, make_advert("alpha", "n1", 8101), ("eth0",))   # bound by interface name
    pb = spawn(b, make_advert("alpha", "n2", 8102), (b.ip,))     # bound by address
    pc = spawn(c, make_advert("beta", "n1", 8103))               # all interfaces; same node id
    for seer, others in ((pa, (pb, pc)), (pb, (pa, pc)), (pc, (pa, pb))):
        seer.wait(lambda: seer.sees(*others), "sighting of both others")
        for other in others:
            assert_sighting(seer, other)
    assert len({pa.instance, pb.instance, pc.instance}) == 3


@pytest.mark.slow
def test_advert_updates_and_goodbyes_reach_the_others(lan: Lan, spawn: Callable[..., Peer]) -> None:
    a, b, c = lan.add_host("a"), lan.add_host("b"), lan.add_host("c")
    pa, pb, pc = (spawn(h, make_advert("alpha", f"n-{h.name}")) for h in (a, b, c))
    for seer in (pb, pc):
        seer.wait(lambda: pa.key in seer.nodes(), "sighting of a")
    pa.update(member=True, key="SHA256:0f1e2d")   # a joined a swarm
    for seer in (pb, pc):
        seer.wait(lambda: seer.nodes()[pa.key]["advert"]["member"], "a's member flag")
        assert_sighting(seer, pa)
    pa.send({"close": True})
    for seer in (pb, pc):
        seer.wait(lambda: seer.nodes()[pa.key]["gone"], "a's goodbye")


@pytest.mark.slow
def test_a_node_bound_to_another_interface_is_not_on_the_lan(lan: Lan,
                                                              spawn: Callable[..., Peer]) -> None:
    a, b, c, d = (lan.add_host(n) for n in "abcd")
    lan.link_down(d)  # d is reachable only over a private link to c
    c.run(["ip", "link", "add", "x0", "type", "veth", "peer", "name", "x0", "netns", d.netns],
          check=True)
    for host, ip in ((c, "10.78.0.1"), (d, "10.78.0.2")):
        host.run(["ip", "addr", "add", f"{ip}/24", "dev", "x0"], check=True)
        host.run(["ip", "link", "set", "x0", "up"], check=True)
    pa, pb = spawn(a, make_advert("alpha", "a")), spawn(b, make_advert("alpha", "b"))
    pc = spawn(c, make_advert("alpha", "c"), ("x0",))
    pd = spawn(d, make_advert("alpha", "d"), ("x0",))
    pc.wait(lambda: pc.sees(pd), "sighting of d over x0")  # c's mDNS works, on x0 only
    pd.wait(lambda: pd.sees(pc), "sighting of c over x0")
    assert pc.nodes()[pd.key]["api_url"] == "http://10.78.0.2:8100"
    pa.wait(lambda: pa.sees(pb), "sighting of b")
    pb.wait(lambda: pb.sees(pa), "sighting of a")
    end = time.monotonic() + 2.0  # nothing leaks across within a few announcement rounds
    for peer in (pa, pb, pc, pd):
        assert not peer.within(lambda: len(peer.nodes()) > 1, end - time.monotonic()), peer.nodes()


@pytest.mark.slow
def test_link_down_and_up(lan: Lan, spawn: Callable[..., Peer]) -> None:
    a, b = lan.add_host("a"), lan.add_host("b")
    pa, pb = spawn(a, make_advert("alpha", "a")), spawn(b, make_advert("alpha", "b"))
    pa.wait(lambda: pa.sees(pb), "sighting of b")
    pb.wait(lambda: pb.sees(pa), "sighting of a")

    lan.link_down(b)
    pb.update(key="k1")  # announcing on a dead link neither crashes nor hangs
    pa.update(member=True)
    assert not pa.within(lambda: pa.nodes()[pb.key]["advert"]["key"] == "k1", 2.0)
    # mDNS is a hint: without a goodbye both keep listing each other (records live for minutes)
    assert pa.sees(pb) and not pa.nodes()[pb.key]["gone"]
    assert pb.sees(pa) and not pb.nodes()[pa.key]["gone"]

    lan.link_up(b)
    pb.update(key="k2")
    pa.wait(lambda: pa.nodes()[pb.key]["advert"]["key"] == "k2", "b's update after link up")
    pa.update(key="k3")
    pb.wait(lambda: pb.nodes()[pa.key]["advert"]["key"] == "k3", "a's update after link up")
    assert pa.proc.poll() is None and pb.proc.poll() is None
