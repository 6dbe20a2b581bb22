"""A throw-away portage installation for one profile.

Portage reads its whole configuration from the environment and a config root at import time, so
every profile-dependent operation (planning, building) runs `emerge` or a child Python in the
environment this module lays out. The layout follows docs/portage-on-debian.md:

    <workdir>/cfg/etc/portage   PORTAGE_CONFIGROOT: the profile's files + our make.conf settings
    <workdir>/host              PORTAGE_OVERRIDE_EPREFIX: share/portage/config, BDEPEND tools
    <workdir>/root              ROOT=SYSROOT: where dependencies get installed as binaries
    <workdir>/bin/gtar          portage calls gtar; Debian only has tar
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from swarmnode.config import ProfileConfig
from swarmnode.errors import UserError

# Sandboxing needs Gentoo's sandbox/namespaces set up; privilege dropping needs a portage-owned
# tree. Neither is available in a throw-away build root on a foreign host.
_FEATURES_OFF = ("-sandbox", "-usersandbox", "-userpriv", "-usersync", "-network-sandbox",
                 "-pid-sandbox", "-ipc-sandbox", "-mount-sandbox", "-news",
                 "-qa-unresolved-soname-deps")
# binpkg-multi-instance: every build gets a BUILD_ID, so rebuilds never overwrite a release's
# file. binpkg-ignore-signature: dependencies come from the swarm's own staging store (verified
# by sha256), and the build root has no verification keyring.
_FEATURES_ON = ("binpkg-multi-instance", "binpkg-ignore-signature")

# Variables from the caller's environment that may reach portage. Anything else (USE, FEATURES,
# CFLAGS, ROOT, PORTAGE_* …) would silently override the profile, so it is dropped.
_PASS_ENV = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")


def venv_bin() -> Path:
    """The bin directory of the Python environment running swarmnode (holds emerge, ebuild)."""
    return Path(sys.prefix) / "bin"


def portage_share_config() -> Path:
    """portage's default configuration (make.globals, repos.conf, sets) in this installation."""
    path = Path(sys.prefix) / "share" / "portage" / "config"
    if not (path / "make.globals").is_file():
        raise UserError(f"portage's default configuration is missing at {path}; "
                        "reinstall portage in this Python environment (make setup)")
    return path


def repo_name(repo: Path) -> str:
    """The repository's name from profiles/repo_name (what repos.conf and atoms use)."""
    try:
        name = (repo / "profiles" / "repo_name").read_text().strip()
    except OSError:
        raise UserError(f"{repo} is not an ebuild repository (no profiles/repo_name)") from None
    if not name:
        raise UserError(f"{repo}/profiles/repo_name is empty")
    return name


def repos_conf_name(repo: Path, sync_uri: str = "") -> str:
    """The repository's name in repos.conf. A synced repository that is not cloned yet has no
    profiles/repo_name: it is named after its directory (portage uses the repos.conf name for a
    repository without one), and gets its real name once cloned."""
    if sync_uri and not (repo / "profiles" / "repo_name").is_file():
        name = "-".join(re.sub(r"[^A-Za-z0-9_-]+", " ", repo.name).split()).lstrip("-")
        return name or "unsynced"
    return repo_name(repo)


def _repo_section(name: str, repo: Path, sync_uri: str) -> str:
    """repos.conf section. A synced repository belongs to portage (volatile = no): each sync
    resets it to the remote's HEAD, as local edits would make every node's tree differ."""
    lines = [f"[{name}]", f"location = {repo.resolve()}"]
    if sync_uri:
        lines += ["sync-type = git", f"sync-uri = {sync_uri}", "auto-sync = yes", "volatile = no"]
    else:
        lines.append("auto-sync = no")
    return "\n".join(lines) + "\n"


