"""The member's side of the join handshake (see swarmnode/discovery/handshake.py), and the
liveness ping the leader sends to workers.

These routes answer before the node is in a swarm (a fresh node is asked by other fresh nodes
whether it shares their secret) and without the bearer secret: the handshake proves the
secret with an HMAC instead, so it never crosses the network.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from aiohttp import web

from swarmnode.config import NAME_PATTERN, check_raft_address
from swarmnode.discovery import handshake
from swarmnode.errors import UserError
from swarmnode.node.commands import command
from swarmnode.node.runtime import Node
from swarmnode.state.records import DISCOVERY_SOURCES

log = logging.getLogger(__name__)

#: Routes that work before the node serves (and without the bearer secret).
OPEN_ROUTES = ("/api/v1/ping", "/api/v1/join/challenge", "/api/v1/join")
_TOKEN = re.compile(r"^[0-9a-f]{16,128}$")


def _field(body: dict[str, Any], key: str, check: Any, what: str) -> Any:
    value = body.get(key)
    if not check(value):
        raise UserError(f"join: '{key}' must be {what}")
    return value


def parse_join(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a join request completely before anything is done with it."""
    def is_str(v: Any) -> bool:
        return isinstance(v, str)

    out = {
        "cluster": _field(body, "cluster", lambda v: is_str(v) and len(v) <= 64, "a string"),
        "node_id": _field(body, "node_id", lambda v: is_str(v) and NAME_PATTERN.match(v),
                          "a node id (letters, digits, '.', '_', '-')"),
        "raft": check_raft_address(_field(body, "raft", is_str, "HOST:PORT"), "join: 'raft'"),
        "url": _field(body, "url", lambda v: is_str(v) and len(v) <= 256 and (
            v.startswith("http://") or v.startswith("https://")), "an http(s) URL"),
        "cores": _field(body, "cores", lambda v: isinstance(v, int) and not isinstance(v, bool)
                        and 1 <= v <= 4096, "an integer from 1 to 4096"),
        "discovery": _field(body, "discovery", lambda v: v in DISCOVERY_SOURCES,
                            f"one of {', '.join(DISCOVERY_SOURCES)}"),
        "admit": _field(body, "admit", lambda v: isinstance(v, bool), "true or false"),
    }
    for key in ("nonce", "client_nonce", "proof"):
        out[key] = _field(body, key, lambda v: is_str(v) and _TOKEN.match(v), "a hex token")
    return out


async def get_ping(request: web.Request, node: Node) -> web.Response:
    return web.json_response({"node_id": node.node_id, "ready": node.ready.is_set()})


async def post_challenge(request: web.Request, node: Node) -> web.Response:
    return web.json_response({"cluster": node.config.cluster.name, "node_id": node.node_id,
                              "member": node.ready.is_set(),
                              "nonce": node.challenges.issue(time.monotonic())})


async def post_join(request: web.Request, node: Node, body: dict[str, Any]) -> web.Response:
    cfg = node.config
    req = parse_join(body)
    if req["cluster"] != cfg.cluster.name:
        raise UserError(f"this node belongs to cluster {cfg.cluster.name!r}, not "
                        f"{req['cluster']!r}", 403)
    if not node.challenges.take(req["nonce"], time.monotonic()):
        raise UserError("join: unknown or expired challenge; ask for a new one", 403)
    expected = handshake.client_proof(cfg.cluster.secret, cfg.cluster.name, req["nonce"],
                                      req["client_nonce"], req["node_id"], req["raft"],
                                      req["url"])
    if not handshake.same(expected, req["proof"]):
        reason = "its cluster secret differs from ours"
        node.lan.refuse(req["node_id"], req["url"], reason)
        log.warning("refused node %s (%s): %s", req["node_id"], req["url"], reason)
        raise UserError(f"join refused by {node.node_id}: the proof of the cluster secret does "
                        f"not match — this node's cluster.secret differs from swarm "
                        f"{cfg.cluster.name!r}'s", 403)
    node.lan.refused.pop(req["node_id"], None)
    role, voters, admitted = "", [], False
    if req["admit"] and node.registered.is_set():  # configured first: max_voters applies
        result = await node.submit(command(
            "admit_node", node_id=req["node_id"], raft=req["raft"], url=req["url"],
            cores=req["cores"], discovery=req["discovery"]))
        if not result.get("ok"):
            raise UserError(f"join: {result.get('error')}", 409)
        role, admitted = str(result["role"]), True
        voters = sorted(set(result["voters"]) | set(node.log.members()))
        log.info("admitted node %s (%s, via %s) as %s", req["node_id"], req["raft"],
                 req["discovery"], role)
    proof = handshake.server_proof(cfg.cluster.secret, cfg.cluster.name, req["client_nonce"],
                                   req["nonce"], node.node_id, role, voters)
    return web.json_response({"admitted": admitted, "member": node.ready.is_set(),
                              "node_id": node.node_id, "role": role, "voters": voters,
                              "proof": proof})
