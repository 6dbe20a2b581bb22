"""The join handshake between a joining node and a member (discovery/handshake.py, joiner.py,
api/join.py) over real HTTP on loopback; the member's node is a stand-in (this is a unit test
of the handshake, the namespaces test runs it between real daemons)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from swarmnode.api import join
from swarmnode.discovery.handshake import NONCE_TTL_S, Challenges, Identity, Outcome
from swarmnode.discovery.joiner import Candidate, handshake_with, should_bootstrap
from swarmnode.errors import UserError
from swarmnode.state.records import DISCOVERY_SOURCES

SECRET = "lan-secret-0123456789abcdef"
ME = Identity("n9", "10.0.0.9:7701", "http://10.0.0.9:7700", 8)


@dataclass
class Refusals:
    refused: dict[str, str] = field(default_factory=dict)

    def refuse(self, node_id: str, url: str, reason: str) -> None:
        self.refused[node_id] = reason


class StandIn:
    """The attributes of a Node that api/join.py uses."""

    def __init__(self, secret: str = SECRET, cluster: str = "lan") -> None:
        self.node_id = "n1"
        self.config = type("C", (), {"cluster": type("K", (), {"name": cluster,
                                                                 "secret": secret})()})()
        self.challenges = Challenges()
        self.lan = Refusals()
        self.ready, self.registered = asyncio.Event(), asyncio.Event()
        self.ready.set()
        self.registered.set()
        self.submitted: list[dict[str, Any]] = []
        self.log = type("L", (), {"members": lambda _self: {"10.0.0.1:7701": True}})()

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.submitted.append(cmd)
        return {"ok": True, "role": "nonvoter", "voters": ["10.0.0.1:7701"]}


async def serve(node: Any, join_handler: Any = None) -> TestServer:
    async def challenge(request: web.Request) -> web.Response:
        return await join.post_challenge(request, node)

    async def do_join(request: web.Request) -> web.Response:
        try:
            return await (join_handler or join.post_join)(request, node, await request.json())
        except UserError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)

    app = web.Application()
    app.router.add_post("/api/v1/join/challenge", challenge)
    app.router.add_post("/api/v1/join", do_join)
    server = TestServer(app)
    await server.start_server()
    return server


async def shake(server: TestServer, secret: str = SECRET, cluster: str = "lan") -> Outcome:
    async with aiohttp.ClientSession() as session:
        cand = Candidate(str(server.make_url("")), "mdns", "n1", True)
        return await handshake_with(session, cand, ME, secret, cluster)


async def test_a_node_with_the_secret_is_admitted_and_verifies_the_member() -> None:
    node = StandIn()
    server = await serve(node)
    try:
        out = await shake(server)
    finally:
        await server.close()
    assert (out.status, out.peer_id, out.role, out.voters) == (
        "admitted", "n1", "nonvoter", ("10.0.0.1:7701",))
    [cmd] = node.submitted
    assert (cmd["op"], cmd["node_id"], cmd["raft"], cmd["cores"], cmd["discovery"]) == (
        "admit_node", "n9", "10.0.0.9:7701", 8, "mdns")
    assert SECRET not in repr(cmd)


async def test_a_wrong_secret_is_refused_recorded_and_admits_nothing() -> None:
    node = StandIn()
    server = await serve(node)
    try:
        out = await shake(server, secret="some-other-secret-0123456789")
    finally:
        await server.close()
    assert out.status == "refused" and out.peer_member
    assert "cluster.secret differs" in out.message
    assert node.submitted == [] and "n9" in node.lan.refused


async def test_another_cluster_is_foreign() -> None:
    server = await serve(StandIn(cluster="other"))
    try:
        out = await shake(server)
    finally:
        await server.close()
    assert out.status == "foreign" and "other" in out.message


async def test_an_answer_not_signed_with_our_secret_is_not_trusted() -> None:
    """Something advertising our cluster name that answers 'admitted' without knowing the
    secret cannot hand us a membership."""
    async def impostor(request: web.Request, node: Any, body: dict[str, Any]) -> web.Response:
        return web.json_response({"admitted": True, "member": True, "node_id": "n1",
                                  "role": "voter", "voters": ["6.6.6.6:7701"], "proof": "00" * 32})

    server = await serve(StandIn(), impostor)
    try:
        out = await shake(server)
    finally:
        await server.close()
    assert out.status == "refused" and "not signed with our cluster secret" in out.message


async def test_a_member_not_yet_in_its_swarm_verifies_without_admitting() -> None:
    node = StandIn()
    node.registered.clear()
    server = await serve(node)
    try:
        out = await shake(server)
    finally:
        await server.close()
    assert (out.status, out.peer_member) == ("verified", True) and node.submitted == []


def test_a_challenge_is_single_use_and_expires() -> None:
    ch = Challenges()
    nonce = ch.issue(now=100.0)
    assert ch.take(nonce, now=101.0)
    assert not ch.take(nonce, now=101.0)  # replayed
    late = ch.issue(now=100.0)
    assert not ch.take(late, now=100.0 + NONCE_TTL_S + 1)
    assert not ch.take(None, now=100.0)


@pytest.mark.parametrize("field_name,value,message", [
    ("node_id", "../etc", "'node_id' must be a node id"),
    ("raft", "no-port", "must be HOST:PORT"),
    ("url", "file:///etc/passwd", "'url' must be an http(s) URL"),
    ("cores", 0, "'cores' must be an integer from 1 to 4096"),
    ("discovery", "pigeon", "'discovery' must be one of"),
    ("proof", "not hex!", "'proof' must be a hex token"),
    ("admit", "yes", "'admit' must be true or false"),
])
def test_join_requests_are_validated_field_by_field(field_name: str, value: Any,
                                                    message: str) -> None:
    body, _ = ME.request(SECRET, "lan", "ab" * 16, DISCOVERY_SOURCES[1], True)
    join.parse_join(body)  # the real request is valid
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        join.parse_join({**body, field_name: value})


def o(status: str, peer: str, member: bool = False) -> Outcome:
    return Outcome(status, f"http://{peer}", peer, member)


def test_only_the_lowest_verified_fresh_node_starts_the_swarm_after_waiting() -> None:
    fresh = {"a": o("verified", "n2"), "b": o("verified", "n3")}
    assert not should_bootstrap("n1", fresh, waited_s=2.0, wait_s=5.0)
    assert should_bootstrap("n1", fresh, waited_s=5.0, wait_s=5.0)
    assert not should_bootstrap("n2", {"a": o("verified", "n1")}, 9.0, 5.0)
    assert should_bootstrap("n1", {}, 5.0, 5.0)  # alone on the LAN: the first node
    # A member of our swarm exists (failing right now, or not admitting yet): wait for it.
    assert not should_bootstrap("n1", {"a": o("error", "n5", member=True)}, 60.0, 5.0)
    # Members with our name refuse us: our secret is wrong; never start a rival swarm.
    assert not should_bootstrap("n1", {"a": o("refused", "n5", member=True)}, 60.0, 5.0)
    # A fresh node with another secret, or another cluster, does not hold us back.
    assert should_bootstrap("n2", {"a": o("refused", "n1"), "b": o("foreign", "n0")}, 5.0, 5.0)
