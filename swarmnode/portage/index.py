"""The binhost's `Packages` index, written with portage's own classes.

Only profile-independent parts of portage are imported (portage.gpkg, portage.getbinpkg,
portage.dep, portage.checksum): they work in a plain daemon process without
PORTAGE_CONFIGROOT and print nothing at import. Reading gpkg metadata needs a "settings" object;
instead of a full `portage.config` (which loads make.globals, a profile and the repos, and warns
when there are none) we pass `_GpkgSettings`, a dict with the few attributes gpkg reads:
`.get()` for variables, `.features`, and `.environ()` for the gpg child process.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import portage.checksum
import portage.exception
import portage.gpkg
from portage.dep import Atom, match_from_list, paren_enclose, use_reduce
from portage.getbinpkg import PackageIndex
from portage.versions import _pkg_str

from swarmnode.errors import UserError

# What portage's binarytree puts in a Packages entry for a gpkg (dbapi/bintree.py:
# _aux_cache_keys + _init_aux_keys, read from the package; SIZE/MD5/SHA1/MTIME/PATH from the file).
METADATA_KEYS = (
    "BDEPEND", "BUILD_TIME", "CHOST", "DEFINED_PHASES", "DEPEND", "EAPI", "IDEPEND", "IUSE",
    "KEYWORDS", "LICENSE", "PDEPEND", "PROPERTIES", "PROVIDES", "RDEPEND", "REPO_REVISIONS",
    "REQUIRES", "RESTRICT", "SLOT", "USE", "repository",
)
# Keys portage USE-reduces before indexing (binarytree._pkgindex_use_evaluated_keys).
USE_EVALUATED_KEYS = ("BDEPEND", "DEPEND", "IDEPEND", "LICENSE", "RDEPEND", "PDEPEND",
                      "PROPERTIES", "RESTRICT")
HASHES = ("MD5", "SHA1")
# PackageIndex layout, as binarytree._new_pkgindex() sets it up.
DEFAULT_PKG_DATA = {
    "BDEPEND": "", "BUILD_ID": "", "BUILD_TIME": "", "DEFINED_PHASES": "", "DEPEND": "",
    "EAPI": "0", "IDEPEND": "", "IUSE": "", "KEYWORDS": "", "LICENSE": "", "PATH": "",
    "PDEPEND": "", "PROPERTIES": "", "PROVIDES": "", "RDEPEND": "", "REQUIRES": "",
    "RESTRICT": "", "SLOT": "0", "USE": "",
}
INHERITED_KEYS = ("CHOST", "repository")
TRANSLATED_KEYS = (("DESCRIPTION", "DESC"), ("_mtime_", "MTIME"), ("repository", "REPO"))
INDEX_VERSION = "0"  # binarytree._pkgindex_version

# Same as make.globals, with gpg found on PATH (it is /usr/bin/gpg on Gentoo and Debian).
_VERIFY_COMMAND = ("{gpg} --verify --batch --no-tty --no-auto-check-trustdb --status-fd 2 "
                   "[PORTAGE_CONFIG] [SIGNATURE]")


class _GpkgSettings(dict):
    """The slice of portage.config that portage.gpkg reads when unpacking metadata."""

    def __init__(self, features: set[str], **values: str) -> None:
        super().__init__(values)
        self.features = frozenset(features)

    def environ(self) -> dict[str, str]:
        return dict(os.environ)


class _UncheckedGpkg(portage.gpkg.gpkg):
    """A gpkg read without gpg: the caller vouches for the bytes (the store verified their
    sha256 against what the signing builder reported); clients verify signatures themselves."""

    def _verify_binpkg(self, metadata_only: bool = False) -> None:
        return None


def read_gpkg_metadata(path: Path, verify_gpg_home: Path | None = None) -> dict[str, str]:
    """The gpkg's metadata files as text (binary ones such as environment.bz2 left out).

    With `verify_gpg_home`, portage checks the Manifest, checksums and signatures against that
    keyring (as the current user); without it, only the metadata is unpacked.
    """
    path = Path(path)
    try:
        if verify_gpg_home is None:
            pkg = _UncheckedGpkg(_GpkgSettings(set(), BINPKG_COMPRESS="zstd"), None, str(path))
        else:
            settings = _GpkgSettings(
                {"binpkg-request-signature"},
                BINPKG_COMPRESS="zstd",
                BINPKG_GPG_VERIFY_BASE_COMMAND=_VERIFY_COMMAND.format(
                    gpg=shutil.which("gpg") or "/usr/bin/gpg"),
                BINPKG_GPG_VERIFY_GPG_HOME=str(verify_gpg_home),
                GPG_VERIFY_USER_DROP="",
                GPG_VERIFY_GROUP_DROP="",
            )
            pkg = portage.gpkg.gpkg(settings, None, str(path))
        raw = pkg.get_metadata()
    except (portage.exception.PortageException, tarfile.TarError, OSError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise UserError(f"{path.name}: not a usable gpkg ({detail})") from None
    out: dict[str, str] = {}
    for name, value in raw.items():
        if name.endswith((".bz2", ".ebuild")):
            continue
        try:
            out[name] = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
    return out


def _use_evaluate(key: str, value: str, use: frozenset[str]) -> str:
    token_class = Atom if key.endswith("DEPEND") else None
    try:
        return paren_enclose(use_reduce(value, uselist=use, token_class=token_class))
    except portage.exception.InvalidDependString as e:
        raise UserError(f"invalid {key} in binary package: {e}") from None


def index_entry(gpkg: Path, cpv: str, build_id: int, relpath: str) -> dict[str, str]:
    """The Packages entry for one gpkg, as portage's binarytree would write it."""
    gpkg = Path(gpkg)
    meta = read_gpkg_metadata(gpkg)
    pkg_cpv = f"{meta.get('CATEGORY', '')}/{meta.get('PF', '')}"
    if pkg_cpv != cpv:
        raise UserError(f"{gpkg.name} holds {pkg_cpv}, not {cpv}")
    entry = {k: " ".join(meta.get(k, "").split()) for k in METADATA_KEYS}
    entry["EAPI"] = entry["EAPI"] or "0"
    if not entry["SLOT"]:
        raise UserError(f"{gpkg.name}: binary package has no SLOT")
    use = frozenset(entry["USE"].split())
    for key in USE_EVALUATED_KEYS:
        if entry[key]:
            entry[key] = _use_evaluate(key, entry[key], use)
    st = gpkg.stat()
    entry.update(portage.checksum.perform_multiple_checksums(str(gpkg), hashes=list(HASHES)))
    entry.update({
        "CPV": cpv,
        "BUILD_ID": str(int(build_id)),
        "PATH": relpath,
        "SIZE": str(st.st_size),
        # The package's own BUILD_TIME, not the file's mtime: every node's copy was stored at
        # a different moment, and all nodes must serve byte-identical indexes of a release.
        "_mtime_": meta.get("BUILD_TIME") or str(st[stat.ST_MTIME]),
    })
    return entry


