"""The node's HTTP face: JSON REST under /api/v1/ and the binhost under /binhost/.

Every input is validated before anything changes; every error is JSON `{"error": "..."}`
with a 4xx status and one clear sentence. Mutating calls need the cluster secret as a bearer
token. Unexpected failures are logged here and answered with a 500 that names the node log.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from swarmnode.api import join
from swarmnode.errors import UserError
from swarmnode.node import operations as ops
from swarmnode.node.runtime import Node
from swarmnode.store import check_sha256

log = logging.getLogger(__name__)

NODE: web.AppKey[Node] = web.AppKey("node", Node)
MAX_BODY = 64 * 1024  # JSON bodies are small; anything bigger is a mistake or an attack
MAX_TARGETS = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except UserError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal error on this node; see its log (journalctl/openrc log or "
                      "the serve command's stderr)"}, status=500)


#: GET routes that are cluster traffic (store objects: build logs and artifacts of any cycle)
#: or reveal everything (the whole replicated state, for the nemesis checker and debugging).
PEER_ONLY = ("/api/v1/objects/", "/api/v1/state")


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Until the node is in its swarm and caught up, only the join handshake and the ping
    answer; everything else says what the node is doing (never stale or empty state)."""
    node = request.app[NODE]
    if not node.ready.is_set() and request.path not in join.OPEN_ROUTES:
        raise UserError(f"node {node.node_id} is not serving yet: {node.joining_status()}", 503)
    return await handler(request)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mutating calls and peer traffic need `Authorization: Bearer <cluster secret>` (the join
    handshake proves the secret with an HMAC instead)."""
    if request.path in join.OPEN_ROUTES:
        return await handler(request)
    if request.method not in ("GET", "HEAD", "OPTIONS") or request.path.startswith(PEER_ONLY):
        secret = request.app[NODE].config.cluster.secret
        given = request.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), secret.encode()):
            raise UserError("missing or wrong cluster secret: pass --secret, set "
                            "SWARMNODE_SECRET, or use --config with the cluster's config file", 401)
    return await handler(request)


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length and request.content_length > MAX_BODY:
        raise UserError(f"request body too large (limit {MAX_BODY} bytes)", 413)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise UserError(f"request body too large (limit {MAX_BODY} bytes)", 413)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UserError("request body must be a JSON object")
    return body


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value or len(value) > 256):
        raise UserError(f"'{key}' must be a non-empty string of at most 256 characters")
    return value


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise UserError(f"'{key}' must be true or false")
    return value


def _query_profile(request: web.Request) -> str | None:
    return request.query.get("profile") or None


# -- handlers --------------------------------------------------------------------------------
async def get_status(request: web.Request) -> web.Response:
    return web.json_response(ops.status(request.app[NODE]))


async def post_cycle(request: web.Request) -> web.Response:
    body = await _body(request)
    targets = body.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise UserError("'targets' must be a list of atoms or sets, e.g. [\"@world\"]")
    if len(targets) > MAX_TARGETS:
        raise UserError(f"too many targets (limit {MAX_TARGETS})")
    result = await ops.fresh(request.app[NODE], _opt_str(body, "profile"), targets)
    return web.json_response(result, status=201)


async def get_cycle(request: web.Request) -> web.Response:
    cycle_id = request.match_info["cycle_id"]
    node = request.app[NODE]
    if cycle_id == "latest":
        return web.json_response(ops.latest_cycle_view(node, _query_profile(request)))
    return web.json_response(ops.cycle_view(node, cycle_id))


async def get_verify(request: web.Request) -> web.Response:
    return web.json_response(await ops.verify(request.app[NODE], _query_profile(request)))


async def post_finalize(request: web.Request) -> web.Response:
    body = await _body(request)
    result = await ops.finalize(request.app[NODE], _opt_str(body, "profile"), _bool(body, "force"))
    return web.json_response(result)


async def post_rollback(request: web.Request) -> web.Response:
    body = await _body(request)
    result = await ops.rollback(request.app[NODE], _opt_str(body, "profile"),
                                _opt_str(body, "release"))
    return web.json_response(result)


async def post_reset(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(await ops.reset(request.app[NODE], _opt_str(body, "profile")))


async def post_history(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(await ops.learn_history(
        request.app[NODE], body.get("packages"), body.get("jobs"), body.get("source", "")))


async def get_log(request: web.Request) -> web.Response:
    data = await ops.build_log(request.app[NODE], _query_profile(request),
                               request.match_info["cpv"],
                               local_only=request.query.get("local") == "1")
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def get_releases(request: web.Request) -> web.Response:
    return web.json_response(ops.releases(request.app[NODE], _query_profile(request)))


async def get_object(request: web.Request) -> web.StreamResponse:
    """A store object for a peer (replication, release materialisation)."""
    node = request.app[NODE]
    sha = check_sha256(request.match_info["sha256"])
    path = await asyncio.to_thread(node.store.path, sha)  # verified: never serves bad bytes
    return web.FileResponse(path)


async def get_state(request: web.Request) -> web.Response:
    """The replicated state as this replica holds it (msgpack, `SwarmState.from_bytes`), with
    its applied index: what an external checker compares across nodes."""
    node = request.app[NODE]
    return web.Response(body=node.log.state.to_bytes(), content_type="application/msgpack",
                        headers={"X-Applied-Index": str(node.log.applied_index),
                                 "X-State-Digest": node.log.state.digest()})


async def post_sync(request: web.Request) -> web.Response:
    await _body(request)
    return web.json_response(await ops.request_sync(request.app[NODE]), status=202)


async def get_nodes(request: web.Request) -> web.Response:
    return web.json_response(ops.nodes(request.app[NODE]))


async def post_nodes(request: web.Request) -> web.Response:
    body = await _body(request)
    action, target = _opt_str(body, "action"), _opt_str(body, "address")
    if action is None or target is None:
        raise UserError("give 'action' (add, remove, promote or demote) and 'address' (a node "
                        "id, or a voter's Raft HOST:PORT)")
    return web.json_response(await ops.change_membership(request.app[NODE], action, target))


async def get_ping(request: web.Request) -> web.Response:
    return await join.get_ping(request, request.app[NODE])


async def post_join_challenge(request: web.Request) -> web.Response:
    await _body(request)
    return await join.post_challenge(request, request.app[NODE])


async def post_join(request: web.Request) -> web.Response:
    return await join.post_join(request, request.app[NODE], await _body(request))


async def get_key(request: web.Request) -> web.Response:
    return web.Response(text=request.app[NODE].public_key, content_type="application/pgp-keys")


async def get_binhost(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    profile = request.match_info["profile"]
    node.config.profile(profile)  # 404 for an unknown profile
    # Off the loop: the first read of an artifact hashes it (a large package takes a while).
    path = await asyncio.to_thread(node.binhost.resolve, profile, request.match_info["path"])
    return web.FileResponse(path)


def create_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[errors, gate, auth], client_max_size=MAX_BODY)
    app[NODE] = node
    app.router.add_get("/api/v1/status", get_status)
    app.router.add_post("/api/v1/cycles", post_cycle)
    app.router.add_get("/api/v1/cycles/{cycle_id}", get_cycle)
    app.router.add_get("/api/v1/verify", get_verify)
    app.router.add_post("/api/v1/finalize", post_finalize)
    app.router.add_post("/api/v1/rollback", post_rollback)
    app.router.add_post("/api/v1/reset", post_reset)
    app.router.add_post("/api/v1/history", post_history)
    app.router.add_get("/api/v1/logs/{cpv:.+}", get_log)
    app.router.add_get("/api/v1/releases", get_releases)
    app.router.add_get("/api/v1/key", get_key)
    app.router.add_get("/api/v1/objects/{sha256}", get_object)
    app.router.add_post("/api/v1/sync", post_sync)
    app.router.add_get("/api/v1/state", get_state)
    app.router.add_get("/api/v1/nodes", get_nodes)
    app.router.add_post("/api/v1/nodes", post_nodes)
    app.router.add_get("/api/v1/ping", get_ping)
    app.router.add_post("/api/v1/join/challenge", post_join_challenge)
    app.router.add_post("/api/v1/join", post_join)
    app.router.add_get("/binhost/{profile}/{path:.*}", get_binhost)
    return app
