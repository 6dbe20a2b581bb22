"""The swarm's GPG signing key and the keyring a binhost client verifies with.

Since portage 3.0.78 clients refuse unsigned gpkgs by default (`verify-signature = true` in
binrepos.conf), so every package the swarm publishes is signed by the builders with one
passphrase-less ed25519 key. Clients import the public half, give it ultimate owner trust and
make the keyring readable by the user portage drops to while verifying.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from swarmnode.errors import UserError

GPG = "gpg"
DIGEST = "SHA512"
VERIFY_FILES = ("pubring.kbx", "pubring.gpg", "trustdb.gpg")  # what verification reads
_OPTIONS = {"--status-fd", "--with-colons", "--armor", "--pinentry-mode", "--passphrase"}


@dataclass(frozen=True)
class SigningKey:
    gpg_home: Path
    fingerprint: str


def _gpg(gpg_home: Path, *args: str, stdin: bytes | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    """Run gpg non-interactively on `gpg_home`; a failure is one clear UserError line."""
    if shutil.which(GPG) is None:
        raise UserError("gpg is not installed: install gnupg (make setup does)")
    cmd = [GPG, "--homedir", str(gpg_home), "--batch", "--no-tty", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        action = next((a for a in args if a.startswith("--") and a not in _OPTIONS), args[0])
        raise UserError(f"gpg {action} failed in {gpg_home}: {detail}")
    return proc


def _secret_key_for(gpg_home: Path, name: str) -> str | None:
    """Fingerprint of a usable signing secret key whose user id is `name`, if any."""
    out = _gpg(gpg_home, "--with-colons", "--list-secret-keys").stdout.decode("utf-8", "replace")
    fpr: str | None = None
    can_sign = False
    for line in out.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            # validity 'r'/'e' = revoked/expired; capability field holds 'S' for usable signing
            can_sign = fields[1] not in ("r", "e") and "S" in fields[11]
            fpr = None
        elif fields[0] == "fpr" and fpr is None:
            fpr = fields[9]
        elif fields[0] == "uid" and can_sign and fpr and fields[9] == name:
            return fpr
    return None


def ensure_signing_key(gpg_home: Path, name: str = "swarmnode") -> SigningKey:
    """Return the swarm key in `gpg_home`, generating it once (idempotent, safe in parallel)."""
    gpg_home = Path(gpg_home).absolute()
    gpg_home.mkdir(parents=True, exist_ok=True)
    os.chmod(gpg_home, 0o700)
    with open(gpg_home / ".swarmnode-keygen.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fpr = _secret_key_for(gpg_home, name)
        if fpr is None:
            _gpg(gpg_home, "--pinentry-mode", "loopback", "--passphrase", "",
                 "--quick-gen-key", name, "ed25519", "sign", "never")
            fpr = _secret_key_for(gpg_home, name)
        if fpr is None:
            raise UserError(f"gpg created no usable signing key for {name!r} in {gpg_home}")
    return SigningKey(gpg_home=gpg_home, fingerprint=fpr)


def export_public_key(key: SigningKey) -> str:
    """ASCII-armored public key: what clients import (docs/binhost-clients.md)."""
    out = _gpg(key.gpg_home, "--armor", "--export", key.fingerprint).stdout.decode()
    if "BEGIN PGP PUBLIC KEY BLOCK" not in out:
        raise UserError(f"key {key.fingerprint} not found in {key.gpg_home}")
    return out


def export_secret_key(key: SigningKey) -> str:
    """ASCII-armored secret key (passphrase-less), to hand the swarm key to other nodes."""
    out = _gpg(key.gpg_home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor",
               "--export-secret-keys", key.fingerprint).stdout.decode()
    if "BEGIN PGP PRIVATE KEY BLOCK" not in out:
        raise UserError(f"secret key {key.fingerprint} not found in {key.gpg_home}")
    return out


def import_secret_key(gpg_home: Path, armored: str, fingerprint: str) -> SigningKey:
    """Adopt the swarm's key in this node's home: import it and trust it ultimately (the
    builder verifies what it signs with the same home)."""
    gpg_home = Path(gpg_home).absolute()
    _gpg(gpg_home, "--pinentry-mode", "loopback", "--passphrase", "", "--import",
         stdin=armored.encode())
    _gpg(gpg_home, "--import-ownertrust", stdin=f"{fingerprint}:6:\n".encode())
    _gpg(gpg_home, "--check-trustdb")
    return SigningKey(gpg_home=gpg_home, fingerprint=fingerprint)


def builder_env(key: SigningKey) -> dict[str, str]:
    """Variables (environment or make.conf) that make portage sign every gpkg it builds.

    Names are portage's own (make.globals, portage/gpkg.py checksum_helper). FEATURES is
    incremental, so this adds to whatever make.conf sets. Signing uses the default
    BINPKG_GPG_SIGNING_BASE_COMMAND (flock + gpg --sign --armor).

    The builder also *verifies* each gpkg it just made (binarytree.inject reads its metadata),
    so it needs a verifying keyring too: the signing home itself, where the key is ultimately
    trusted. That home is private (0700), so verification must not drop to `nobody`
    (GPG_VERIFY_USER_DROP/GROUP_DROP empty = stay root).
    """
    return {
        "BINPKG_FORMAT": "gpkg",
        "FEATURES": "binpkg-signing",
        "BINPKG_GPG_SIGNING_GPG_HOME": str(key.gpg_home),
        "BINPKG_GPG_SIGNING_KEY": key.fingerprint,
        "BINPKG_GPG_SIGNING_DIGEST": DIGEST,
        "BINPKG_GPG_VERIFY_GPG_HOME": str(key.gpg_home),
        "GPG_VERIFY_USER_DROP": "",
        "GPG_VERIFY_GROUP_DROP": "",
    }


def prepare_client_keyring(public_key_armored: str, gpg_home: Path) -> None:
    """Set up a client's BINPKG_GPG_VERIFY_GPG_HOME (default /etc/portage/gnupg).

    Imports the key, gives it ultimate owner trust (portage requires TRUST_ULTIMATE or
    TRUST_FULLY, not just a good signature) and makes the public keyring and trust database
    world-readable: running as root, portage verifies as GPG_VERIFY_USER_DROP (default
    `nobody`), which must read them. Idempotent; safe on a keyring getuto manages.
    """
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in public_key_armored:
        raise UserError("no public key found in the given key data (expected ASCII armor)")
    gpg_home = Path(gpg_home).absolute()
    if not gpg_home.exists():
        gpg_home.mkdir(parents=True, mode=0o700)  # private while gpg creates it
    proc = _gpg(gpg_home, "--status-fd", "1", "--import", stdin=public_key_armored.encode())
    fprs = {
        line.split()[3]
        for line in proc.stdout.decode("utf-8", "replace").splitlines()
        if line.startswith("[GNUPG:] IMPORT_OK ")
    }
    if not fprs:
        raise UserError("no public key found in the given key data")
    trust = "".join(f"{fpr}:6:\n" for fpr in sorted(fprs))  # 6 = ultimate
    _gpg(gpg_home, "--import-ownertrust", stdin=trust.encode())
    _gpg(gpg_home, "--check-trustdb")
    stop_gpg_agent(gpg_home)
    # Readable: the directory and what `gpg --verify` reads. Never private-keys-v1.d: a
    # keyring managed by getuto holds its local signing key there.
    os.chmod(gpg_home, 0o755)
    for name in VERIFY_FILES:
        if (gpg_home / name).is_file():
            os.chmod(gpg_home / name, 0o644)


def stop_gpg_agent(gpg_home: Path) -> None:
    """Stop the gpg-agent gpg started for `gpg_home` (tests and throw-away keyrings)."""
    if shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--homedir", str(gpg_home), "--kill", "all"],
                       capture_output=True, check=False)
