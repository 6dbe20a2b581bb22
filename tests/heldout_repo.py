"""A Gentoo repository made from scratch, nothing like the example: repository 'heldout' with its
own profile, categories, distfiles and Manifests, so a test proves nothing is special-cased.

It holds `sci-libs/libtally` and `games-misc/tallyho` (which links against it), and optionally
more tiny programs `games-misc/tallyN` for the multi-node tests: every one links against
libtally, and tally2 and tally3 also build against their predecessor's header, so the cycle has
a short chain (libtally → tally1 → tally2 → tally3) next to the parallel rest.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

from swarmnode.config import ProfileConfig
from swarmnode.portage.env import PortageEnv, venv_bin

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

#: A tallyN program; it also installs a header naming itself, for the next one in the chain.
PROGRAM_MAKEFILE = """all: {name}
{name}: main.c
\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ main.c -ltally
install:
\tinstall -D -m755 {name} $(DESTDIR)/usr/bin/{name}
\tinstall -D -m644 {name}.h $(DESTDIR)/usr/include/{name}.h
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
DEPS = {"sci-libs/libtally-3.1": "",
        "games-misc/tallyho-0.9": 'DEPEND="sci-libs/libtally"\nRDEPEND="${DEPEND}"'}
CHAIN = (2, 3)  # tallyN for these N builds against tally(N-1)'s header


def program_atoms(extra_programs: int) -> list[str]:
    """Every package of the repository made with `extra_programs`: a profile's whole world."""
    return (["sci-libs/libtally", "games-misc/tallyho"]
            + [f"games-misc/tally{n}" for n in range(1, extra_programs + 1)])


def program_output(n: int) -> str:
    """What `tallyN` prints (a chain member names the program it was built against)."""
    after = f" after tally{n - 1}" if n in CHAIN else ""
    return f"tally{n} {n * (n + 1) // 2}{after}"


def _program(n: int) -> tuple[dict[str, str], str]:
    """Sources and ebuild dependency lines of `games-misc/tallyN-1.0`."""
    name = f"tally{n}"
    prev = f"tally{n - 1}" if n in CHAIN else None
    include = f"#include <{prev}.h>\n" if prev else ""
    after = f'" after " {prev.upper()}_NAME' if prev else '""'
    main = ('#include <stdio.h>\n#include <tally.h>\n' + include
            + f'int main(void) {{ printf("{name} %d" {after} "\\n", tally({n})); return 0; }}\n')
    files = {"Makefile": PROGRAM_MAKEFILE.format(name=name),
             f"{name}.h": f'#define {name.upper()}_NAME "{name}"\n',
             "main.c": main}
    depend = "sci-libs/libtally" + (f" games-misc/{prev}" if prev else "")
    return files, f'DEPEND="{depend}"\nRDEPEND="sci-libs/libtally"'


def tarball(path: Path, top: str, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_repository(root: Path, extra_programs: int = 0) -> tuple[Path, Path, Path]:
    """A repository 'heldout' with its own profile, plus distfiles and a portage config.

    Returns (repository, distfiles, portage config dir). `extra_programs` adds
    `games-misc/tally1-1.0` … `tallyN-1.0` (see the module docstring).
    """
    if extra_programs < 0:
        raise ValueError(f"extra_programs must be 0 or more, got {extra_programs}")
    repo, distfiles, conf = root / "heldout-repo", root / "heldout-distfiles", root / "conf"
    for d in (repo / "metadata", repo / "profiles/base", distfiles, conf):
        d.mkdir(parents=True)
    (repo / "metadata/layout.conf").write_text("masters =\nthin-manifests = true\n"
                                               "repo-name = heldout\n")
    (repo / "profiles/repo_name").write_text("heldout\n")
    (repo / "profiles/categories").write_text("games-misc\nsci-libs\n")
    (repo / "profiles/base/make.defaults").write_text(MAKE_DEFAULTS)
    (repo / "profiles/base/eapi").write_text("8\n")
    packages = {cpv: (files, DEPS[cpv]) for cpv, files in SOURCES.items()}
    for n in range(1, extra_programs + 1):
        packages[f"games-misc/tally{n}-1.0"] = _program(n)
    for cpv, (files, deps) in packages.items():
        cat, pf = cpv.split("/")
        pn = pf.rsplit("-", 1)[0]
        tarball(distfiles / f"{pf}.tar.gz", pf, files)
        (repo / cat / pn).mkdir(parents=True)
        (repo / cat / pn / f"{pf}.ebuild").write_text(EBUILD.format(desc=pn, deps=deps))
    (conf / "make.conf").write_text('CFLAGS="-O1"\n')
    # Manifests, as the repository's maintainer would make them: `ebuild … manifest`.
    profile = ProfileConfig("mf", conf, (repo,), "base", distfiles)
    env = PortageEnv.create(profile, root / "manifest-env", root / "manifest-env/pkgs")
    for ebuild in sorted(repo.glob("*/*/*.ebuild")):
        proc = subprocess.run([sys.executable, str(venv_bin() / "ebuild"), str(ebuild),
                               "manifest"], env=env.environ(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return repo, distfiles, conf
