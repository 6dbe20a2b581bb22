"""Releases on disk: materialise a publication, swap it in atomically, serve, roll back, prune.

Layout under `root`:
    releases/<profile>/<release_id>@<timestamp>/   one complete publication:
        cat/pn/pf-BUILDID.gpkg.tar                 hard links to store objects
        Packages, Packages.gz                      TIMESTAMP = the publication's timestamp
        .release.json                              relpath -> sha256 (what resolve() checks)
    releases/<profile>/.tmp-*                      a publication being built (leftover if killed)
    current/<profile> -> ../releases/<profile>/<release_id>@<timestamp>
    locks/<profile>.lock                           one publisher per profile (flock)

Crash safety: a publication is built in a tmp dir and renamed into place (the rename is the
commit), then `current/<profile>` is replaced by a new symlink with os.replace. A kill -9 at any
point leaves the old or the new publication served, whole; tmp leftovers are removed by the next
publish() or recover().
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from portage.versions import catpkgsplit

from swarmnode.errors import UserError
from swarmnode.portage.index import index_entry, write_packages_index
from swarmnode.store import ArtifactStore, MissingArtifact, check_sha256, fsync_dir

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MANIFEST = ".release.json"
TMP_PREFIX = ".tmp-"
INDEX_FILES = ("Packages", "Packages.gz")


@dataclass(frozen=True)
class PackageRef:
    cpv: str
    build_id: int
    sha256: str
    size: int

    @classmethod
    def of(cls, artifact: Any) -> PackageRef:
        """From a state Artifact record (anything with cpv, build_id, sha256 and size)."""
        return cls(artifact.cpv, artifact.build_id, artifact.sha256, artifact.size)


@dataclass(frozen=True)
class Publication:
    release_id: str
    timestamp: int
    packages: tuple[PackageRef, ...]


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > 200:
        raise UserError(f"invalid {kind} {value!r}: use letters, digits, '.', '_', '+', '-'")
    return value


def package_relpath(cpv: str, build_id: int) -> str:
    """`cat/pn/pf-BUILDID.gpkg.tar`, portage's binpkg-multi-instance layout."""
    split = catpkgsplit(cpv) if isinstance(cpv, str) else None
    if split is None or split[0] == "null":
        raise UserError(f"invalid package {cpv!r}: expected category/name-version")
    if not isinstance(build_id, int) or isinstance(build_id, bool) or build_id < 1:
        raise UserError(f"invalid BUILD_ID {build_id!r} for {cpv}: expected an integer >= 1")
    cat, pn = split[0], split[1]
    return f"{cat}/{pn}/{cpv.split('/', 1)[1]}-{build_id}.gpkg.tar"


