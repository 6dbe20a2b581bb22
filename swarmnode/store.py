"""Content-addressed artifact store: gpkgs and build logs, by sha256.

Layout under `root`:
    objects/ab/<sha256>         the bytes, read-only (0444)
    objects/ab/<sha256>.size    the size recorded at put time (cheap truncation check)
    tmp/                        in-flight writes (same filesystem, renamed into place)
    quarantine/                 objects whose bytes no longer match their name

A truncated or altered object is never served: `path()` compares the size on every call and
re-hashes the file on first use after a (re)start or whenever its (size, mtime_ns, inode)
changed since it was last verified.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from swarmnode.errors import UserError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
TMP_MAX_AGE_S = 3600.0  # older in-flight files are leftovers of a crash


class MissingArtifact(UserError):
    """The store has no (complete) object with that hash."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


class CorruptArtifact(UserError):
    """The object's bytes do not match its hash; it has been quarantined."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=500)


@dataclass(frozen=True)
class StoredObject:
    sha256: str
    size: int


def check_sha256(sha256: str) -> str:
    """Return `sha256` if it is 64 lowercase hex digits (so it can never name another path)."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise UserError(f"invalid sha256 {sha256!r}: expected 64 lowercase hex digits")
    return sha256


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def fsync_dir(path: Path) -> None:
    """Make a rename or link in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        for d in (self.objects, self.tmp, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int, int]] = {}  # sha -> stat key last hashed
        self.cleanup_tmp()

    # -- paths ---------------------------------------------------------------------------

    def _object_path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.objects / sha256[:2] / sha256

    def _size_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / f"{sha256}.size"

    def _recorded_size(self, sha256: str) -> int | None:
        try:
            return int(self._size_path(sha256).read_text())
        except (OSError, ValueError):
            return None

    # -- writing -------------------------------------------------------------------------

    def _tmp_file(self) -> tuple[BinaryIO, Path]:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix=f"put-{os.getpid()}-")
        return os.fdopen(fd, "wb"), Path(name)

    def _commit(self, tmp: Path, sha256: str, size: int) -> StoredObject:
        """Record the size, then rename the fully written, fsynced tmp file into place."""
        final = self._object_path(sha256)
        final.parent.mkdir(exist_ok=True)
        with self._lock:
            try:
                st = final.stat()
                if self._verified.get(sha256) == _stat_key(st) and \
                        self._recorded_size(sha256) == size:
                    tmp.unlink()  # already here and verified: keep the existing inode
                    return StoredObject(sha256, size)
            except FileNotFoundError:
                pass
            size_tmp = self.tmp / f"{tmp.name}.size"
            size_tmp.write_text(str(size))
            os.replace(size_tmp, self._size_path(sha256))
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            fsync_dir(final.parent)
            self._verified[sha256] = _stat_key(final.stat())
        return StoredObject(sha256, size)

    def put_file(self, src: Path, move: bool = False) -> StoredObject:
        """Store a file, hashing while copying. With move=True the file is taken over
        (renamed in when on the same filesystem, else copied and removed)."""
        src = Path(src)
        if move:
            tmp = self.tmp / f"move-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
            try:
                os.rename(src, tmp)
            except OSError as e:
                if e.errno != getattr(os, "EXDEV", 18):
                    raise UserError(f"cannot store {src}: {e.strerror}") from None
            else:
                try:
                    os.utime(tmp)  # a fresh mtime: cleanup_tmp must not take it for a leftover
                    digest, size = self._hash_file(tmp)
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                    return self._commit(tmp, digest, size)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
        try:
            src_f = open(src, "rb")
        except OSError as e:
            raise UserError(f"cannot store {src}: {e.strerror}") from None
        out, tmp = self._tmp_file()
        try:
            h, size = hashlib.sha256(), 0
            with src_f, out:
                while chunk := src_f.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            stored = self._commit(tmp, h.hexdigest(), size)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if move:
            src.unlink(missing_ok=True)
        return stored

    def put_bytes(self, data: bytes) -> StoredObject:
        out, tmp = self._tmp_file()
        try:
            with out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            return self._commit(tmp, hashlib.sha256(data).hexdigest(), len(data))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _hash_file(path: Path) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size

    def has(self, sha256: str) -> bool:
        """Present, complete, and of the size recorded when it was stored (no re-hash)."""
        try:
            st = self._object_path(sha256).stat()
        except FileNotFoundError:
            return False
        return self._recorded_size(sha256) == st.st_size

    def path(self, sha256: str) -> Path:
        """Path of a verified object; raises MissingArtifact or CorruptArtifact."""
        p = self._object_path(sha256)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise MissingArtifact(f"artifact {sha256} is not in the store") from None
        recorded = self._recorded_size(sha256)
        if recorded is None:
            raise MissingArtifact(f"artifact {sha256} is incomplete (no size record)")
        if st.st_size != recorded:
            self._quarantine(sha256)
            raise CorruptArtifact(
                f"artifact {sha256} is {st.st_size} bytes, expected {recorded}: quarantined")
        key = _stat_key(st)
        with self._lock:
            if self._verified.get(sha256) == key:
                return p
        if not self.verify(sha256):
            raise CorruptArtifact(f"artifact {sha256} does not match its hash: quarantined")
        return p

    def verify(self, sha256: str) -> bool:
        """Full re-hash. A corrupt object is quarantined; False if corrupt or missing."""
        p = self._object_path(sha256)
        try:
            st = p.stat()
            digest, size = self._hash_file(p)
        except FileNotFoundError:
            return False
        if digest != sha256 or size != self._recorded_size(sha256):
            self._quarantine(sha256)
            return False
        with self._lock:
            self._verified[sha256] = _stat_key(st)
        return True

    def read_bytes(self, sha256: str) -> bytes:
        """The object's bytes, hashed after reading (no window between check and read)."""
        data = self.path(sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            self._quarantine(sha256)
            raise CorruptArtifact(f"artifact {sha256} changed while being read: quarantined")
        return data

    def size(self, sha256: str) -> int:
        """Recorded size of a present object (MissingArtifact otherwise)."""
        if not self.has(sha256):
            raise MissingArtifact(f"artifact {sha256} is not in the store")
        return self._recorded_size(sha256) or 0

    def __iter__(self) -> Iterator[str]:
        """Hashes of the complete objects (never in-flight tmp files)."""
        for sub in sorted(self.objects.iterdir()):
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                if _SHA256.fullmatch(f.name) and f.name[:2] == sub.name and self.has(f.name):
                    yield f.name

    # -- housekeeping --------------------------------------------------------------------

    def _quarantine(self, sha256: str) -> None:
        with self._lock:
            self._verified.pop(sha256, None)
            p = self._object_path(sha256)
            dest = self.quarantine_dir / f"{sha256}.{time.time_ns()}"
            try:
                os.replace(p, dest)
            except FileNotFoundError:
                pass
            self._size_path(sha256).unlink(missing_ok=True)

    def remove_unreferenced(self, keep: set[str], min_age_s: float) -> list[str]:
        """Delete objects not in `keep` and older than `min_age_s` (the age guards an object
        stored just before the command that references it is committed). Returns hashes."""
        cutoff = time.time() - min_age_s
        removed = []
        for sha256 in list(self):
            if sha256 in keep:
                continue
            try:
                if self._object_path(sha256).stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            with self._lock:
                self._verified.pop(sha256, None)
                self._object_path(sha256).unlink(missing_ok=True)
                self._size_path(sha256).unlink(missing_ok=True)
            removed.append(sha256)
        return removed

    def cleanup_tmp(self, max_age_s: float = TMP_MAX_AGE_S) -> int:
        """Remove in-flight files left by a crash (older than max_age_s). Returns the count."""
        removed = 0
        cutoff = time.time() - max_age_s
        for f in self.tmp.iterdir():
            try:
                if f.lstat().st_mtime <= cutoff:
                    if f.is_dir() and not f.is_symlink():
                        shutil.rmtree(f)
                    else:
                        f.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
