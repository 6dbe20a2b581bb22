"""Artifact store: what goes in comes out, and damaged bytes are never served."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from swarmnode.errors import UserError
from swarmnode.store import ArtifactStore, CorruptArtifact, MissingArtifact

DATA = b"gpkg bytes " * 5000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def test_put_bytes_and_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    obj = store.put_bytes(DATA)
    assert (obj.sha256, obj.size) == (sha(DATA), len(DATA))
    assert store.has(obj.sha256)
    assert store.read_bytes(obj.sha256) == DATA
    assert store.path(obj.sha256) == store.root / "objects" / obj.sha256[:2] / obj.sha256

    src = tmp_path / "pkg.gpkg.tar"
    src.write_bytes(b"another artifact")
    copied = store.put_file(src)
    assert src.exists() and store.read_bytes(copied.sha256) == b"another artifact"
    assert store.put_file(src) == copied  # same content, same object
    assert sorted(store) == sorted([obj.sha256, copied.sha256])


def test_put_file_move_takes_the_file_over(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "built.gpkg.tar"
    src.write_bytes(DATA)
    obj = store.put_file(src, move=True)
    assert not src.exists()
    assert store.read_bytes(obj.sha256) == DATA


def test_unknown_and_malformed_hashes(store: ArtifactStore) -> None:
    with pytest.raises(MissingArtifact):
        store.path("0" * 64)
    assert not store.has("0" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, "0" * 65, "/" + "0" * 63,
                "0" * 62 + "/.", "0" * 64 + "\0", ""):
        with pytest.raises(UserError, match="invalid sha256"):
            store.path(bad)
        with pytest.raises(UserError, match="invalid sha256"):
            store.has(bad)


def test_missing_file_is_a_clear_error(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot store"):
        store.put_file(tmp_path / "nope")


def _make_writable(path: Path) -> None:
    os.chmod(path, 0o644)


def test_truncated_object_is_detected_and_never_served(store: ArtifactStore) -> None:
    obj = store.put_bytes(DATA)
    path = store.path(obj.sha256)  # verified and cached
    _make_writable(path)
    with open(path, "r+b") as f:
        f.truncate(100)
    assert not store.has(obj.sha256)
    with pytest.raises(CorruptArtifact):
        store.path(obj.sha256)
    with pytest.raises(MissingArtifact):  # quarantined: gone from the store, not served later
        store.read_bytes(obj.sha256)
    assert list((store.root / "quarantine").iterdir())
    assert store.put_bytes(DATA) == obj  # a good copy (e.g. from a peer) heals it
    assert store.read_bytes(obj.sha256) == DATA


def test_altered_object_detected_after_restart(store: ArtifactStore) -> None:
    obj = store.put_bytes(DATA)
    path = store.path(obj.sha256)
    st = path.stat()
    _make_writable(path)
    with open(path, "r+b") as f:  # same size, same mtime: only a re-hash can tell
        f.seek(10)
        f.write(b"X")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    restarted = ArtifactStore(store.root)
    with pytest.raises(CorruptArtifact):
        restarted.path(obj.sha256)
    assert not restarted.has(obj.sha256)


def test_verify_quarantines_a_bit_flip(store: ArtifactStore) -> None:
    good = store.put_bytes(b"fine")
    obj = store.put_bytes(DATA)
    path = store.path(obj.sha256)
    _make_writable(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(path, "r+b") as f:
        f.write(data)
    assert store.verify(good.sha256)
    assert not store.verify(obj.sha256)
    assert not path.exists()
    quarantined = list((store.root / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(obj.sha256)
    assert sorted(store) == [good.sha256]
    assert not store.verify(obj.sha256)  # missing now: still not "verified"


def test_in_flight_writes_are_invisible(store: ArtifactStore) -> None:
    """A write killed half-way leaves a tmp file, which is neither listed nor served, and
    is cleaned up later; an object without its size record is not considered present."""
    partial = store.root / "tmp" / "put-12345-abc"
    partial.write_bytes(DATA[:1000])
    assert list(store) == []
    assert not store.has(sha(DATA[:1000]))
    assert store.cleanup_tmp(max_age_s=0) == 1
    assert list((store.root / "tmp").iterdir()) == []

    obj = store.put_bytes(DATA)
    (store.root / "objects" / obj.sha256[:2] / f"{obj.sha256}.size").unlink()
    assert not store.has(obj.sha256)
    with pytest.raises(MissingArtifact):
        ArtifactStore(store.root).path(obj.sha256)
    assert list(store) == []


def test_objects_are_read_only(store: ArtifactStore) -> None:
    obj = store.put_bytes(DATA)
    assert store.path(obj.sha256).stat().st_mode & 0o777 == 0o444


def test_unreferenced_old_objects_are_collected_and_referenced_ones_kept(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    kept = store.put_bytes(b"in a release")
    old = store.put_bytes(b"from a pruned release")
    fresh = store.put_bytes(b"stored a moment ago, not yet referenced")
    an_hour_ago = time.time() - 3700
    for obj in (kept, old):
        os.utime(store.path(obj.sha256), (an_hour_ago, an_hour_ago))
    removed = store.remove_unreferenced({kept.sha256}, min_age_s=3600)
    assert removed == [old.sha256]
    assert store.has(kept.sha256) and store.has(fresh.sha256) and not store.has(old.sha256)
    assert sorted(store) == sorted([kept.sha256, fresh.sha256])
