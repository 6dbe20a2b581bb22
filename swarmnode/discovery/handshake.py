"""Joining a swarm by proving knowledge of the cluster secret (challenge–response over the API).

Discovery (mDNS, Tailscale) only says that *something* claiming a cluster name exists; anyone
on the LAN can advertise. So before a node is admitted to the Raft membership it proves it
holds the cluster secret, and the member it talks to proves the same back — the secret itself
never crosses the network:

1. joiner → member ``POST /api/v1/join/challenge`` → ``{cluster, node_id, member, nonce}``
   (a fresh single-use nonce, valid :data:`NONCE_TTL_S`).
2. joiner → member ``POST /api/v1/join`` with its identity, its own nonce and
   ``HMAC(secret, "client" | cluster | nonce | client_nonce | node_id | raft | url)``.
   A wrong proof is refused (403) and remembered, so ``swarmnode nodes`` lists the refusal.
3. The member admits the joiner through the log (``admit_node``: the state machine picks voter
   or worker) and answers with the role and the voter addresses, bound by
   ``HMAC(secret, "server" | cluster | client_nonce | nonce | its node_id | role | voters)``.
   A joiner that cannot verify that answer does not trust it: a node that merely advertises
   our cluster name cannot hand us a fake membership.

A member that is not in a swarm yet (several fresh nodes looking for each other) answers step
2 with ``admitted: false`` and its own proof: the joiner then knows the peer shares the secret,
which is what bootstrapping the first node relies on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

NONCE_TTL_S = 30.0
MAX_OUTSTANDING = 1024  # open challenges kept; older ones are dropped (bounded memory)
PROTOCOL = "swarmnode-join-1"


def proof(secret: str, cluster: str, role: str, *parts: str) -> str:
    """HMAC-SHA256 over the protocol name, the proof's role and the bound fields."""
    message = "\0".join((PROTOCOL, role, cluster, *parts)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def client_proof(secret: str, cluster: str, nonce: str, client_nonce: str,
                 node_id: str, raft: str, url: str) -> str:
    return proof(secret, cluster, "client", nonce, client_nonce, node_id, raft, url)


def server_proof(secret: str, cluster: str, client_nonce: str, nonce: str, node_id: str,
                 role: str, voters: list[str]) -> str:
    return proof(secret, cluster, "server", client_nonce, nonce, node_id, role, ",".join(voters))


def same(expected: str, got: Any) -> bool:
    return isinstance(got, str) and hmac.compare_digest(expected, got)


def new_nonce() -> str:
    return secrets.token_hex(16)


@dataclass
class Challenges:
    """The member's side of step 1: issued nonces, each accepted once and only while fresh."""

    issued: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def issue(self, now: float) -> str:
        nonce = new_nonce()
        self.issued[nonce] = now
        while len(self.issued) > MAX_OUTSTANDING:
            self.issued.popitem(last=False)
        return nonce

    def take(self, nonce: Any, now: float) -> bool:
        """True once for a nonce this node issued less than NONCE_TTL_S ago."""
        if not isinstance(nonce, str):
            return False
        issued = self.issued.pop(nonce, None)
        return issued is not None and now - issued <= NONCE_TTL_S


@dataclass(frozen=True)
class Identity:
    """Who is joining: what the swarm records about it."""

    node_id: str
    raft: str
    url: str
    cores: int

    def request(self, secret: str, cluster: str, nonce: str, discovery: str,
                admit: bool) -> tuple[dict[str, Any], str]:
        """The body of step 2 and the client nonce the answer must be bound to."""
        client_nonce = new_nonce()
        body = {"cluster": cluster, "node_id": self.node_id, "raft": self.raft, "url": self.url,
                "cores": self.cores, "discovery": discovery, "admit": admit, "nonce": nonce,
                "client_nonce": client_nonce,
                "proof": client_proof(secret, cluster, nonce, client_nonce, self.node_id,
                                      self.raft, self.url)}
        return body, client_nonce


@dataclass(frozen=True)
class Outcome:
    """What one handshake with one peer found out.

    ``status``: ``admitted`` (we are in: ``role`` and ``voters`` say how to start Raft),
    ``verified`` (the peer shares our secret but is not in a swarm yet), ``refused`` (secrets
    differ, either way round), ``foreign`` (another cluster name) or ``unreachable``.
    """

    status: str
    url: str
    peer_id: str = ""
    peer_member: bool = False
    role: str = ""
    voters: tuple[str, ...] = ()
    message: str = ""
