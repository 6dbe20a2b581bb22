"""Binhost releases: what portage clients read, atomic swaps under kill -9, safe file serving."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
from pathlib import Path

import pytest
from binpkg_fixture import APP_CPV, LIB_CPV, Binpkgs
from portage.getbinpkg import PackageIndex

from swarmnode.binhost import Binhost, PackageRef, Publication, package_relpath
from swarmnode.errors import UserError
from swarmnode.portage.index import read_packages_index, unmet_runtime_deps
from swarmnode.store import ArtifactStore, CorruptArtifact, MissingArtifact

PROFILE = "desktop"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def refs(binpkgs: Binpkgs, store: ArtifactStore) -> dict[str, PackageRef]:
    """The two real gpkgs in the store, with swarm-allocated BUILD_IDs (not portage's 1)."""
    build_ids = {LIB_CPV: 5, APP_CPV: 9}
    out = {}
    for cpv, path in binpkgs.files.items():
        obj = store.put_file(path)
        out[cpv] = PackageRef(cpv, build_ids[cpv], obj.sha256, obj.size)
    return out


@pytest.fixture
def binhost(tmp_path: Path, store: ArtifactStore) -> Binhost:
    return Binhost(tmp_path / "binhost", store)


def parse(path: Path) -> PackageIndex:
    """Read an index as a portage client's binarytree does (same PackageIndex set-up)."""
    return read_packages_index(path)


def test_publish_writes_an_index_portage_reads(binhost: Binhost,
                                               refs: dict[str, PackageRef]) -> None:
    pub = Publication("r1", 1_700_000_123, (refs[LIB_CPV], refs[APP_CPV]))
    path = binhost.publish(PROFILE, pub)
    assert binhost.current(PROFILE) == ("r1", 1_700_000_123)
    assert binhost.current_dir(PROFILE) == path.resolve()

    text = (path / "Packages").read_text()
    assert gzip.decompress((path / "Packages.gz").read_bytes()).decode() == text
    index = parse(path / "Packages")
    assert index.header["TIMESTAMP"] == "1700000123"
    assert index.header["PACKAGES"] == "2"
    assert index.header["VERSION"] == "0"
    entries = {p["CPV"]: p for p in index.packages}
    assert set(entries) == {LIB_CPV, APP_CPV}
    for cpv, ref in refs.items():
        e = entries[cpv]
        assert e["BUILD_ID"] == str(ref.build_id)
        assert e["PATH"] == package_relpath(cpv, ref.build_id)
        file = path / e["PATH"]
        data = file.read_bytes()
        assert int(e["SIZE"]) == len(data) == ref.size
        assert e["MD5"] == hashlib.md5(data).hexdigest()
        assert e["SHA1"] == hashlib.sha1(data).hexdigest()
        assert hashlib.sha256(data).hexdigest() == ref.sha256
        assert e["SLOT"] == "0" and e["EAPI"] == "8" and e["KEYWORDS"] == "amd64"
        assert e["repository"] == "swarmtest" and e["_mtime_"].isdigit()
    assert entries[APP_CPV]["PATH"] == "app-misc/swarmhello/swarmhello-1.0-9.gpkg.tar"
    assert entries[APP_CPV]["RDEPEND"] == "dev-libs/swarmgreet"
    assert "libgreet.so.1" in entries[APP_CPV]["REQUIRES"]
    assert "libgreet.so.1" in entries[LIB_CPV]["PROVIDES"]
    # served files are hard links to the store: no copies
    assert (path / entries[LIB_CPV]["PATH"]).stat().st_nlink >= 2
    assert "MTIME: " in text and "REPO: swarmtest" in text  # portage's on-disk key names


def test_republish_is_a_no_op(binhost: Binhost, refs: dict[str, PackageRef]) -> None:
    pub = Publication("r1", 100, tuple(refs.values()))
    first = binhost.publish(PROFILE, pub)
    ino = (first / "Packages").stat().st_ino
    assert binhost.publish(PROFILE, pub) == first
    assert (first / "Packages").stat().st_ino == ino


def test_rollback_republishes_an_older_release_with_a_newer_timestamp(
        binhost: Binhost, refs: dict[str, PackageRef]) -> None:
    binhost.publish(PROFILE, Publication("r1", 100, (refs[LIB_CPV],)))
    binhost.publish(PROFILE, Publication("r2", 200, (refs[LIB_CPV], refs[APP_CPV])))
    path = binhost.publish(PROFILE, Publication("r1", 300, (refs[LIB_CPV],)))
    assert binhost.current(PROFILE) == ("r1", 300)
    index = parse(path / "Packages")
    assert index.header["TIMESTAMP"] == "300"  # clients caching TIMESTAMP=200 see the change
    assert [p["CPV"] for p in index.packages] == [LIB_CPV]
    assert binhost.resolve(PROFILE, "Packages") == path / "Packages"
    with pytest.raises(UserError) as err:
        binhost.resolve(PROFILE, package_relpath(APP_CPV, 9))
    assert err.value.status == 404

    assert binhost.prune(PROFILE, {"r1", "r2"}) == ["r1@100"]
    assert binhost.publications(PROFILE) == [("r2", 200), ("r1", 300)]
    assert binhost.prune(PROFILE, set()) == ["r2@200"]  # the served one always stays
    assert binhost.current(PROFILE) == ("r1", 300)


def test_missing_artifact_switches_nothing(binhost: Binhost, refs: dict[str, PackageRef]) -> None:
    binhost.publish(PROFILE, Publication("r1", 100, (refs[LIB_CPV],)))
    ghost = PackageRef("app-misc/ghost-1.0", 1, "ab" * 32, 10)
    with pytest.raises(MissingArtifact):
        binhost.publish(PROFILE, Publication("r2", 200, (refs[LIB_CPV], ghost)))
    assert binhost.current(PROFILE) == ("r1", 100)
    assert [p.name for p in (binhost.root / "releases" / PROFILE).iterdir()] == ["r1@100"]


def test_bad_names_are_refused(binhost: Binhost, refs: dict[str, PackageRef]) -> None:
    with pytest.raises(UserError, match="invalid profile"):
        binhost.publish("../etc", Publication("r1", 1, ()))
    with pytest.raises(UserError, match="invalid release id"):
        binhost.publish(PROFILE, Publication("a/b", 1, ()))
    bad_cpv = PackageRef("not-a-cpv", 1, refs[LIB_CPV].sha256, refs[LIB_CPV].size)
    with pytest.raises(UserError, match="invalid package"):
        binhost.publish(PROFILE, Publication("r1", 1, (bad_cpv,)))
    assert binhost.current(PROFILE) is None


@pytest.mark.parametrize("relpath", [
    "../Packages", "dev-libs/../../Packages", "/etc/passwd", "%2e%2e/Packages",
    "..%2fPackages", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "Packages\0.gz", "..\\Packages",
])
def test_resolve_rejects_escapes(binhost: Binhost, refs: dict[str, PackageRef],
                                 relpath: str) -> None:
    binhost.publish(PROFILE, Publication("r1", 100, tuple(refs.values())))
    with pytest.raises(UserError) as err:
        binhost.resolve(PROFILE, relpath)
    assert err.value.status == 400


def test_resolve_serves_only_published_verified_files(
        binhost: Binhost, store: ArtifactStore, refs: dict[str, PackageRef],
        tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        binhost.resolve(PROFILE, "Packages")
    assert err.value.status == 404  # nothing published yet
    path = binhost.publish(PROFILE, Publication("r1", 100, tuple(refs.values())))
    (tmp_path / "secret").write_text("no")
    (path / "dev-libs" / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(UserError) as err:
        binhost.resolve(PROFILE, "dev-libs/leak")
    assert err.value.status == 400
    for relpath in (".release.json", "dev-libs", "nope.gpkg.tar", "", "dev-libs//x"):
        with pytest.raises(UserError) as err:
            binhost.resolve(PROFILE, relpath)
        assert err.value.status == 404, relpath
    with pytest.raises(UserError) as err:
        binhost.resolve("other", "Packages")
    assert err.value.status == 404

    lib = package_relpath(LIB_CPV, 5)
    served = binhost.resolve(PROFILE, lib)
    assert served.read_bytes() == (path / lib).read_bytes()
    # a truncated artifact is never served
    os.chmod(served, 0o644)
    with open(served, "r+b") as f:
        f.truncate(512)
    with pytest.raises(CorruptArtifact):
        binhost.resolve(PROFILE, lib)
    with pytest.raises(MissingArtifact):
        binhost.resolve(PROFILE, lib)


def test_staging_is_a_pkgdir(binhost: Binhost, refs: dict[str, PackageRef],
                             tmp_path: Path) -> None:
    pkgdir = binhost.staging(PROFILE, list(refs.values()), tmp_path / "staging")
    index = parse(pkgdir / "Packages")
    assert sorted(p["CPV"] for p in index.packages) == [APP_CPV, LIB_CPV]
    for p in index.packages:
        assert (pkgdir / p["PATH"]).stat().st_size == int(p["SIZE"])
    # re-staging into the same directory (more packages built since) is fine
    binhost.staging(PROFILE, list(refs.values()), pkgdir)
    assert binhost.current(PROFILE) is None  # staging never touches what is served


def test_unmet_runtime_deps(binhost: Binhost, refs: dict[str, PackageRef],
                            tmp_path: Path) -> None:
    lib_only = binhost.staging(PROFILE, [refs[APP_CPV]], tmp_path / "s1")
    entries = read_packages_index(lib_only / "Packages").packages
    assert unmet_runtime_deps(entries) == [f"{APP_CPV}: needs dev-libs/swarmgreet"]
    both = binhost.staging(PROFILE, list(refs.values()), tmp_path / "s2")
    assert unmet_runtime_deps(read_packages_index(both / "Packages").packages) == []
    synthetic = [
        {"CPV": "app-misc/a-1", "SLOT": "0", "USE": "x",
         "RDEPEND": "x? ( >=dev-libs/b-2 ) y? ( dev-libs/gone ) !app-misc/old "
                    "|| ( dev-libs/c dev-libs/b ) dev-libs/b[foo] dev-libs/b:1",
         "PDEPEND": "dev-libs/late"},
        {"CPV": "dev-libs/b-2.1", "SLOT": "0", "IUSE": "foo", "USE": ""},
    ]
    assert unmet_runtime_deps(synthetic) == [
        "app-misc/a-1: needs dev-libs/b[foo]",
        "app-misc/a-1: needs dev-libs/b:1",
        "app-misc/a-1: needs dev-libs/late",
    ]


# -- kill -9 during publish ---------------------------------------------------------------

# Every filesystem change publish() makes goes through one of these.
FS_OPS = ("link", "replace", "rename", "symlink", "fsync", "unlink", "mkdir", "rmdir", "chmod")


def publish_killed_at(binhost: Binhost, pub: Publication, n: int) -> bool:
    """Fork; the child runs publish() and SIGKILLs itself right before its n-th filesystem
    change. True if it was killed, False if publish() finished first."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            count = 0

            def hook(fn):  # type: ignore[no-untyped-def]
                def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                    nonlocal count
                    count += 1
                    if count == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)
                return wrapper

            for name in FS_OPS:
                setattr(os, name, hook(getattr(os, name)))
            binhost.publish(PROFILE, pub)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "publish failed in the child"
    return False


def assert_whole(binhost: Binhost, allowed: dict[tuple[str, int], set[str]]) -> tuple[str, int]:
    served = binhost.current(PROFILE)
    assert served in allowed
    path = binhost.current_dir(PROFILE)
    assert path is not None
    index = parse(path / "Packages")
    assert index.header["TIMESTAMP"] == str(served[1])
    assert gzip.decompress((path / "Packages.gz").read_bytes()).decode() == \
        (path / "Packages").read_text()
    assert {p["CPV"] for p in index.packages} == allowed[served]
    for p in index.packages:
        assert (path / p["PATH"]).stat().st_size == int(p["SIZE"])
        assert binhost.resolve(PROFILE, p["PATH"]).stat().st_size == int(p["SIZE"])
    return served


def test_kill_9_at_every_step_of_publish_leaves_old_or_new_whole(
        binhost: Binhost, store: ArtifactStore, refs: dict[str, PackageRef]) -> None:
    contents = [(refs[LIB_CPV],), (refs[LIB_CPV], refs[APP_CPV])]
    binhost.publish(PROFILE, Publication("r0", 1000, contents[0]))  # warms the entry cache
    served = ("r0", 1000)
    cpvs = {served: {LIB_CPV}}
    for n in range(1, 200):
        pkgs = contents[n % 2]
        new = (f"r{n}", 1000 + n)
        cpvs[new] = {r.cpv for r in pkgs}
        killed = publish_killed_at(binhost, Publication(*new, pkgs), n)
        served = assert_whole(binhost, {served: cpvs[served], new: cpvs[new]})
        # startup after the crash removes every leftover
        Binhost(binhost.root, store).recover()
        leftovers = [p for p in (binhost.root / "releases" / PROFILE).iterdir()
                     if p.name.startswith(".")]
        leftovers += [p for p in (binhost.root / "current").iterdir() if p.name.startswith(".")]
        assert leftovers == []
        if not killed:
            break
    else:
        pytest.fail("publish never completed")
    print(f"publish survived kill -9 before each of its {n - 1} filesystem changes")
    assert n > 10  # every step up to completion was a kill point
    assert served == new
    # and a killed publish of a release can simply be retried
    assert not publish_killed_at(binhost, Publication("r0", 5000, contents[0]), 10**6)
    assert_whole(binhost, {("r0", 5000): {LIB_CPV}})