def _q(value: str | Path) -> str:
    """A make.conf double-quoted value (make.conf is not a shell, but uses its quoting)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class PortageEnv:
    """A throw-away portage installation for one profile: config root, host prefix, ROOT."""

    profile: ProfileConfig
    workdir: Path
    pkgdir: Path
    signing_env: dict[str, str] = field(default_factory=dict)
    cores: int = 1

    @property
    def config_root(self) -> Path:
        return self.workdir / "cfg"

    @property
    def etc_portage(self) -> Path:
        return self.config_root / "etc" / "portage"

    @property
    def host(self) -> Path:
        return self.workdir / "host"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def bin(self) -> Path:
        return self.workdir / "bin"

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "tmp"

    @property
    def distdir(self) -> Path:
        return self.workdir / "distfiles"

    @classmethod
    def create(cls, profile: ProfileConfig, workdir: Path, pkgdir: Path,
               signing_env: dict[str, str] | None = None, cores: int = 1) -> "PortageEnv":
        """Lay out the installation under workdir (which may exist but should be empty)."""
        env = cls(profile, Path(workdir).resolve(), Path(pkgdir).resolve(),
                  dict(signing_env or {}), max(1, int(cores)))
        for d in (env.etc_portage, env.host, env.root, env.bin, env.tmpdir, env.distdir,
                  env.pkgdir):
            d.mkdir(parents=True, exist_ok=True)
        env._write_config()
        env._write_host()
        env._write_root()
        env._link_distfiles()
        tar = shutil.which("tar") or "/bin/tar"
        (env.bin / "gtar").symlink_to(tar)
        return env

    # -- config root -------------------------------------------------------------------------

    def _write_config(self) -> None:
        src = self.profile.portage_config
        user_make_conf = ""
        for entry in sorted(src.iterdir()) if src is not None and src.is_dir() else ():
            if entry.name == "make.conf":
                parts = sorted(entry.rglob("*")) if entry.is_dir() else [entry]
                user_make_conf = "\n".join(p.read_text() for p in parts if p.is_file())
            elif entry.name in ("repos.conf", "make.profile", "world"):
                continue  # generated below; world belongs to ROOT, not the config root
            elif entry.is_dir():
                shutil.copytree(entry, self.etc_portage / entry.name, symlinks=False)
            elif entry.is_file():
                shutil.copy2(entry, self.etc_portage / entry.name)
        (self.etc_portage / "make.conf").write_text(
            f"# --- profile {self.profile.name}: {src or '(no portage_config)'}/make.conf ---\n"
            f"{user_make_conf}\n\n"
            + self._generated_make_conf())
        self._write_repos_conf()
        main = self.profile.main_repository / "profiles" / self.profile.portage_profile
        (self.etc_portage / "make.profile").symlink_to(main.resolve())

    def _generated_make_conf(self) -> str:
        inc = f"-I{self.root}/usr/include"
        lib = f"-L{self.root}/usr/lib64 -Wl,-rpath-link,{self.root}/usr/lib64"
        features = " ".join(_FEATURES_OFF + _FEATURES_ON)
        if self.signing_env:
            features += " binpkg-signing"
        lines = [
            "# --- generated by swarmnode (paths, features, toolchain flags for ROOT) ---",
            f"DISTDIR={_q(self.distdir)}",
            f"PKGDIR={_q(self.pkgdir)}",
            f"PORTAGE_TMPDIR={_q(self.tmpdir)}",
            'BINPKG_FORMAT="gpkg"',
            f'FEATURES="${{FEATURES}} {features}"',
            # Compilers only see ROOT's headers/libraries through these (ROOT != / here).
            f'CFLAGS="${{CFLAGS}} {inc}"',
            f'CXXFLAGS="${{CXXFLAGS}} {inc}"',
            f'LDFLAGS="${{LDFLAGS}} {lib}"',
            f'MAKEOPTS="-j{self.cores} -l{self.cores}"',
            'GCC_COLORS=""',  # portage builds on a pty: keep escape codes out of the logs
        ]
        for key, value in sorted(self.signing_env.items()):
            if key == "FEATURES":  # incremental: add to ours, never replace them
                lines.append(f'FEATURES="${{FEATURES}} {_q(value)[1:-1]}"')
            else:
                lines.append(f"{key}={_q(value)}")
        return "\n".join(lines) + "\n"

    def _write_repos_conf(self) -> None:
        names: list[str] = []
        sections = []
        for repo in self.profile.repositories:
            uri = self.profile.sync_uri(repo)
            name = repos_conf_name(repo, uri)
            if name in names:
                raise UserError(f"profile {self.profile.name}: two repositories are named {name!r}")
            names.append(name)
            sections.append(_repo_section(name, repo, uri))
        head = f"[DEFAULT]\nmain-repo = {names[0]}\n"
        (self.etc_portage / "repos.conf").write_text("\n".join([head, *sections]))

    # -- host prefix and ROOT ----------------------------------------------------------------

    def _write_host(self) -> None:
        share = self.host / "share" / "portage" / "config"
        shutil.copytree(portage_share_config(), share)
        # Drop the built-in [gentoo] repository (absent here): it only produces warnings.
        (share / "repos.conf").write_text("[DEFAULT]\n")
        (self.host / "etc").mkdir(exist_ok=True)
        (self.host / "etc" / "portage").symlink_to(self.etc_portage)
        (self.host / "usr" / "bin").mkdir(parents=True, exist_ok=True)

    def _write_root(self) -> None:
        world = self.root / "var" / "lib" / "portage" / "world"
        world.parent.mkdir(parents=True, exist_ok=True)
        world.write_text("".join(f"{a}\n" for a in self.profile.world))

    def _link_distfiles(self) -> None:
        """Symlink the shared distfiles, so portage's locks and fetches never write there."""
        src = self.profile.distfiles
        if src.is_dir():
            for f in src.iterdir():
                if f.is_file():
                    (self.distdir / f.name).symlink_to(f.resolve())

    # -- running portage ---------------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        """The complete environment for emerge/ebuild or a child Python importing portage."""
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.setdefault("HOME", str(self.tmpdir))
        env.update(
            PATH=os.pathsep.join([str(self.bin), str(self.host / "usr" / "bin"),
                                  str(venv_bin()), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]),
            PORTAGE_OVERRIDE_EPREFIX=str(self.host),
            EPREFIX="",
            PORTAGE_CONFIGROOT=str(self.config_root),
            ROOT=str(self.root),
            SYSROOT=str(self.root),
            PYTHONUNBUFFERED="1",
            NOCOLOR="true",
        )
        return env

    def emerge(self, *args: str) -> list[str]:
        """argv running this installation's emerge with the same interpreter as swarmnode."""
        return [sys.executable, str(venv_bin() / "emerge"), *args]
