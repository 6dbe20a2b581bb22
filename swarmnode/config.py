"""TOML configuration: defaults, validation and path resolution in one place.

Every key is documented in `config/swarmnode.toml`. Relative paths are resolved against the
directory of the config file, so a config can travel with its profiles.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmnode.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_PATTERN = _NAME  # node ids and cluster names
#: Where Gentoo keeps the log of every emerge (build.emerge_log; "" turns it off).
DEFAULT_EMERGE_LOG = "/var/log/emerge.log"
#: Most make jobs a logged build can have run with (build.emerge_log_jobs, history --jobs).
MAX_LOG_JOBS = 1024


@dataclass(frozen=True)
class ProfileConfig:
    """One binhost: a portage configuration and the repositories it builds from."""

    name: str
    portage_config: Path | None  # files copied into the build's etc/portage (make.conf, …)
    repositories: tuple[Path, ...]  # ebuild repositories; the first is the main repository
    portage_profile: str  # path under the main repository's profiles/, e.g. "swarm/amd64"
    distfiles: Path
    targets: tuple[str, ...] = ("@world",)
    world: tuple[str, ...] = ()  # atoms of @world (default: the `world` file in portage_config)
    critical: tuple[str, ...] = ()  # atoms whose failure makes a release unsafe
    # git URI each repository is synced from, in `repositories` order ("" = not synced);
    # () when no repository is synced. A synced repository may not exist until its first sync.
    sync_uris: tuple[str, ...] = ()

    @property
    def main_repository(self) -> Path:
        return self.repositories[0]

    def sync_uri(self, repo: Path) -> str:
        """The URI `repo` is synced from, "" when it is not synced."""
        return dict(zip(self.repositories, self.sync_uris)).get(repo, "")


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    listen_host: str
    listen_port: int
    advertise_url: str
    cores: int
    raft_address: str = ""  # HOST:PORT, this node's one canonical Raft address
    sweeper: bool = False
    workstation: bool = False  # shared machine: claim only what its own load leaves free
    reserve_cores: int = 1  # a workstation always keeps this many cores for its user
    site: str = ""  # a label for where the machine stands ("office", "colo-ams"), shown by nodes


@dataclass(frozen=True)
class BuildConfig:
    timeout_s: float = 4 * 3600.0
    lease_ttl_s: float = 10.0
    heartbeat_s: float = 2.0
    poll_s: float = 1.0
    max_parallel_jobs: int = 1
    keep_build_roots: bool = False
    # This host's emerge log: build times for packages the swarm never built (None: off).
    emerge_log: Path | None = None
    emerge_log_jobs: int = 0  # the make jobs its builds ran with; 0 = node.cores


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    secret: str
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 300.0
    fail_nodes: int = 2
    peers: tuple[str, ...] = ()  # Raft addresses (HOST:PORT) of the other voters
    replicas: int = 2  # copies of every artifact before its job counts as durable
    down_after_s: float = 3.0  # unreachable this long → the leader marks a node down
    max_voters: int = 5  # Raft voters; further nodes are non-voting workers
    voter_grace_s: float = 3600.0  # a voter down this long is replaced by an up worker
    lost_after_s: float = 600.0  # a build no job waits for, its holders down this long: rebuilt


@dataclass(frozen=True)
class DiscoveryConfig:
    """How a node finds its swarm without a peer list (only when it listens beyond loopback)."""

    mdns: bool = True  # advertise and browse _swarmnode._tcp on the LAN
    interfaces: tuple[str, ...] = ()  # interface names or addresses mDNS uses; () = all
    tailscale: bool = True  # ask `tailscale status --json` for peers when the command exists
    tailscale_command: str = "tailscale"
    tailscale_api_port: int = 0  # the API port at Tailscale peers; 0 = our own listen port
    bootstrap_wait_s: float = 5.0  # a fresh node waits this long for a swarm before starting one


@dataclass(frozen=True)
class Config:
    path: Path
    node: NodeConfig
    cluster: ClusterConfig
    build: BuildConfig
    keep_releases: int
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    discovery: DiscoveryConfig = DiscoveryConfig()

    def profile(self, name: str | None) -> ProfileConfig:
        """The named profile, or the only/first one when name is None."""
        if name is None:
            if not self.profiles:
                raise UserError("no profiles are configured; add a [profiles.NAME] table")
            return next(iter(self.profiles.values()))
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise UserError(f"unknown profile {name!r} (configured: {known})", 404) from None


def _get(table: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}.{key} must be a {kind.__name__}, got {value!r}")
    return value


def _path(base: Path, value: str) -> Path:
    return (base / os.path.expanduser(value)).resolve()


def _optional_path(base: Path, value: str) -> Path | None:
    """A path setting that "" turns off."""
    return _path(base, value) if value else None


def _read_world(portage_config: Path | None) -> tuple[str, ...]:
    world = portage_config / "world" if portage_config is not None else None
    if world is None or not world.is_file():
        return ()
    lines = (ln.split("#", 1)[0].strip() for ln in world.read_text().splitlines())
    return tuple(ln for ln in lines if ln)


def _profile(name: str, table: dict[str, Any], base: Path) -> ProfileConfig:
    where = f"profiles.{name}"
    if not _NAME.match(name):
        raise UserError(f"profile name {name!r} must be letters, digits, '.', '_' or '-'")
    repos = table.get("repositories")
    if not isinstance(repos, list) or not repos or not all(isinstance(r, str) for r in repos):
        raise UserError(f"{where}.repositories must be a non-empty list of directories")
    repositories = tuple(_path(base, r) for r in repos)
    sync_uris = _sync_uris(table, len(repositories), where)
    unsynced = {r for r, uri in zip(repositories, sync_uris) if uri and _awaits_clone(r)}
    for repo in repositories:
        if repo not in unsynced and not (repo / "profiles" / "repo_name").is_file():
            raise UserError(f"{where}: {repo} is not an ebuild repository (no profiles/repo_name)")
    portage_config = None
    if table.get("portage_config") is not None:
        portage_config = _path(base, _get(table, "portage_config", str, "", where))
        if not portage_config.is_dir():
            raise UserError(f"{where}.portage_config: {portage_config} is not a directory")
    portage_profile = _get(table, "portage_profile", str, "", where)
    if not portage_profile or ".." in Path(portage_profile).parts:
        raise UserError(f"{where}.portage_profile must name a profile under the repository's profiles/")
    if (repositories[0] not in unsynced  # checked once the first sync has cloned it
            and not (repositories[0] / "profiles" / portage_profile).is_dir()):
        raise UserError(f"{where}.portage_profile: {repositories[0]}/profiles/{portage_profile} does not exist")
    distfiles = _path(base, _get(table, "distfiles", str, "", where) or "distfiles")
    if not distfiles.is_dir():
        raise UserError(f"{where}.distfiles: {distfiles} is not a directory")
    targets = tuple(_get(table, "targets", list, ["@world"], where))
    world = tuple(_get(table, "world", list, [], where)) or _read_world(portage_config)
    critical = tuple(_get(table, "critical", list, [], where))
    return ProfileConfig(name, portage_config, repositories, portage_profile, distfiles,
                         targets, world, critical, sync_uris)


_SYNC_URI = re.compile(r"^(?:(?:https|git|ssh)://[^\s/]|file:///|git@[^\s:]+:)\S*$")


def _sync_uris(table: dict[str, Any], count: int, where: str) -> tuple[str, ...]:
    """`sync_uris`: () or one git URI per repository ("" = that repository is not synced)."""
    uris = table.get("sync_uris", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise UserError(f'{where}.sync_uris must be a list of strings, one per repository ("" = not synced)')
    if uris and len(uris) != count:
        raise UserError(f"{where}.sync_uris has {len(uris)} entries but repositories has {count}; "
                        'give one per repository ("" = not synced)')
    for i, uri in enumerate(uris):
        if uri and not _SYNC_URI.match(uri):
            raise UserError(f"{where}.sync_uris[{i}] must be empty or a git URI starting with "
                            f"file:///, https://, git://, ssh:// or git@HOST:, got {uri!r}")
    return tuple(uris)


def _awaits_clone(repo: Path) -> bool:
    """A synced repository that the first sync has yet to clone: missing or an empty directory."""
    try:
        return not repo.exists() or (repo.is_dir() and not any(repo.iterdir()))
    except OSError:
        return False


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"node.listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_raft_address(value: str, where: str) -> str:
    """HOST:PORT exactly as every node writes it (Raft identifies a node by this string)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or "/" in value or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{where} must be HOST:PORT (e.g. 192.168.1.10:7701), got {value!r}")
    return value


