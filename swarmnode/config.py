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

    @property
    def main_repository(self) -> Path:
        return self.repositories[0]


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    listen_host: str
    listen_port: int
    advertise_url: str
    cores: int
    sweeper: bool = False


@dataclass(frozen=True)
class BuildConfig:
    timeout_s: float = 4 * 3600.0
    lease_ttl_s: float = 10.0
    heartbeat_s: float = 2.0
    poll_s: float = 1.0
    max_parallel_jobs: int = 1
    keep_build_roots: bool = False


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    secret: str
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 300.0
    fail_nodes: int = 2


@dataclass(frozen=True)
class Config:
    path: Path
    node: NodeConfig
    cluster: ClusterConfig
    build: BuildConfig
    keep_releases: int
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)

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
    for repo in repositories:
        if not (repo / "profiles" / "repo_name").is_file():
            raise UserError(f"{where}: {repo} is not an ebuild repository (no profiles/repo_name)")
    portage_config = None
    if table.get("portage_config") is not None:
        portage_config = _path(base, _get(table, "portage_config", str, "", where))
        if not portage_config.is_dir():
            raise UserError(f"{where}.portage_config: {portage_config} is not a directory")
    portage_profile = _get(table, "portage_profile", str, "", where)
    if not portage_profile or ".." in Path(portage_profile).parts:
        raise UserError(f"{where}.portage_profile must name a profile under the repository's profiles/")
    if not (repositories[0] / "profiles" / portage_profile).is_dir():
        raise UserError(f"{where}.portage_profile: {repositories[0]}/profiles/{portage_profile} does not exist")
    distfiles = _path(base, _get(table, "distfiles", str, "", where) or "distfiles")
    if not distfiles.is_dir():
        raise UserError(f"{where}.distfiles: {distfiles} is not a directory")
    targets = tuple(_get(table, "targets", list, ["@world"], where))
    world = tuple(_get(table, "world", list, [], where)) or _read_world(portage_config)
    critical = tuple(_get(table, "critical", list, [], where))
    return ProfileConfig(name, portage_config, repositories, portage_profile, distfiles,
                         targets, world, critical)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"node.listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


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
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    node = NodeConfig(
        node_id=node_id,
        data_dir=_path(base, _get(node_t, "data_dir", str, "/var/lib/swarmnode", "node")),
        listen_host=host,
        listen_port=port,
        advertise_url=_get(node_t, "url", str, f"http://{url_host}:{port}", "node").rstrip("/"),
        cores=_get(node_t, "cores", int, 0, "node") or (os.cpu_count() or 1),
        sweeper=_get(node_t, "sweeper", bool, False, "node"),
    )
    cl = raw.get("cluster", {})
    cluster = ClusterConfig(
        name=_get(cl, "name", str, "swarm", "cluster"),
        secret=_secret(cl, base),
        breaker_threshold=_get(cl, "breaker_threshold", int, 5, "cluster"),
        breaker_cooldown_s=_get(cl, "breaker_cooldown_s", float, 300.0, "cluster"),
        fail_nodes=_get(cl, "fail_nodes", int, 2, "cluster"),
    )
    bt = raw.get("build", {})
    build = BuildConfig(
        timeout_s=_get(bt, "timeout_s", float, 4 * 3600.0, "build"),
        lease_ttl_s=_get(bt, "lease_ttl_s", float, 10.0, "build"),
        heartbeat_s=_get(bt, "heartbeat_s", float, 2.0, "build"),
        poll_s=_get(bt, "poll_s", float, 1.0, "build"),
        max_parallel_jobs=_get(bt, "max_parallel_jobs", int, 1, "build"),
        keep_build_roots=_get(bt, "keep_build_roots", bool, False, "build"),
    )
    if build.heartbeat_s * 2 > build.lease_ttl_s:
        raise UserError("build.heartbeat_s must be at most half of build.lease_ttl_s")
    keep = _get(raw.get("binhost", {}), "keep_releases", int, 5, "binhost")
    if keep < 1:
        raise UserError("binhost.keep_releases must be at least 1")
    profiles_t = raw.get("profiles", {})
    if not isinstance(profiles_t, dict) or not profiles_t:
        raise UserError("config needs at least one [profiles.NAME] table")
    profiles = {n: _profile(n, t, base) for n, t in profiles_t.items()}
    return Config(path, node, cluster, build, keep, profiles)
