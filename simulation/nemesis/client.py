"""The operator's HTTP calls to each node, over its never-faulted link from the root namespace.

Every call has a short deadline and answers ``None`` (or status 0) when the node does not
answer — a paused, killed or restarting node is normal here, not an error.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from swarmnode.state import SwarmState


@dataclass(frozen=True)
class FinalState:
    """A replica's whole state as ``GET /api/v1/state`` returned it."""

    node: str
    applied_index: int
    digest: str  # what the node said (X-State-Digest)
    state: SwarmState


class Operator:
    """HTTP to ``http://127.0.0.1:<operator port>`` of each node, with the cluster secret."""

    def __init__(self, ports: dict[str, int], secret: str) -> None:
        self.ports = ports
        self.secret = secret
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pooling: a pooled connection to a node that was killed is a dead socket.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, node: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}{path}"

    async def call(self, node: str, method: str, path: str, body: dict[str, Any] | None = None,
                   timeout: float = 2.0) -> tuple[int, Any]:
        """(status, parsed JSON or raw bytes); (0, reason) when the node does not answer."""
        headers = {"Authorization": f"Bearer {self.secret}"}
        try:
            async with self.session.request(
                    method, self.url(node, path), json=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                if resp.content_type == "application/json":
                    return resp.status, json.loads(raw)
                return resp.status, raw
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            return 0, f"{type(exc).__name__}: {exc}"

    async def status(self, node: str, timeout: float = 1.0) -> dict[str, Any] | None:
        code, body = await self.call(node, "GET", "/api/v1/status", timeout=timeout)
        return body if code == 200 and isinstance(body, dict) else None

    async def final_state(self, node: str) -> FinalState | None:
        try:
            async with self.session.get(
                    self.url(node, "/api/v1/state"),
                    headers={"Authorization": f"Bearer {self.secret}"},
                    timeout=aiohttp.ClientTimeout(total=30)) as resp:
                if resp.status != 200:
                    return None
                raw = await resp.read()
                return FinalState(node, int(resp.headers["X-Applied-Index"]),
                                  resp.headers["X-State-Digest"], SwarmState.from_bytes(raw))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, KeyError, ValueError):
            return None

    async def has_object(self, node: str, sha256: str) -> bool | None:
        """True if the node's store has the object (HEAD: 200), False on 404, None if the node
        does not answer."""
        code, _ = await self.call(node, "HEAD", f"/api/v1/objects/{sha256}", timeout=30)
        if code == 0:
            return None
        return code == 200