def _link(src: Path, dst: Path) -> None:
    """Hard-link src at dst (replacing dst atomically); copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f"{TMP_PREFIX}{dst.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class Binhost:
    def __init__(self, root: Path, store: ArtifactStore) -> None:
        self.root = Path(root)
        self.store = store
        self.releases = self.root / "releases"
        self.current_links = self.root / "current"
        self.locks = self.root / "locks"
        for d in (self.releases, self.current_links, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        self._entries: dict[tuple[str, str, int], dict[str, str]] = {}
        self._manifests: dict[Path, dict[str, str]] = {}
        self._cache_lock = threading.Lock()

    # -- materialising -------------------------------------------------------------------

    def _entry(self, ref: PackageRef, relpath: str) -> dict[str, str]:
        """Index entry for a package (cached: reading a gpkg's metadata and MD5/SHA1 costs)."""
        key = (ref.sha256, ref.cpv, ref.build_id)
        with self._cache_lock:
            cached = self._entries.get(key)
        if cached is None:
            cached = index_entry(self.store.path(ref.sha256), ref.cpv, ref.build_id, relpath)
            with self._cache_lock:
                self._entries[key] = cached
        return dict(cached, PATH=relpath)

    def entries(self, packages: list[PackageRef]) -> list[dict[str, str]]:
        """Packages-index entries (cached) for packages in the store, e.g. to check a
        release candidate's dependencies. Raises MissingArtifact/CorruptArtifact."""
        return [self._entry(ref, package_relpath(ref.cpv, ref.build_id)) for ref in packages]

    def _verified_sources(self, packages: list[PackageRef] | tuple[PackageRef, ...]
                          ) -> list[tuple[PackageRef, str, Path]]:
        """Check every package before touching anything: (ref, relpath, store path)."""
        out, seen = [], set()
        for ref in packages:
            check_sha256(ref.sha256)
            relpath = package_relpath(ref.cpv, ref.build_id)
            if relpath in seen:
                raise UserError(f"{ref.cpv} BUILD_ID {ref.build_id} listed twice")
            seen.add(relpath)
            if not self.store.has(ref.sha256):
                raise MissingArtifact(f"{ref.cpv}: artifact {ref.sha256} is not in the store")
            path = self.store.path(ref.sha256)
            if path.stat().st_size != ref.size:
                raise UserError(f"{ref.cpv}: artifact {ref.sha256} is {path.stat().st_size} "
                                f"bytes, the release says {ref.size}")
            out.append((ref, relpath, path))
        return out

    def _materialise(self, directory: Path, packages: list[PackageRef] | tuple[PackageRef, ...],
                     timestamp: int, header: dict[str, str] | None) -> None:
        """Hard links + Packages/Packages.gz + manifest into `directory` (shared by publish
        and staging)."""
        sources = self._verified_sources(packages)
        entries = []
        for ref, relpath, path in sources:
            _link(path, directory / relpath)
            entries.append(self._entry(ref, relpath))
        write_packages_index(directory, entries, timestamp, header)
        manifest = {"timestamp": int(timestamp),
                    "packages": {relpath: ref.sha256 for ref, relpath, _ in sources}}
        tmp = directory / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, sort_keys=True))
        os.replace(tmp, directory / MANIFEST)

    def staging(self, profile: str, packages: list[PackageRef], directory: Path,
                header: dict[str, str] | None = None) -> Path:
        """A PKGDIR (links + Packages) that builders install dependencies from."""
        _check_name("profile", profile)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._materialise(directory, packages, int(time.time()), header)
        return directory

    # -- publishing ----------------------------------------------------------------------

    @contextmanager
    def _profile_lock(self, profile: str, blocking: bool = True) -> Iterator[bool]:
        with open(self.locks / f"{profile}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    def _clean_leftovers(self, profile: str) -> None:
        """Remove tmp dirs and tmp links of `profile` (call with the profile lock held)."""
        pdir = self.releases / profile
        if pdir.is_dir():
            for d in pdir.iterdir():
                if d.name.startswith(TMP_PREFIX):
                    shutil.rmtree(d, ignore_errors=True)
        for link in self.current_links.glob(f".{profile}.*.tmp"):
            link.unlink(missing_ok=True)

    def publish(self, profile: str, pub: Publication,
                header: dict[str, str] | None = None) -> Path:
        """Materialise `pub` and make it what /binhost/<profile>/ serves. Idempotent."""
        _check_name("profile", profile)
        _check_name("release id", pub.release_id)
        if not isinstance(pub.timestamp, int) or pub.timestamp < 0:
            raise UserError(f"invalid release timestamp {pub.timestamp!r}")
        name = f"{pub.release_id}@{pub.timestamp}"
        pdir = self.releases / profile
        final = pdir / name
        with self._profile_lock(profile):
            self._clean_leftovers(profile)
            if not (final / MANIFEST).is_file():
                pdir.mkdir(exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}.", dir=pdir))
                try:
                    self._materialise(tmp, pub.packages, pub.timestamp, header)
                    os.chmod(tmp, 0o755)
                    if final.exists():  # an incomplete dir cannot exist here; be safe
                        shutil.rmtree(final)
                    os.rename(tmp, final)
                    fsync_dir(pdir)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            self._swap(profile, name)
        return final

    def _swap(self, profile: str, name: str) -> None:
        link = self.current_links / profile
        target = os.path.join("..", "releases", profile, name)
        if link.is_symlink() and os.readlink(link) == target:
            return
        tmp = self.current_links / f".{profile}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(self.current_links)

    # -- what is served ------------------------------------------------------------------

    def current(self, profile: str) -> tuple[str, int] | None:
        """(release_id, timestamp) served now for `profile`, or None."""
        _check_name("profile", profile)
        try:
            name = os.path.basename(os.readlink(self.current_links / profile))
        except OSError:
            return None
        release_id, _, ts = name.rpartition("@")
        return (release_id, int(ts)) if release_id and ts.isdigit() else None

    def current_dir(self, profile: str) -> Path | None:
        _check_name("profile", profile)
        link = self.current_links / profile
        if not link.is_symlink():
            return None
        path = Path(os.path.realpath(link))
        return path if path.is_dir() else None

    def _manifest(self, pub_dir: Path) -> dict[str, str]:
        with self._cache_lock:
            cached = self._manifests.get(pub_dir)
        if cached is None:
            try:
                cached = json.loads((pub_dir / MANIFEST).read_text())["packages"]
            except (OSError, ValueError, KeyError):
                raise UserError(f"publication {pub_dir.name} is damaged", status=500) from None
            with self._cache_lock:
                self._manifests[pub_dir] = cached
        return cached

    def resolve(self, profile: str, relpath: str) -> Path:
        """The file to serve for GET /binhost/<profile>/<relpath> (400 escape, 404 unknown)."""
        if not isinstance(profile, str) or not _NAME.fullmatch(profile):
            raise UserError(f"no binhost for profile {profile!r}", status=404)
        for form in {relpath, unquote(relpath)}:
            parts = form.replace("\\", "/").split("/")
            if "\0" in form or form.startswith("/") or ".." in parts:
                raise UserError(f"invalid binhost path {relpath!r}", status=400)
        parts = relpath.split("/")
        if not relpath or any(not p or p.startswith(".") for p in parts):
            raise UserError(f"no such binhost file {relpath!r}", status=404)
        pub_dir = self.current_dir(profile)
        if pub_dir is None:
            raise UserError(f"nothing published for profile {profile!r}", status=404)
        target = pub_dir / relpath
        if os.path.commonpath([os.path.realpath(target), pub_dir]) != str(pub_dir):
            raise UserError(f"invalid binhost path {relpath!r}", status=400)
        if relpath in INDEX_FILES and target.is_file():
            return target
        sha256 = self._manifest(pub_dir).get(relpath)
        if sha256 is None:
            raise UserError(f"no such binhost file {relpath!r}", status=404)
        # Serve the verified store object (same bytes as the hard link, but checked: a
        # truncated or altered artifact raises CorruptArtifact and is quarantined).
        return self.store.path(sha256)

    # -- retention and recovery ----------------------------------------------------------

    def publications(self, profile: str) -> list[tuple[str, int]]:
        """(release_id, timestamp) of every complete publication on disk, oldest first."""
        _check_name("profile", profile)
        pdir = self.releases / profile
        out = []
        if pdir.is_dir():
            for d in pdir.iterdir():
                rid, _, ts = d.name.rpartition("@")
                if not d.name.startswith(".") and rid and ts.isdigit() \
                        and (d / MANIFEST).is_file():
                    out.append((rid, int(ts)))
        return sorted(out, key=lambda p: (p[1], p[0]))

    def prune(self, profile: str, keep_release_ids: set[str]) -> list[str]:
        """Delete publications of other releases (and older copies of kept ones); never the
        one being served. Returns the deleted `<release_id>@<timestamp>` names."""
        deleted: list[str] = []
        with self._profile_lock(profile):
            served = self.current(profile)
            newest: dict[str, int] = {}
            pubs = self.publications(profile)
            for rid, ts in pubs:
                newest[rid] = max(ts, newest.get(rid, ts))
            for rid, ts in pubs:
                if (rid, ts) == served or (rid in keep_release_ids and newest[rid] == ts):
                    continue
                path = self.releases / profile / f"{rid}@{ts}"
                shutil.rmtree(path, ignore_errors=True)
                with self._cache_lock:
                    self._manifests.pop(path, None)
                deleted.append(f"{rid}@{ts}")
        return deleted

    def recover(self) -> None:
        """Startup: remove leftovers of publishes that were killed (skipping busy profiles)."""
        names = {p.name for p in self.releases.iterdir() if p.is_dir()}
        # tmp links are named .<profile>.<pid>.tmp
        names |= {link.name[1:].rsplit(".", 2)[0] for link in self.current_links.glob(".*.tmp")}
        for profile in sorted(names):
            if not _NAME.fullmatch(profile):
                continue
            with self._profile_lock(profile, blocking=False) as locked:
                if locked:
                    self._clean_leftovers(profile)
