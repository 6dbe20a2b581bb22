"""A node's view of its neighbourhood: mDNS sightings on the LAN and Tailscale peers.

Both only *hint* that a peer exists: a killed node's mDNS record lingers for many minutes and
a Tailscale peer may not run swarmnode at all. Membership is decided by the join handshake
and liveness by Raft and leases; this module feeds the joiner its candidates and `swarmnode
nodes` its list of machines seen nearby that are not (or not yet) in the swarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from swarmnode import __version__
from swarmnode.config import Config
from swarmnode.discovery import tailscale
from swarmnode.discovery.joiner import Candidate
from swarmnode.discovery.mdns import Advert, MdnsDiscovery

log = logging.getLogger(__name__)

TAILSCALE_REFRESH_S = 60.0
LOOPBACK = ("127.", "::1", "localhost")


@dataclass
class Refusal:
    """A peer whose join proof did not match our secret (shown by `swarmnode nodes`)."""

    node_id: str
    url: str
    at: float
    reason: str


def discovery_possible(config: Config) -> bool:
    """A node listening on loopback only cannot be reached by its neighbours: it neither
    advertises nor looks for them (the demo and the tests run such nodes)."""
    return not config.node.listen_host.startswith(LOOPBACK)


class Lan:
    """mDNS advertising and browsing plus Tailscale peers, started and stopped with the node."""

    def __init__(self, config: Config) -> None:
        self.config = config
        disc = config.discovery
        self.enabled = discovery_possible(config)
        self.use_mdns = self.enabled and disc.mdns
        self.mdns: MdnsDiscovery | None = None
        self.tailscale_urls: list[str] = []
        self.tailscale_error = ""
        self.refused: dict[str, Refusal] = {}  # node id → why we refused it
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def _advert(self, member: bool, key: str) -> Advert:
        node = self.config.node
        host = node.listen_host
        addresses = () if host in ("0.0.0.0", "::", "") else (host,)
        return Advert(cluster=self.config.cluster.name, node_id=node.node_id,
                      api_port=node.listen_port,
                      raft_port=int(node.raft_address.rpartition(":")[2]),
                      version=__version__, key=key, member=member, addresses=addresses)

    async def start(self, member: bool, key: str) -> None:
        if self.use_mdns:
            self.mdns = MdnsDiscovery(self._advert(member, key), self.config.discovery.interfaces)
            await self.mdns.start()
        if self.enabled and self.config.discovery.tailscale:
            self._task = asyncio.create_task(self._tailscale_loop(), name="tailscale")

    async def set_member(self, key: str) -> None:
        """We joined (or started) the swarm: say so, with the swarm's signing key."""
        if self.mdns is not None:
            await self.mdns.update(self._advert(True, key))

    async def _tailscale_loop(self) -> None:
        disc = self.config.discovery
        port = disc.tailscale_api_port or self.config.node.listen_port
        while True:
            try:
                peers = await tailscale.read_peers(disc.tailscale_command)
                if peers is None:
                    return  # no tailscale command here: the static peer list it is
                urls = tailscale.candidate_urls(peers, port)
                if urls != self.tailscale_urls:
                    log.info("tailscale: %d candidate peers", len(urls))
                    self.tailscale_urls = urls
                    self._changed.set()
                self.tailscale_error = ""
            except tailscale.TailscaleError as exc:
                if str(exc) != self.tailscale_error:
                    log.warning("tailscale: %s; using the configured peers only", exc)
                self.tailscale_error = str(exc)
            await asyncio.sleep(TAILSCALE_REFRESH_S)

    def candidates(self) -> list[Candidate]:
        """Peers worth a join handshake: our cluster's mDNS sightings and Tailscale peers."""
        found: dict[str, Candidate] = {}
        if self.mdns is not None:
            for s in self.mdns.sightings().values():
                if s.advert.cluster == self.config.cluster.name and not s.gone:
                    found[s.api_url] = Candidate(s.api_url, "mdns", s.advert.node_id,
                                                 s.advert.member)
        for url in self.tailscale_urls:
            found.setdefault(url, Candidate(url, "tailscale"))
        own = self.config.node.advertise_url.rstrip("/")
        return [c for url, c in sorted(found.items()) if url.rstrip("/") != own]

    async def changed(self, timeout: float) -> None:
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._changed.wait())]
        if self.mdns is not None:
            waits.append(asyncio.ensure_future(self.mdns.wait_changed(timeout)))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            self._changed.clear()

    def refuse(self, node_id: str, url: str, reason: str) -> None:
        self.refused[node_id] = Refusal(node_id, url, time.time(), reason)

    def view(self, members: set[str]) -> list[dict[str, Any]]:
        """Machines seen nearby that are not in the swarm: foreign clusters, refused nodes,
        nodes still joining. Members are listed from the replicated state, not from here."""
        out: dict[str, dict[str, Any]] = {}
        now = time.time()
        if self.mdns is not None:
            for s in self.mdns.sightings().values():
                a = s.advert
                if a.cluster == self.config.cluster.name and a.node_id in members:
                    continue
                if a.cluster != self.config.cluster.name:
                    status = f"foreign (cluster {a.cluster})"
                elif a.node_id in self.refused:
                    status = "refused: " + self.refused[a.node_id].reason
                else:
                    status = "member of a swarm with our name" if a.member else "joining"
                out[f"{a.cluster}/{a.node_id}"] = {
                    "node_id": a.node_id, "cluster": a.cluster, "url": s.api_url,
                    "discovery": "mdns", "status": status, "version": a.version,
                    "seen_s_ago": round(now - s.last_seen, 1), "gone": s.gone}
        for r in self.refused.values():
            key = f"{self.config.cluster.name}/{r.node_id}"
            if key not in out and r.node_id not in members:
                out[key] = {"node_id": r.node_id, "cluster": self.config.cluster.name,
                            "url": r.url, "discovery": "join", "status": "refused: " + r.reason,
                            "version": "", "seen_s_ago": round(now - r.at, 1), "gone": False}
        return [out[k] for k in sorted(out)]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.mdns is not None:
            await self.mdns.close()