def _new_index() -> PackageIndex:
    allowed = {*METADATA_KEYS, *DEFAULT_PKG_DATA, *HASHES, *INHERITED_KEYS, "CPV", "SIZE",
               "DESCRIPTION", "_mtime_", *(k for pair in TRANSLATED_KEYS for k in pair)}
    return PackageIndex(
        allowed_pkg_keys=allowed,
        default_header_data={"CHOST": "", "repository": ""},
        default_pkg_data=dict(DEFAULT_PKG_DATA),
        inherited_keys=list(INHERITED_KEYS),
        translated_keys=TRANSLATED_KEYS,
    )


def render_packages_index(entries: list[dict[str, str]], timestamp: int,
                          header: dict[str, str] | None = None) -> str:
    """The text of a Packages file; TIMESTAMP is ours, not the wall clock."""
    index = _new_index()
    index.header.update({"VERSION": INDEX_VERSION})
    index.header.update(header or {})
    index.header["TIMESTAMP"] = str(int(timestamp))
    index.header["PACKAGES"] = str(len(entries))
    index.packages.extend(dict(e) for e in entries)
    index.modified = False  # else write() stamps TIMESTAMP with time.time()
    out = io.StringIO()
    index.write(out)
    return out.getvalue()


def read_packages_index(path: Path) -> PackageIndex:
    """Parse a Packages file the way a portage client does."""
    index = _new_index()
    with open(path, encoding="utf-8") as f:
        index.read(f)
    return index


