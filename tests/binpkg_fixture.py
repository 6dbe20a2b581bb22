"""Real signed gpkgs for the store/binhost/signing tests, built once per session with real emerge.

A two-package repo: dev-libs/swarmgreet (a shared library) and app-misc/swarmhello (a program
linked against it, RDEPEND on it). Built non-prefix against a throw-away ROOT following
docs/portage-on-debian.md, signed with a key from ensure_signing_key. Self-contained: it does
not use the project's builder module or example repo.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swarmnode.portage.signing import SigningKey, builder_env, ensure_signing_key, stop_gpg_agent

VENV = Path(sys.prefix)
PORTAGE_CONFIG = VENV / "share" / "portage" / "config"
LIB_CPV = "dev-libs/swarmgreet-1.0"
APP_CPV = "app-misc/swarmhello-1.0"
GREETING = "hello from the swarm"

_EBUILD_HEAD = """EAPI=8
DESCRIPTION="{desc}"
HOMEPAGE="https://example.invalid/swarmnode"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${{WORKDIR}}"
"""

LIB_EBUILD = _EBUILD_HEAD.format(desc="swarmnode test library") + """
src_unpack() { cp "${FILESDIR}"/greet.c "${FILESDIR}"/greet.h . || die; }
src_compile() {
	${CC:-gcc} ${CFLAGS} -fPIC -shared -Wl,-soname,libgreet.so.1 ${LDFLAGS} \\
		-o libgreet.so.1 greet.c || die
}
src_install() {
	dolib.so libgreet.so.1
	dosym libgreet.so.1 /usr/$(get_libdir)/libgreet.so
	insinto /usr/include
	doins greet.h
}
"""

APP_EBUILD = _EBUILD_HEAD.format(desc="swarmnode test program") + """
IUSE="+greet"
DEPEND="dev-libs/swarmgreet"
RDEPEND="greet? ( ${DEPEND} )"
src_unpack() { cp "${FILESDIR}"/hello.c . || die; }
src_compile() { ${CC:-gcc} ${CFLAGS} ${LDFLAGS} -o swarmhello hello.c -lgreet || die; }
src_install() { dobin swarmhello; }
"""

FILES = {
    "dev-libs/swarmgreet/files/greet.h": "const char *greet(void);\n",
    "dev-libs/swarmgreet/files/greet.c":
        f'#include "greet.h"\nconst char *greet(void) {{ return "{GREETING}"; }}\n',
    "app-misc/swarmhello/files/hello.c":
        '#include <stdio.h>\n#include <greet.h>\nint main(void) { puts(greet()); return 0; }\n',
    "dev-libs/swarmgreet/swarmgreet-1.0.ebuild": LIB_EBUILD,
    "app-misc/swarmhello/swarmhello-1.0.ebuild": APP_EBUILD,
    "profiles/repo_name": "swarmtest\n",
    "profiles/categories": "app-misc\ndev-libs\n",
    "profiles/arch.list": "amd64\n",
    "profiles/swarmtest/eapi": "8\n",
    "profiles/swarmtest/make.defaults": (
        'ARCH="amd64"\nACCEPT_KEYWORDS="amd64"\nABI="amd64"\nDEFAULT_ABI="amd64"\n'
        'MULTILIB_ABIS="amd64"\nLIBDIR_amd64="lib64"\nCHOST="x86_64-pc-linux-gnu"\n'
        'ELIBC="glibc"\nKERNEL="linux"\nUSERLAND="GNU"\n'
        'IUSE_IMPLICIT="prefix prefix-guest prefix-stack"\n'
    ),
    "metadata/layout.conf": "masters =\nthin-manifests = true\nsign-manifests = false\n",
}


@dataclass(frozen=True)
class Binpkgs:
    """Signed gpkgs built by real emerge, plus what a client needs to trust them."""

    repo: Path                   # the ebuild repository (clients reuse its profile)
    pkgdir: Path                 # builder PKGDIR (with portage's own Packages index)
    key: SigningKey
    files: dict[str, Path]       # cpv -> .gpkg.tar
    build_ids: dict[str, int]    # cpv -> BUILD_ID portage allocated


def write_repo(repo: Path) -> None:
    for rel, text in FILES.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def portage_env(work: Path, repo: Path, *, root: Path, pkgdir: Path,
                make_conf_extra: str = "") -> dict[str, str]:
    """Config root + host prefix for one portage instance (recipe: docs/portage-on-debian.md)."""
    host, cfg, bindir = work / "host", work / "cfg", work / "bin"
    etc = cfg / "etc" / "portage"
    for d in (host / "share" / "portage", host / "etc", etc / "repos.conf", bindir, root,
              pkgdir, work / "distfiles", work / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    # portage's defaults without the built-in [gentoo] repo (it only produces warnings here)
    share = host / "share" / "portage" / "config"
    if not share.exists():
        share.mkdir()
        for entry in PORTAGE_CONFIG.iterdir():
            if entry.name != "repos.conf":
                (share / entry.name).symlink_to(entry)
        (share / "repos.conf").write_text("[DEFAULT]\nmain-repo = swarmtest\n")
    if not (host / "etc" / "portage").exists():
        (host / "etc" / "portage").symlink_to(etc)
    if not (bindir / "gtar").exists():
        (bindir / "gtar").symlink_to("/usr/bin/tar")
    (etc / "repos.conf" / "swarmtest.conf").write_text(
        f"[DEFAULT]\nmain-repo = swarmtest\n\n[swarmtest]\nlocation = {repo}\n")
    profile = etc / "make.profile"
    if not profile.is_symlink():
        profile.symlink_to(repo / "profiles" / "swarmtest")
    (etc / "make.conf").write_text(
        'FEATURES="-sandbox -usersandbox -userpriv -usersync -network-sandbox -pid-sandbox'
        ' -ipc-sandbox -mount-sandbox binpkg-multi-instance -news -merge-sync"\n'
        'BINPKG_FORMAT="gpkg"\n'
        f'PKGDIR="{pkgdir}"\nDISTDIR="{work / "distfiles"}"\nPORTAGE_TMPDIR="{work / "tmp"}"\n'
        f'CFLAGS="-O2 -pipe -I{root}/usr/include"\n'
        f'LDFLAGS="-L{root}/usr/lib64 -Wl,-rpath-link,{root}/usr/lib64"\n'
        'ACCEPT_LICENSE="*"\nPORTAGE_ELOG_SYSTEM=""\nCLEAN_DELAY="0"\n'
        + make_conf_extra)
    return {
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "PATH": f"{bindir}:{host}/usr/bin:{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PORTAGE_OVERRIDE_EPREFIX": str(host),
        "EPREFIX": "",
        "PORTAGE_CONFIGROOT": str(cfg),
        "ROOT": str(root),
        "SYSROOT": str(root),
    }


def emerge(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(VENV / "bin" / "emerge"), "--color=n", "--quiet-build=y", *args],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"emerge {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_binpkgs(work: Path) -> Binpkgs:
    """Build and sign both packages: ~5 s on this machine."""
    from portage.getbinpkg import PackageIndex

    repo = work / "repo"
    write_repo(repo)
    key = ensure_signing_key(work / "gnupg")
    pkgdir = work / "pkgdir"
    env = portage_env(work / "builder", repo, root=work / "builder-root", pkgdir=pkgdir)
    env.update(builder_env(key))
    emerge(env, "--buildpkg", "--oneshot", "--jobs=1", "=" + APP_CPV)
    index = PackageIndex()
    with open(pkgdir / "Packages", encoding="utf-8") as f:
        index.read(f)
    files = {p["CPV"]: pkgdir / p["PATH"] for p in index.packages}
    build_ids = {p["CPV"]: int(p["BUILD_ID"]) for p in index.packages}
    assert set(files) == {LIB_CPV, APP_CPV}, files
    return Binpkgs(repo=repo, pkgdir=pkgdir, key=key, files=files, build_ids=build_ids)


_built: Binpkgs | None = None


@pytest.fixture(scope="session")
def binpkgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Binpkgs]:
    """Session-wide signed gpkgs, built once per test process (several test modules import
    this fixture; the module-level cache keeps it to one build)."""
    global _built
    if _built is None:
        _built = build_binpkgs(tmp_path_factory.mktemp("binpkgs"))
    yield _built
    stop_gpg_agent(_built.key.gpg_home)
