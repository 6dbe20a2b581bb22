"""Peers from Tailscale: remote sites join a swarm through their tailnet.

Where the ``tailscale`` CLI is installed, ``tailscale status --json`` (Go's
``ipnstate.Status``) lists every node of the tailnet. We take the peers' addresses as
*candidates* only: a candidate becomes a member after the join handshake, so a tailnet shared
with unrelated machines is harmless. The CLI's JSON grows fields with every release and
leaves many of them null, so the parser reads the few it needs and tolerates the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
from dataclasses import dataclass
from typing import Any

RUNNING = "Running"  # ipn.State: NoState, NeedsLogin, NeedsMachineAuth, Stopped, Starting, Running


class TailscaleError(Exception):
    """``tailscale`` exists but gave no usable peer list (the caller logs it once and falls
    back to the configured peers)."""


@dataclass(frozen=True)
class TailscalePeer:
    host_name: str
    dns_name: str  # MagicDNS name without the trailing dot; "" when the tailnet has none
    ips: tuple[str, ...]  # Tailscale addresses in the CLI's order (IPv4 first in practice)
    online: bool  # connected to the coordination server; offline peers are kept, callers decide
    os: str
    tags: tuple[str, ...]

    @property
    def ipv4(self) -> str | None:
        """The first IPv4 address: preferred, as it works on hosts with IPv6 disabled."""
        return next((ip for ip in self.ips if ipaddress.ip_address(ip).version == 4), None)


@dataclass(frozen=True)
class TailscaleStatus:
    backend_state: str  # "Running" when connected; anything else means no usable peer list
    self_ips: tuple[str, ...]  # this machine's Tailscale addresses (to recognise ourselves)
    peers: tuple[TailscalePeer, ...]  # sorted by dns_name; peers without an address skipped

    @property
    def running(self) -> bool:
        return self.backend_state == RUNNING


def _strings(value: Any) -> tuple[str, ...]:
    """A JSON list of strings, or () for null / missing / anything else."""
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _ips(value: Any) -> tuple[str, ...]:
    out = []
    for text in _strings(value):
        with contextlib.suppress(ValueError):  # skip a non-address, keep the rest
            out.append(str(ipaddress.ip_address(text)))
    return tuple(out)


def _text(node: dict[str, Any], key: str) -> str:
    value = node.get(key)
    return value if isinstance(value, str) else ""


def _peer(node: dict[str, Any]) -> TailscalePeer:
    return TailscalePeer(
        host_name=_text(node, "HostName"),
        dns_name=_text(node, "DNSName").rstrip("."),
        ips=_ips(node.get("TailscaleIPs")),
        online=node.get("Online") is True,
        os=_text(node, "OS"),
        tags=_strings(node.get("Tags")),
    )


def parse_status(raw: bytes | str) -> TailscaleStatus:
    """Parse ``tailscale status --json``. Raises TailscaleError when it is not a status
    document (bad JSON, not an object, no ``Peer`` key); ``"Peer": null`` means no peers."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise TailscaleError(f"tailscale status output is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TailscaleError("tailscale status output is not a JSON object")
    if "Peer" not in doc:
        raise TailscaleError("tailscale status output has no Peer map (not `status --json`?)")
    peer_map = doc["Peer"]
    if peer_map is not None and not isinstance(peer_map, dict):
        raise TailscaleError("tailscale status output: Peer is not a map of peers")
    peers = [_peer(node) for node in (peer_map or {}).values() if isinstance(node, dict)]
    peers = sorted((p for p in peers if p.ips), key=lambda p: (p.dns_name, p.host_name, p.ips))
    me = doc.get("Self")
    self_ips = _ips(me.get("TailscaleIPs")) if isinstance(me, dict) else ()
    state = doc.get("BackendState")
    return TailscaleStatus(
        backend_state=state if isinstance(state, str) else "",
        self_ips=self_ips or _ips(doc.get("TailscaleIPs")),
        peers=tuple(peers),
    )


async def read_peers(
    command: str = "tailscale", timeout_s: float = 5.0
) -> list[TailscalePeer] | None:
    """Peers of this machine's tailnet; None when ``command`` is not installed.

    Raises TailscaleError when the command fails, hangs past ``timeout_s`` (it is killed,
    with anything it started) or reports a backend that is not Running (logged out, stopped).
    """
    exe = shutil.which(command)
    if exe is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        exe, "status", "--json",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group goes
        with contextlib.suppress(TimeoutError):  # a grandchild that left the group holds
            await asyncio.wait_for(proc.wait(), 1.0)  # the pipes; do not hang on it
        raise TailscaleError(
            f"`{exe} status --json` did not answer within {timeout_s:g} s"
        ) from None
    if proc.returncode != 0:
        why = (err or out).decode(errors="replace").strip() or "no output"
        raise TailscaleError(f"`{exe} status --json` failed (exit {proc.returncode}): {why}")
    status = parse_status(out)
    if not status.running:
        raise TailscaleError(
            f"tailscale is not connected (BackendState {status.backend_state or 'missing'!r}); "
            "run `tailscale up`"
        )
    return list(status.peers)


def candidate_urls(peers: list[TailscalePeer], api_port: int) -> list[str]:
    """API base URLs of the online peers, to be probed with the join handshake: the IPv4
    address where there is one, else the first IPv6 one (bracketed)."""
    return [
        f"http://{peer.ipv4 or f'[{peer.ips[0]}]'}:{api_port}"
        for peer in peers
        if peer.online and peer.ips
    ]