def _primary_address(interfaces: tuple[str, ...]) -> str | None:
    """The first non-loopback IPv4 address (of the named interfaces, if any): what a node
    listening on a wildcard address tells its peers to use."""
    import psutil

    for name, addrs in sorted(psutil.net_if_addrs().items()):
        for addr in addrs:
            if addr.family != socket.AF_INET or addr.address.startswith("127."):
                continue
            if not interfaces or name in interfaces or addr.address in interfaces:
                return str(addr.address)
    return None


def _discovery(table: dict[str, Any]) -> DiscoveryConfig:
    interfaces = _get(table, "interfaces", list, [], "discovery")
    if not all(isinstance(i, str) and i for i in interfaces):
        raise UserError("discovery.interfaces must be a list of interface names or addresses, "
                        f"e.g. [\"eth0\"]; got {interfaces!r}")
    disc = DiscoveryConfig(
        mdns=_get(table, "mdns", bool, True, "discovery"),
        interfaces=tuple(interfaces),
        tailscale=_get(table, "tailscale", bool, True, "discovery"),
        tailscale_command=_get(table, "tailscale_command", str, "tailscale", "discovery"),
        tailscale_api_port=_get(table, "tailscale_api_port", int, 0, "discovery"),
        bootstrap_wait_s=_get(table, "bootstrap_wait_s", float, 5.0, "discovery"),
    )
    if not 0 <= disc.tailscale_api_port < 65536:
        raise UserError("discovery.tailscale_api_port must be a port number (0 = ours)")
    if disc.bootstrap_wait_s < 0:
        raise UserError("discovery.bootstrap_wait_s must be 0 or more seconds")
    return disc