def _atomic_write(path: Path, data: bytes, mtime: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_packages_index(directory: Path, entries: list[dict[str, str]], timestamp: int,
                         header: dict[str, str] | None = None) -> None:
    """Write Packages and Packages.gz (clients may fetch either) atomically, mtime=TIMESTAMP."""
    directory = Path(directory)
    text = render_packages_index(entries, timestamp, header).encode("utf-8")
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=int(timestamp)) as f:
        f.write(text)
    _atomic_write(directory / "Packages.gz", gz.getvalue(), int(timestamp))
    _atomic_write(directory / "Packages", text, int(timestamp))


class _Candidate(_pkg_str):
    """A package of the set as match_from_list wants it: cpv + SLOT + repo + USE/IUSE."""

    def __init__(self, entry: dict[str, str]) -> None:
        super().__init__(entry["CPV"], metadata={
            "SLOT": entry.get("SLOT") or "0", "repository": entry.get("repository", ""),
            "EAPI": entry.get("EAPI") or "0"})
        self.__dict__["use"] = _Use(frozenset(entry.get("USE", "").split()))
        self.__dict__["iuse"] = _Iuse(entry.get("IUSE", ""))


class _Use:
    def __init__(self, enabled: frozenset[str]) -> None:
        self.enabled = enabled


class _Iuse:
    def __init__(self, iuse: str) -> None:
        self.tokens = frozenset(flag.lstrip("+-") for flag in iuse.split())

    def is_valid_flag(self, flags: str | frozenset[str]) -> bool:
        wanted = [flags] if isinstance(flags, str) else flags
        return all(flag in self.tokens for flag in wanted)


def _unmet(dep: list, candidates: list[_Candidate]) -> list[str]:
    """Unsatisfied atoms of a use_reduce(opconvert=True) tree; an any-of group counts once."""
    missing: list[str] = []
    for item in dep:
        if isinstance(item, list):
            if item and item[0] == "||":
                if all(_unmet([alt], candidates) for alt in item[1:]):
                    missing.append(f"|| ( {paren_enclose(item[1:])} )")
            else:
                missing.extend(_unmet(item, candidates))
        elif isinstance(item, Atom) and not item.blocker:
            if not match_from_list(item, candidates):
                missing.append(str(item))
    return missing


def unmet_runtime_deps(entries: list[dict[str, str]]) -> list[str]:
    """RDEPEND/PDEPEND atoms no package in `entries` satisfies: a release that would leave a
    client unable to install something. Blockers are ignored."""
    try:
        candidates = [_Candidate(e) for e in entries]
    except portage.exception.InvalidData as e:
        raise UserError(f"invalid package name in release: {e}") from None
    problems: list[str] = []
    for entry in sorted(entries, key=lambda e: e["CPV"]):
        use = frozenset(entry.get("USE", "").split())
        for key in ("RDEPEND", "PDEPEND"):
            value = entry.get(key, "")
            if not value.strip():
                continue
            try:
                tree = use_reduce(value, uselist=use, opconvert=True, token_class=Atom)
            except portage.exception.InvalidDependString as e:
                raise UserError(f"{entry['CPV']}: invalid {key}: {e}") from None
            problems.extend(f"{entry['CPV']}: needs {atom}" for atom in _unmet(tree, candidates))
    return problems
