"""Nothing is special-cased to the example repository: a repository made here, with its own
name, profile, categories and distfiles, is built, published and installed through the CLI,
with nothing but a [profiles.*] table pointing at it."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness import NodeProc, profile_toml
from swarmnode.portage.client import BinhostClient
from swarmnode.config import ProfileConfig
from swarmnode.portage.env import PortageEnv, venv_bin

pytestmark = pytest.mark.slow

MAKE_DEFAULTS = """ARCH="amd64"
ACCEPT_KEYWORDS="amd64"
ABI="amd64"
DEFAULT_ABI="amd64"
MULTILIB_ABIS="amd64"
LIBDIR_amd64="lib64"
CHOST="x86_64-pc-linux-gnu"
CHOST_amd64="x86_64-pc-linux-gnu"
ELIBC="glibc"
KERNEL="linux"
USERLAND="GNU"
ACCEPT_LICENSE="*"
"""

EBUILD = """EAPI=8
DESCRIPTION="{desc}"
HOMEPAGE="https://example.invalid/heldout"
SRC_URI="${{P}}.tar.gz"
LICENSE="BSD"
SLOT="0"
KEYWORDS="amd64"
RESTRICT="mirror"
{deps}
src_compile() {{ emake CC="${{CC:-gcc}}"; }}
src_install() {{ emake DESTDIR="${{D}}" LIBDIR="$(get_libdir)" install; }}
"""

LIB_MAKEFILE = """all: libtally.so.3
libtally.so.3: tally.c
\t$(CC) $(CFLAGS) -fPIC -shared -Wl,-soname,libtally.so.3 $(LDFLAGS) -o $@ tally.c
install:
\tinstall -D -m644 tally.h $(DESTDIR)/usr/include/tally.h
\tinstall -D -m755 libtally.so.3 $(DESTDIR)/usr/$(LIBDIR)/libtally.so.3
\tln -s libtally.so.3 $(DESTDIR)/usr/$(LIBDIR)/libtally.so
"""

APP_MAKEFILE = """all: tallyho
tallyho: main.c
\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ main.c -ltally
install:
\tinstall -D -m755 tallyho $(DESTDIR)/usr/bin/tallyho
"""

SOURCES = {
    "sci-libs/libtally-3.1": {
        "Makefile": LIB_MAKEFILE,
        "tally.h": "int tally(int n);\n",
        "tally.c": "int tally(int n) { int s = 0; while (n) s += n--; return s; }\n",
    },
    "games-misc/tallyho-0.9": {
        "Makefile": APP_MAKEFILE,
        "main.c": '#include <stdio.h>\n#include <tally.h>\n'
                  'int main(void) { printf("tallyho %d\\n", tally(10)); return 0; }\n',
    },
}


def tarball(path: Path, top: str, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_repository(root: Path) -> tuple[Path, Path, Path]:
    """A repository 'heldout' with its own profile, plus distfiles and a portage config."""
    repo, distfiles, conf = root / "heldout-repo", root / "heldout-distfiles", root / "conf"
    for d in (repo / "metadata", repo / "profiles/base", distfiles, conf):
        d.mkdir(parents=True)
    (repo / "metadata/layout.conf").write_text("masters =\nthin-manifests = true\n"
                                               "repo-name = heldout\n")
    (repo / "profiles/repo_name").write_text("heldout\n")
    (repo / "profiles/categories").write_text("games-misc\nsci-libs\n")
    (repo / "profiles/base/make.defaults").write_text(MAKE_DEFAULTS)
    (repo / "profiles/base/eapi").write_text("8\n")
    deps = {"sci-libs/libtally-3.1": "",
            "games-misc/tallyho-0.9": 'DEPEND="sci-libs/libtally"\nRDEPEND="${DEPEND}"'}
    for cpv, files in SOURCES.items():
        cat, pf = cpv.split("/")
        pn = pf.rsplit("-", 1)[0]
        tarball(distfiles / f"{pf}.tar.gz", pf, files)
        (repo / cat / pn).mkdir(parents=True)
        (repo / cat / pn / f"{pf}.ebuild").write_text(EBUILD.format(desc=pn, deps=deps[cpv]))
    (conf / "make.conf").write_text('CFLAGS="-O1"\n')
    # Manifests, as the repository's maintainer would make them: `ebuild … manifest`.
    profile = ProfileConfig("mf", conf, (repo,), "base", distfiles)
    env = PortageEnv.create(profile, root / "manifest-env", root / "manifest-env/pkgs")
    for ebuild in sorted(repo.glob("*/*/*.ebuild")):
        proc = subprocess.run([sys.executable, str(venv_bin() / "ebuild"), str(ebuild),
                               "manifest"], env=env.environ(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return repo, distfiles, conf


def test_a_repository_outside_the_project_builds_and_installs(tmp_path: Path) -> None:
    repo, distfiles, conf = make_repository(tmp_path)
    # All a user adds: a profile table naming the repository, its profile and the distfiles
    # (no portage config directory at all: the repository's profile decides).
    node = NodeProc(tmp_path / "swarm", "solo",
                    profile_toml("lab", repo, None, distfiles, portage_profile="base"))
    node.start()
    try:
        empty = node.cli("fresh", "--profile", "lab")  # no world defined: say what to do
        assert empty.returncode == 1 and "@world of profile lab is empty" in empty.stderr
        built = node.cli("fresh", "--profile", "lab", "--wait", "games-misc/tallyho", timeout=600)
        assert built.returncode == 0, built.stdout + built.stderr + node.log_tail()
        assert node.cli("finalize", "--profile", "lab").returncode == 0
        client = BinhostClient.create(tmp_path / "client", f"{node.url}/binhost/lab",
                                      node.cli("key").stdout, repo, "base")
        client.install(["games-misc/tallyho"])
        assert client.run("tallyho").strip() == "tallyho 55"
    finally:
        node.stop()
        shutil.rmtree(tmp_path / "swarm", ignore_errors=True)
