"""mDNS (DNS-SD) advertising and browsing of swarm nodes on the LAN.

Every node publishes one `_swarmnode._tcp.local.` service and browses for the others. A sighting
is only a HINT that a peer exists: a killed node sends no goodbye and its records linger in
caches for minutes, so liveness is decided elsewhere (Raft), never here.

TXT keys are one letter because the whole record travels in every announcement:
    c  cluster name            n  node id               v  swarmnode version
    a  API port (1-65535)      r  Raft port (1-65535)
    k  signing-key fingerprint ("" before the node joined a swarm)
    m  "1" once a swarm member (has Raft state), "0" while looking for a swarm
A record of our type with a missing or bad value (another program, a broken node) is ignored
and logged at debug level; unknown keys are ignored so later versions can add some. The cluster
secret is never published.

Instance names are "<node id> [<cluster>]" because several clusters may share a LAN and their
node ids may collide; dots become "_" (zeroconf would split them into DNS labels) and the name
is cut to 56 bytes, leaving room for the "-N" zeroconf appends when it renames on a conflict.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psutil
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from swarmnode.errors import UserError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_swarmnode._tcp.local."
RESOLVE_TIMEOUT_MS = 3000
_INSTANCE_MAX_BYTES = 56


@dataclass(frozen=True)
class Advert:
    """What a node publishes (TXT record and addresses)."""

    cluster: str
    node_id: str
    api_port: int
    raft_port: int
    version: str
    key: str
    member: bool
    addresses: tuple[str, ...] = ()  # () = the addresses of the chosen interfaces


@dataclass(frozen=True)
class Sighting:
    """One peer seen on the LAN; a hint, not a liveness verdict."""

    advert: Advert  # addresses are the ones in the peer's mDNS record
    instance: str
    first_seen: float
    last_seen: float
    gone: bool = False  # a goodbye (or expiry) was seen

    @property
    def api_url(self) -> str:
        """The peer's API, preferring IPv4 (a v6 address may need a scope we cannot know)."""
        addrs = self.advert.addresses
        v4 = [a for a in addrs if ":" not in a]
        host = v4[0] if v4 else f"[{addrs[0]}]"
        return f"http://{host}:{self.advert.api_port}"


def advert_to_txt(advert: Advert) -> dict[str, str]:
    """The TXT properties for an advert (keys in the module docstring)."""
    return {"c": advert.cluster, "n": advert.node_id, "a": str(advert.api_port),
            "r": str(advert.raft_port), "v": advert.version, "k": advert.key,
            "m": "1" if advert.member else "0"}


def _text(txt: Mapping[bytes, bytes | None], key: str) -> str:
    value = txt.get(key.encode())
    if not isinstance(value, bytes):
        raise ValueError(f"no value for {key!r}")
    return value.decode("utf-8")  # UnicodeDecodeError is a ValueError


def _port(txt: Mapping[bytes, bytes | None], key: str) -> int:
    text = _text(txt, key)
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise ValueError(f"bad port {key}={text!r}")
    return int(text)


def advert_from_txt(txt: Mapping[bytes, bytes | None], addresses: Sequence[str] = ()) -> Advert | None:
    """The advert in a TXT record, or None if it is not a well-formed swarmnode record."""
    try:
        cluster, node_id, member = _text(txt, "c"), _text(txt, "n"), _text(txt, "m")
        if not cluster or not node_id or member not in ("0", "1"):
            raise ValueError(f"empty c/n or bad m={member!r}")
        return Advert(cluster, node_id, _port(txt, "a"), _port(txt, "r"), _text(txt, "v"),
                      _text(txt, "k"), member == "1", tuple(addresses))
    except (ValueError, AttributeError, TypeError) as exc:
        log.debug("mDNS: ignoring malformed TXT %r: %s", txt, exc)
        return None


def instance_name(advert: Advert) -> str:
    """A readable instance name, unique across clusters, short enough for a rename suffix."""
    raw = f"{advert.node_id} [{advert.cluster}]".replace(".", "_")
    clean = "".join(ch if ch.isprintable() else "?" for ch in raw)
    return clean.encode()[:_INSTANCE_MAX_BYTES].decode("utf-8", "ignore")


def _usable(addrs: Sequence[Any], loopback: bool) -> list[str]:  # psutil's snicaddr tuples
    """IPv4 and non-link-local IPv6 addresses (a link-local one needs a scope peers lack)."""
    out = []
    for a in addrs:
        if a.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(a.address.split("%")[0])
        if (ip.is_link_local and ip.version == 6) or (ip.is_loopback and not loopback):
            continue
        out.append(str(ip))
    return out


