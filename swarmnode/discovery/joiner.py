"""The joining side: handshake with discovered peers until one admits us, or start the swarm.

A fresh node with no peer list and no Raft state runs :meth:`Joiner.find_swarm`. Candidates
come from mDNS sightings and Tailscale peers (see :mod:`swarmnode.discovery.lan`); each is
asked to admit us (:mod:`swarmnode.discovery.handshake`). If no member of our swarm exists,
the fresh nodes that verified each other elect the lowest node id to bootstrap it after
``bootstrap_wait_s``; the others then join it like any newcomer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from swarmnode.discovery import handshake
from swarmnode.discovery.handshake import Identity, Outcome

log = logging.getLogger(__name__)

RETRY_REFUSED_S = 30.0   # ask a peer that refused us again after this long
RETRY_VERIFIED_S = 2.0   # re-ask a verified non-member (it may have started the swarm)


@dataclass(frozen=True)
class Candidate:
    """A peer worth a handshake: where its API is and how we heard of it."""

    url: str
    source: str  # "mdns" or "tailscale"
    node_id: str = ""  # from the advert, "" when unknown (Tailscale)
    member: bool = False  # the advert says it is in a swarm


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]
                ) -> tuple[int, dict[str, Any]]:
    async with session.post(url, json=body) as resp:
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = {}
        return resp.status, data if isinstance(data, dict) else {}


async def handshake_with(session: aiohttp.ClientSession, cand: Candidate, me: Identity,
                         secret: str, cluster: str, admit: bool = True) -> Outcome:
    """Run the challenge–response with one peer (never raises)."""
    base = cand.url.rstrip("/")
    try:
        status, hello = await _post(session, f"{base}/api/v1/join/challenge", {})
        if status != 200 or not isinstance(hello.get("nonce"), str):
            return Outcome("unreachable", cand.url, cand.node_id,
                           message=f"challenge answered HTTP {status}")
        peer_id = str(hello.get("node_id", ""))
        if hello.get("cluster") != cluster:
            return Outcome("foreign", cand.url, peer_id,
                           message=f"belongs to cluster {hello.get('cluster')!r}")
        body, client_nonce = me.request(secret, cluster, hello["nonce"], cand.source, admit)
        status, answer = await _post(session, f"{base}/api/v1/join", body)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return Outcome("unreachable", cand.url, cand.node_id, message=str(exc) or type(exc).__name__)
    member = bool(hello.get("member"))
    if status == 403:
        return Outcome("refused", cand.url, peer_id, member,
                       message=str(answer.get("error", "refused")))
    if status != 200:
        return Outcome("error", cand.url, peer_id, peer_member=member,
                       message=f"HTTP {status}: {answer.get('error', '')}")
    role = str(answer.get("role", ""))
    voters = [str(v) for v in answer.get("voters", [])] if isinstance(
        answer.get("voters"), list) else []
    expected = handshake.server_proof(secret, cluster, client_nonce, hello["nonce"], peer_id,
                                      role, voters)
    if not handshake.same(expected, answer.get("proof")):
        return Outcome("refused", cand.url, peer_id, member,
                       message="its answer is not signed with our cluster secret (the secrets "
                               "differ, or something impersonates a member)")
    if answer.get("admitted"):
        return Outcome("admitted", cand.url, peer_id, True, role, tuple(voters))
    return Outcome("verified", cand.url, peer_id, bool(answer.get("member")))


def should_bootstrap(me: str, outcomes: dict[str, Outcome], waited_s: float,
                     wait_s: float) -> bool:
    """Start a new swarm? Only after waiting, when no peer that shares our secret is a member
    (one that is would admit us, or is failing transiently), and when our node id is the lowest
    of the fresh peers that verified — so exactly one of them starts it. A member of a swarm
    with our name that refused us means our secret is wrong: we never start a rival swarm."""
    if waited_s < wait_s:
        return False
    if any(o.status == "refused" and o.peer_member for o in outcomes.values()):
        return False
    ours = [o for o in outcomes.values() if o.status in ("verified", "error")]
    if any(o.peer_member for o in ours):
        return False
    return all(me < o.peer_id for o in ours if o.peer_id)


class Joiner:
    """Drives handshakes with candidates until admitted (→ Outcome) or bootstrapping (→ None)."""

    def __init__(self, me: Identity, secret: str, cluster: str, bootstrap_wait_s: float) -> None:
        self.me, self.secret, self.cluster = me, secret, cluster
        self.bootstrap_wait_s = bootstrap_wait_s
        self.outcomes: dict[str, Outcome] = {}  # url → last outcome
        self._asked: dict[str, float] = {}
        self.state = "looking for the swarm"

    def _due(self, cand: Candidate, now: float) -> bool:
        last = self.outcomes.get(cand.url)
        asked = self._asked.get(cand.url, -1e9)
        if last is None or last.status in ("unreachable", "error"):
            return now - asked >= 1.0
        if last.status in ("refused", "foreign"):
            return now - asked >= RETRY_REFUSED_S
        return now - asked >= RETRY_VERIFIED_S or (cand.member and not last.peer_member)

    async def find_swarm(self, candidates: Any, changed: Any) -> Outcome | None:
        """`candidates()` → list[Candidate]; `changed(timeout)` waits for new sightings."""
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                now = time.monotonic()
                todo = [c for c in candidates() if self._due(c, now)]
                todo.sort(key=lambda c: (not c.member, c.node_id, c.url))
                for cand in todo:
                    self._asked[cand.url] = time.monotonic()
                    out = await handshake_with(session, cand, self.me, self.secret, self.cluster)
                    previous = self.outcomes.get(cand.url)
                    self.outcomes[cand.url] = out
                    if previous is None or previous.status != out.status:
                        level = logging.WARNING if out.status == "refused" else logging.INFO
                        log.log(level, "join: %s (%s via %s): %s%s", out.peer_id or cand.url,
                                cand.url, cand.source, out.status,
                                f" — {out.message}" if out.message else "")
                    if out.status == "admitted":
                        self.state = f"admitted by {out.peer_id} as {out.role}"
                        return out
                waited = time.monotonic() - started
                if should_bootstrap(self.me.node_id, self.outcomes, waited,
                                    self.bootstrap_wait_s):
                    self.state = "starting a new swarm"
                    return None
                self.state = self._describe(waited)
                await changed(1.0)

    def _describe(self, waited: float) -> str:
        seen = sorted(self.outcomes.values(), key=lambda o: o.url)
        if not seen:
            return f"looking for the swarm for {waited:.0f}s: no peer seen yet"
        parts = [f"{o.peer_id or o.url}: {o.status}" for o in seen]
        return f"looking for the swarm for {waited:.0f}s ({'; '.join(parts)})"
