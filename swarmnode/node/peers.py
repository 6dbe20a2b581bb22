"""Copying store objects between nodes: peer HTTP fetch, verified by sha256 before use.

Cluster traffic, so every request carries the cluster secret. A download is hashed while it
is written to the store's tmp dir; bytes that do not match the name they were asked for are
thrown away and the next holder is tried — a corrupt or malicious peer cannot plant anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from pathlib import Path

import aiohttp

from swarmnode.node.decisions import Fetch
from swarmnode.store import ArtifactStore

log = logging.getLogger(__name__)

MAX_OBJECT = 16 << 30  # no artifact or log is bigger; refuse a peer that claims otherwise


class PeerFetcher:
    def __init__(self, store: ArtifactStore, secret: str, timeout_s: float = 600.0) -> None:
        self.store = store
        self._headers = {"Authorization": f"Bearer {secret}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5.0)
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, asyncio.Task[bool]] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def fetch(self, item: Fetch, urls: list[str]) -> bool:
        """Store ``item`` locally from the first of ``urls`` that serves the right bytes.
        Concurrent calls for one object share a single download."""
        task = self._inflight.get(item.sha256)
        if task is None:
            task = asyncio.create_task(self._fetch(item, urls))
            self._inflight[item.sha256] = task
            task.add_done_callback(lambda _t: self._inflight.pop(item.sha256, None))
        return await asyncio.shield(task)

    async def _fetch(self, item: Fetch, urls: list[str]) -> bool:
        if await asyncio.to_thread(self.store.has, item.sha256):
            return True
        for url in urls:
            tmp = self.store.tmp / f"fetch-{item.sha256[:16]}-{uuid.uuid4().hex[:8]}"
            try:
                ok = await self._download(f"{url}/api/v1/objects/{item.sha256}", item, tmp)
                if ok:
                    stored = await asyncio.to_thread(self.store.put_file, tmp, True)
                    if stored.sha256 == item.sha256:
                        return True
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.info("fetching %s (%s) from %s failed: %s", item.cpv, item.sha256[:12], url,
                         exc)
            finally:
                tmp.unlink(missing_ok=True)
        return False

    async def _download(self, url: str, item: Fetch, tmp: Path) -> bool:
        h, size = hashlib.sha256(), 0
        async with self._client().get(url) as resp:
            if resp.status != 200:
                log.info("peer %s answered %d for %s", url, resp.status, item.cpv)
                return False
            with open(tmp, "wb") as out:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > MAX_OBJECT:
                        return False
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        if h.hexdigest() != item.sha256:
            log.warning("peer %s sent bytes that do not match %s (%s); discarded", url,
                        item.sha256[:12], item.cpv)
            return False
        return True

    async def get_bytes(self, url: str, limit: int = 64 << 20) -> bytes | None:
        """A small GET from a peer (a live build log, say); None if it does not answer."""
        try:
            async with self._client().get(url) as resp:
                if resp.status != 200:
                    return None
                return await resp.content.read(limit)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("GET %s failed: %s", url, exc)
            return None

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
