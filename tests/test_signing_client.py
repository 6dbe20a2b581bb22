"""End to end: a separate portage client installs the swarm's signed packages over HTTP, with
signature verification left at portage's default (on); a client without the key refuses them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from binpkg_fixture import APP_CPV, GREETING, LIB_CPV, Binpkgs, emerge, portage_env

from swarmnode.binhost import Binhost, PackageRef, Publication
from swarmnode.errors import UserError
from swarmnode.portage.index import read_gpkg_metadata
from swarmnode.portage.signing import (
    builder_env, ensure_signing_key, export_public_key, prepare_client_keyring, stop_gpg_agent)
from swarmnode.store import ArtifactStore

PROFILE = "desktop"
pytestmark = pytest.mark.slow


def serve(binhost: Binhost) -> tuple[ThreadingHTTPServer, str]:
    """GET /binhost/<profile>/<path> via Binhost.resolve, like the node's API does."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            prefix = "/binhost/"
            try:
                if not self.path.startswith(prefix):
                    raise UserError("not found", status=404)
                profile, _, relpath = self.path[len(prefix):].partition("/")
                data = binhost.resolve(profile, relpath).read_bytes()
            except UserError as e:
                self.send_error(e.status, e.message)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/binhost/{PROFILE}"


@pytest.fixture(scope="module")
def binhost_url(binpkgs: Binpkgs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The signed packages published as a release (swarm BUILD_IDs) and served over HTTP."""
    root = tmp_path_factory.mktemp("node")
    store = ArtifactStore(root / "store")
    refs = []
    for cpv, path in sorted(binpkgs.files.items()):
        obj = store.put_file(path)
        refs.append(PackageRef(cpv, 40 + len(refs), obj.sha256, obj.size))
    binhost = Binhost(root / "binhost", store)
    binhost.publish(PROFILE, Publication("r1", 1_700_000_000, tuple(refs)))
    server, url = serve(binhost)
    yield url
    server.shutdown()


@pytest.fixture
def client_keyring_dir() -> Iterator[Path]:
    """A keyring location the unprivileged verify user can reach (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="swarmnode-client-"))
    os.chmod(path, 0o755)
    yield path / "gnupg"
    shutil.rmtree(path, ignore_errors=True)


def client(tmp_path: Path, binpkgs: Binpkgs, url: str, keyring: Path) -> dict[str, str]:
    """A separate portage instance: own config root, ROOT and PKGDIR; binrepos.conf points at
    the swarm; FEATURES and verify-signature left at portage's defaults."""
    work = tmp_path / "client"
    env = portage_env(work, binpkgs.repo, root=tmp_path / "client-root",
                      pkgdir=tmp_path / "client-pkgs",
                      make_conf_extra=f'BINPKG_GPG_VERIFY_GPG_HOME="{keyring}"\n')
    (work / "cfg" / "etc" / "portage" / "binrepos.conf").write_text(
        f"[swarmnode-{PROFILE}]\nsync-uri = {url}\npriority = 10\n")
    return env


def test_client_installs_signed_packages_and_runs_them(
        tmp_path: Path, binpkgs: Binpkgs, binhost_url: str, client_keyring_dir: Path) -> None:
    prepare_client_keyring(export_public_key(binpkgs.key), client_keyring_dir)
    env = client(tmp_path, binpkgs, binhost_url, client_keyring_dir)
    info = emerge(env, "--info")
    assert "verify-signature: True" in info.stdout  # portage's default, untouched

    emerge(env, "--getbinpkgonly", "--oneshot", "=" + APP_CPV)

    root = Path(env["ROOT"])
    vdb = {p.parent.name + "/" + p.name for p in (root / "var/db/pkg").glob("*/*")}
    assert vdb == {APP_CPV, LIB_CPV}
    # The index carries the swarm's BUILD_ID (file names, instance choice); the installed
    # record keeps the one inside the signed package's metadata, which the builder set.
    assert (root / "var/db/pkg" / APP_CPV / "BUILD_ID").read_text().strip() == \
        str(binpkgs.build_ids[APP_CPV])
    run = subprocess.run([str(root / "usr/bin/swarmhello")], capture_output=True, text=True,
                         env={"LD_LIBRARY_PATH": str(root / "usr/lib64")}, check=True)
    assert run.stdout.strip() == GREETING


def test_client_without_the_key_refuses_the_packages(
        tmp_path: Path, binpkgs: Binpkgs, binhost_url: str, client_keyring_dir: Path) -> None:
    other = ensure_signing_key(tmp_path / "other-gnupg", name="somebody-else")
    stop_gpg_agent(other.gpg_home)
    prepare_client_keyring(export_public_key(other), client_keyring_dir)
    env = client(tmp_path, binpkgs, binhost_url, client_keyring_dir)

    proc = emerge(env, "--getbinpkgonly", "--oneshot", "=" + APP_CPV, check=False)

    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "verification failed" in output and "NO_PUBKEY" in output
    assert not (Path(env["ROOT"]) / "usr/bin/swarmhello").exists()


def test_daemon_checks_signatures_against_a_keyring(binpkgs: Binpkgs, tmp_path: Path) -> None:
    path = binpkgs.files[APP_CPV]
    meta = read_gpkg_metadata(path, verify_gpg_home=binpkgs.key.gpg_home)
    assert meta["CATEGORY"] + "/" + meta["PF"] == APP_CPV
    stranger = tmp_path / "empty-gnupg"
    stranger.mkdir(mode=0o700)
    with pytest.raises(UserError, match="not a usable gpkg"):
        read_gpkg_metadata(path, verify_gpg_home=stranger)


def test_signing_key_is_created_once_and_private(tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    key = ensure_signing_key(home)
    try:
        assert ensure_signing_key(home) == key  # idempotent: the same key every time
        assert home.stat().st_mode & 0o777 == 0o700
        assert len(key.fingerprint) == 40
        env = builder_env(key)
        assert "binpkg-signing" in env["FEATURES"].split()
        assert env["BINPKG_GPG_SIGNING_KEY"] == key.fingerprint
        assert env["BINPKG_GPG_SIGNING_GPG_HOME"] == str(home)
        assert export_public_key(key).startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    finally:
        stop_gpg_agent(home)


def test_client_keyring_trusts_the_key_and_keeps_private_keys_private(
        binpkgs: Binpkgs, tmp_path: Path) -> None:
    home = tmp_path / "client-gnupg"
    home.mkdir(mode=0o700)
    (home / "private-keys-v1.d").mkdir(mode=0o700)  # as in a keyring getuto manages
    prepare_client_keyring(export_public_key(binpkgs.key), home)
    prepare_client_keyring(export_public_key(binpkgs.key), home)  # idempotent
    listing = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons",
                              "--list-keys", binpkgs.key.fingerprint],
                             capture_output=True, text=True, check=True).stdout
    assert listing.splitlines()[1].split(":")[1] == "u"  # pub line: ultimately trusted
    assert home.stat().st_mode & 0o777 == 0o755
    assert (home / "pubring.kbx").stat().st_mode & 0o777 == 0o644
    assert (home / "trustdb.gpg").stat().st_mode & 0o777 == 0o644
    assert (home / "private-keys-v1.d").stat().st_mode & 0o777 == 0o700
    with pytest.raises(UserError, match="no public key"):
        prepare_client_keyring("not a key", home)