def resolve_interfaces(interfaces: Sequence[str]) -> tuple[str, ...]:
    """The IP addresses of the configured interfaces (names or local addresses)."""
    nics = psutil.net_if_addrs()
    local = {addr for addrs in nics.values() for addr in _usable(addrs, loopback=True)}
    out: list[str] = []
    for entry in interfaces:
        try:
            ip = str(ipaddress.ip_address(entry))
        except ValueError:
            if entry not in nics:
                raise UserError(f"unknown network interface {entry!r} for mDNS; this machine has: "
                                f"{', '.join(sorted(nics))}") from None
            found = _usable(nics[entry], loopback=True)
            if not found:
                raise UserError(f"network interface {entry!r} has no IPv4 or routable IPv6 "
                                "address to use for mDNS") from None
            out.extend(found)
            continue
        if ip not in local:
            raise UserError(f"no network interface has the address {entry!r} (mDNS interfaces); "
                            f"local addresses: {', '.join(sorted(local))}")
        out.append(ip)
    return tuple(dict.fromkeys(out))


class MdnsDiscovery:
    """This node's mDNS presence: publishes its Advert and collects sightings of the others."""

    def __init__(self, advert: Advert, interfaces: tuple[str, ...] = ()) -> None:
        self._advert = advert
        self._bind = resolve_interfaces(interfaces) if interfaces else ()
        # Random host name: nodes sharing a machine or a hostname must not merge address records.
        self._server = f"swarmnode-{secrets.token_hex(4)}.local."
        self._name = f"{instance_name(advert)}.{SERVICE_TYPE}"
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._sightings: dict[str, Sighting] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Start browsing, then register (renaming on a conflict); returns once announced."""
        try:
            if self._bind:
                self._zc = AsyncZeroconf(interfaces=list(self._bind))
            else:
                self._zc = AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
            self._info = self._service_info(self._advert)
            self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE,
                                                handlers=[self._on_change])
            await (await self._zc.async_register_service(self._info, allow_name_change=True))
            self._name = self._info.name
        except BaseException:
            await self.close()
            raise

    async def update(self, advert: Advert) -> None:
        """Re-publish (member/key flips); the instance name stays the one registered."""
        self._advert = advert
        if self._zc is None:
            return
        self._info = self._service_info(advert)
        await (await self._zc.async_update_service(self._info))

    @property
    def instance(self) -> str:
        """Our instance name as registered (zeroconf appends "-N" on a conflict)."""
        own = self._info.name if self._info is not None else self._name
        return own[: -len(SERVICE_TYPE) - 1]

    def sightings(self) -> dict[str, Sighting]:
        """Peers seen, keyed by instance name, all clusters, never ourselves."""
        return {k: s for k, s in self._sightings.items() if not self._is_self(k)}

    async def wait_changed(self, timeout: float) -> None:
        """Return when a sighting was added/updated/removed since the last call, or on timeout."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
        self._changed.clear()

    async def close(self) -> None:
        """Unregister (sends a goodbye) and shut zeroconf down; safe to call twice."""
        for task in self._resolving.values():
            task.cancel()
        self._resolving.clear()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            zc, self._zc = self._zc, None
            await zc.async_close()

    def _service_info(self, advert: Advert) -> AsyncServiceInfo:
        addresses = advert.addresses or self._bind or tuple(
            a for addrs in psutil.net_if_addrs().values() for a in _usable(addrs, loopback=False))
        if not addresses:
            log.warning("mDNS: no address to publish yet; peers will ignore this node's record")
        return AsyncServiceInfo(SERVICE_TYPE, self._name, port=advert.api_port,
                                properties=advert_to_txt(advert), server=self._server,
                                addresses=list(addresses))

    def _is_self(self, instance: str) -> bool:
        return instance.lower() == self.instance.lower()

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        """Browser callback (on the loop): resolve in a task; the latest event for a name wins."""
        if not name.lower().endswith("." + SERVICE_TYPE.lower()):
            return
        instance = name[: -len(SERVICE_TYPE) - 1]
        if self._is_self(instance):
            return
        pending = self._resolving.pop(instance, None)
        if pending is not None:
            pending.cancel()
        if state_change is ServiceStateChange.Removed:
            old = self._sightings.get(instance)
            if old is not None and not old.gone:
                self._sightings[instance] = replace(old, gone=True)
                self._changed.set()
            return
        self._resolving[instance] = asyncio.get_running_loop().create_task(
            self._resolve(instance, name))

    async def _resolve(self, instance: str, name: str) -> None:
        try:
            if self._zc is None:
                return
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
                log.debug("mDNS: %s did not resolve in %d ms", name, RESOLVE_TIMEOUT_MS)
                return
            addresses = info.parsed_addresses()
            advert = advert_from_txt(info.properties, addresses)
            if advert is None or not addresses:
                log.debug("mDNS: ignoring %s (malformed TXT or no address)", name)
                return
            now = time.time()
            old = self._sightings.get(instance)
            if old is None or old.gone:  # new, or back after a goodbye
                self._sightings[instance] = Sighting(advert, instance, now, now)
                self._changed.set()
            else:
                self._sightings[instance] = replace(old, advert=advert, last_seen=now)
                if old.advert != advert:
                    self._changed.set()
        finally:
            if self._resolving.get(instance) is asyncio.current_task():
                del self._resolving[instance]
