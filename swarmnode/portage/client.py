"""A separate, ordinary portage client that installs from a swarm binhost.

Used by `make demo` and the end-to-end tests to prove what a Gentoo admin's machine does:
binrepos.conf points at the binhost, portage's default `verify-signature` stays on, and the
swarm's public key is in the verification keyring. Nothing here is swarm-specific on the
client side; docs/binhost-clients.md shows the same setup for a real Gentoo host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from swarmnode.config import ProfileConfig
from swarmnode.errors import UserError
from swarmnode.portage.env import PortageEnv
from swarmnode.portage.signing import prepare_client_keyring


class _ClientEnv(PortageEnv):
    """PortageEnv laid out as a client: no build settings, signature checks at their default.

    `signing_env` carries the client's verification settings (BINPKG_GPG_VERIFY_GPG_HOME).
    """

    def _generated_make_conf(self) -> str:
        lines = [
            "# --- client settings (paths only; verify-signature stays portage's default) ---",
            f'DISTDIR="{self.distdir}"',
            f'PKGDIR="{self.pkgdir}"',
            f'PORTAGE_TMPDIR="{self.tmpdir}"',
            # No Gentoo sandbox on this host (see docs/portage-on-debian.md).
            'FEATURES="${FEATURES} -sandbox -usersandbox -network-sandbox -pid-sandbox '
            '-ipc-sandbox -mount-sandbox -news"',
        ]
        lines += [f'{key}="{value}"' for key, value in sorted(self.signing_env.items())]
        return "\n".join(lines) + "\n"


KEYRING_PREFIX = "swarmnode-client-keyring-"
#: Where a client's workdir records its keyring's temp dir, so the next create() there (or
#: close()) removes it: the keyring cannot live inside workdir (see create).
_KEYRING_LINK = "keyring"


@dataclass
class BinhostClient:
    """A client root that installs packages from one binhost URL. Usable as a context manager:
    leaving it removes the keyring's temp dir (``close``); the root itself stays."""

    env: PortageEnv
    url: str
    keyring_dir: Path

    @property
    def root(self) -> Path:
        return self.env.root

    def close(self) -> None:
        shutil.rmtree(self.keyring_dir, ignore_errors=True)

    def __enter__(self) -> BinhostClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @staticmethod
    def _forget_keyring(workdir: Path) -> None:
        """Remove the keyring temp dir a previous client in ``workdir`` left behind."""
        link = workdir / _KEYRING_LINK
        if link.is_symlink():
            target = Path(os.readlink(link))
            if target.name.startswith(KEYRING_PREFIX):  # only ever what create() made
                shutil.rmtree(target, ignore_errors=True)

    @classmethod
    def create(cls, workdir: Path, url: str, public_key: str | None, repository: Path,
               portage_profile: str) -> BinhostClient:
        """Lay out a client; without `public_key` it has an empty keyring (and must refuse)."""
        workdir = Path(workdir).resolve()
        cls._forget_keyring(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        profile = ProfileConfig(name="client", portage_config=None,
                                repositories=(Path(repository).resolve(),),
                                portage_profile=portage_profile, distfiles=workdir / "none")
        # portage verifies signatures as the unprivileged GPG_VERIFY_USER_DROP (nobody), so the
        # keyring lives where every parent directory is searchable — a temp dir, not workdir.
        keyring = Path(tempfile.mkdtemp(prefix=KEYRING_PREFIX)) / "gnupg"
        keyring.parent.chmod(0o755)
        keyring.mkdir(mode=0o700)
        if public_key:
            prepare_client_keyring(public_key, keyring)
        else:
            keyring.chmod(0o755)
        env = _ClientEnv.create(profile, workdir, workdir / "pkgcache",
                                {"BINPKG_GPG_VERIFY_GPG_HOME": str(keyring)})
        (env.etc_portage / "binrepos.conf").write_text(
            f"[swarmnode]\nsync-uri = {url}\npriority = 10\n")
        (workdir / _KEYRING_LINK).symlink_to(keyring.parent)
        return cls(env, url, keyring.parent)

    def install(self, atoms: list[str]) -> str:
        """`emerge --getbinpkgonly` the atoms (and their dependencies) from the binhost."""
        proc = subprocess.run(self.env.emerge("--getbinpkgonly", "--oneshot", "--quiet-build",
                                              *atoms),
                              env=self.env.environ(), capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise UserError(f"client install of {' '.join(atoms)} failed:\n{tail}")
        return proc.stdout

    def verifies_signatures(self) -> bool:
        """What portage itself reports for this binhost: `verify-signature: True`."""
        proc = subprocess.run(self.env.emerge("--info"), env=self.env.environ(),
                              capture_output=True, text=True, timeout=120)
        return "verify-signature: True" in proc.stdout

    def run(self, program: str, *args: str) -> str:
        """Run an installed program from the client root (its libraries from root/usr/lib64)."""
        exe = self.root / "usr" / "bin" / program
        if not exe.is_file():
            raise UserError(f"{program} is not installed in {self.root}")
        env = dict(os.environ, LD_LIBRARY_PATH=str(self.root / "usr" / "lib64"))
        return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                              check=True).stdout