def _peers(values: list[Any], self_address: str) -> tuple[str, ...]:
    """The other voters' Raft addresses; this node's own address may be listed (one shared
    list for every node) and is dropped."""
    out: list[str] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise UserError(f"cluster.peers[{i}] must be a \"HOST:PORT\" string, got {value!r}")
        address = check_raft_address(value.strip(), f"cluster.peers[{i}]")
        if address != self_address and address not in out:
            out.append(address)
    return tuple(out)


def _secret(table: dict[str, Any], base: Path) -> str:
    secret = os.environ.get("SWARMNODE_SECRET") or table.get("secret", "")
    if not secret and table.get("secret_file"):
        path = _path(base, table["secret_file"])
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise UserError(f"cluster.secret_file: cannot read {path}: {exc.strerror}") from None
    if not isinstance(secret, str) or len(secret) < 16:
        raise UserError("cluster.secret (or secret_file / SWARMNODE_SECRET) must be at least 16 "
                        "characters; generate one with: openssl rand -hex 32")
    return secret


def create_missing_secret(path: str | Path) -> Path | None:
    """For `swarmnode init`: write a random cluster secret to `cluster.secret_file` if the
    config names one that does not exist yet (mode 0600). Returns the file it wrote."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None  # load_config reports it properly
    cluster = raw.get("cluster", {})
    name = cluster.get("secret_file")
    if not isinstance(name, str) or cluster.get("secret") or os.environ.get("SWARMNODE_SECRET"):
        return None
    secret_path = _path(path.parent, name)
    if secret_path.exists():
        return None
    secret_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return secret_path


def load_config(path: str | Path) -> Config:
    """Parse and validate a config file; every problem is a one-line UserError."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    base = path.parent
    node_t = raw.get("node", {})
    host, port = _listen(_get(node_t, "listen", str, "127.0.0.1:7700", "node"))
    node_id = _get(node_t, "id", str, socket.gethostname(), "node")
    if not _NAME.match(node_id):
        raise UserError(f"node.id {node_id!r} must be letters, digits, '.', '_' or '-'")
    discovery = _discovery(raw.get("discovery", {}))
    url_host = host
    if host in ("0.0.0.0", "::"):
        url_host = _primary_address(discovery.interfaces) or "127.0.0.1"
    raft = _get(node_t, "raft", str, "", "node")
    if not raft:
        if url_host.startswith("127.") and host in ("0.0.0.0", "::"):
            raise UserError("node.raft must be set (HOST:PORT other nodes use to reach this one): "
                            "node.listen is a wildcard address and this machine has no other "
                            "IPv4 address to offer")
        raft = f"{url_host}:{port + 1}"
    node = NodeConfig(
        node_id=node_id,
        data_dir=_path(base, _get(node_t, "data_dir", str, "/var/lib/swarmnode", "node")),
        listen_host=host,
        listen_port=port,
        advertise_url=_get(node_t, "url", str, f"http://{url_host}:{port}", "node").rstrip("/"),
        cores=_get(node_t, "cores", int, 0, "node") or (os.cpu_count() or 1),
        raft_address=check_raft_address(raft, "node.raft"),
        sweeper=_get(node_t, "sweeper", bool, False, "node"),
        workstation=_get(node_t, "workstation", bool, False, "node"),
        reserve_cores=_get(node_t, "reserve_cores", int, 1, "node"),
        site=_get(node_t, "site", str, "", "node")[:64],
    )
    cl = raw.get("cluster", {})
    cluster = ClusterConfig(
        name=_get(cl, "name", str, "swarm", "cluster"),
        secret=_secret(cl, base),
        breaker_threshold=_get(cl, "breaker_threshold", int, 5, "cluster"),
        breaker_cooldown_s=_get(cl, "breaker_cooldown_s", float, 300.0, "cluster"),
        fail_nodes=_get(cl, "fail_nodes", int, 2, "cluster"),
        peers=_peers(_get(cl, "peers", list, [], "cluster"), node.raft_address),
        replicas=_get(cl, "replicas", int, 2, "cluster"),
        down_after_s=_get(cl, "down_after_s", float, 3.0, "cluster"),
        max_voters=_get(cl, "max_voters", int, 5, "cluster"),
        voter_grace_s=_get(cl, "voter_grace_s", float, 3600.0, "cluster"),
        lost_after_s=_get(cl, "lost_after_s", float, 600.0, "cluster"),
    )
    if cluster.replicas < 1:
        raise UserError("cluster.replicas must be at least 1")
    if cluster.lost_after_s < 0:
        raise UserError("cluster.lost_after_s must be at least 0 seconds")
    if cluster.max_voters < 1:
        raise UserError("cluster.max_voters must be at least 1 (5 tolerates 2 lost voters)")
    bt = raw.get("build", {})
    build = BuildConfig(
        timeout_s=_get(bt, "timeout_s", float, 4 * 3600.0, "build"),
        lease_ttl_s=_get(bt, "lease_ttl_s", float, 10.0, "build"),
        heartbeat_s=_get(bt, "heartbeat_s", float, 2.0, "build"),
        poll_s=_get(bt, "poll_s", float, 1.0, "build"),
        # 0 = one build per 4 cores: a 24-core node runs one big build or six small ones.
        max_parallel_jobs=(_get(bt, "max_parallel_jobs", int, 0, "build")
                           or max(1, node.cores // 4)),
        keep_build_roots=_get(bt, "keep_build_roots", bool, False, "build"),
        emerge_log=_optional_path(base, _get(bt, "emerge_log", str, DEFAULT_EMERGE_LOG,
                                             "build")),
        emerge_log_jobs=_get(bt, "emerge_log_jobs", int, 0, "build"),
    )
    if not 0 <= build.emerge_log_jobs <= MAX_LOG_JOBS:
        raise UserError(f"build.emerge_log_jobs must be 0 (this node's cores) to {MAX_LOG_JOBS}")
    if build.max_parallel_jobs < 0:
        raise UserError("build.max_parallel_jobs must be 0 (one per 4 cores) or more")
    if build.heartbeat_s * 2 > build.lease_ttl_s:
        raise UserError("build.heartbeat_s must be at most half of build.lease_ttl_s")
    keep = _get(raw.get("binhost", {}), "keep_releases", int, 5, "binhost")
    if keep < 1:
        raise UserError("binhost.keep_releases must be at least 1")
    profiles_t = raw.get("profiles", {})
    if not isinstance(profiles_t, dict) or not profiles_t:
        raise UserError("config needs at least one [profiles.NAME] table")
    profiles = {n: _profile(n, t, base) for n, t in profiles_t.items()}
    return Config(path, node, cluster, build, keep, profiles, discovery)
