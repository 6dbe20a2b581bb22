"""The builder: one package on a clean build root with real emerge (slow: real builds).

`example_release()` builds the example desktop set once per session -- every job of the plan,
dependencies from a staging PKGDIR that grows as jobs finish -- and test_planner.py reuses it
for the incremental plans. Building a job only after its plan dependencies also checks the
planner's edges: a missing edge fails phase 1 ("not in the staging binhost").
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from swarmnode.config import ProfileConfig
from swarmnode.portage.builder import build, leftover_build_processes
from swarmnode.portage.index import read_gpkg_metadata

from example_build import REPO, ExampleRelease, example_profile

SLEEPY = """EAPI=8
DESCRIPTION="compiles forever (for timeout tests)"
HOMEPAGE="https://example.invalid/swarmnode"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
src_compile() {
	echo "sleepy: compiling"
	sleep 600 &
	wait
}
"""


def _group_alive(pgid: int) -> list[int]:
    """pids still in process group pgid."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def _pgids(log: Path) -> list[int]:
    return [int(m) for m in re.findall(r"=== swarmnode: pgid (\d+) ===", log.read_text())]


def _sleepy_profile(tmp_path: Path) -> ProfileConfig:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    (repo / "app-misc" / "sleepy").mkdir()
    (repo / "app-misc" / "sleepy" / "sleepy-1.0.ebuild").write_text(SLEEPY)
    return example_profile("desktop", repo=repo)


@pytest.mark.slow
def test_builds_a_package_with_its_dependencies_from_staging(release: ExampleRelease) -> None:
    result = release.results["dev-libs/libgreet-1.0"]
    assert result.ok and result.error == ""
    assert result.gpkg is not None and result.gpkg.name == "libgreet-1.0-1.gpkg.tar"
    log = result.log.read_text()
    phase1, phase2 = log.split("=== swarmnode: phase 2/2 build")
    # Phase 1 installed the build-time closure as binaries, nothing else.
    installed = set(re.findall(r">>> Emerging binary \(\d+ of \d+\) (\S+)::", phase1))
    assert installed == {"dev-libs/libformat-1.0", "dev-libs/libcore-1.0"}
    assert ">>> Emerging (" not in phase1  # nothing compiled in phase 1
    assert ">>> Emerging (1 of 1) dev-libs/libgreet-1.0::swarm-example" in phase2
    with tarfile.open(result.gpkg) as tar:
        names = tar.getnames()
    assert "libgreet-1.0-1/image.tar.zst" in names


@pytest.mark.slow
def test_a_build_tool_dependency_is_installed_into_the_build_host(release: ExampleRelease) -> None:
    log = release.results["app-misc/bigtable-1.0"].log.read_text()
    assert re.search(r">>> Emerging binary \(1 of 1\) dev-util/codegen-1.0::swarm-example\n", log)


@pytest.mark.slow
async def test_makeopts_come_from_cores_and_staging_is_only_read(release: ExampleRelease,
                                                                 tmp_path: Path) -> None:
    # Staging is shared by concurrent builds: portage must not rewrite its index or files.
    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_mtime_ns, p.stat().st_size)
                for p in release.pkgdir.rglob("*")}
    before = snapshot()
    result = await build(release.profile, "dev-libs/libformat-1.0", release.pkgdir,
                         tmp_path / "wd", tmp_path / "build.log", cores=3)
    assert result.ok, result.error
    assert "make -j3 -l3 " in result.log.read_text()
    assert snapshot() == before


@pytest.mark.slow
async def test_compile_failure_is_reported_with_the_compiler_error(tmp_path: Path) -> None:
    profile = example_profile("desktop")
    result = await build(profile, "app-misc/broken-1.0", tmp_path / "staging", tmp_path / "wd",
                         tmp_path / "build.log")
    assert not result.ok and result.gpkg is None
    # One line: portage's verdict and the compiler's first error.
    assert result.error.startswith("app-misc/broken-1.0::swarm-example failed (compile phase): "
                                   "broken.c:6:24: error: ")
    assert "greeting_that_was_never_declared" in result.error and "\n" not in result.error
    log = result.log.read_text()
    assert "undeclared (first use in this function)" in log  # gcc's diagnostic is in the log
    assert "\x1b[" not in log  # without colour escapes
    assert "=== swarmnode: phase 2/2 build" in log


@pytest.mark.slow
async def test_a_dependency_missing_from_staging_is_not_compiled(tmp_path: Path) -> None:
    profile = example_profile("desktop")
    result = await build(profile, "dev-libs/libformat-1.0", tmp_path / "staging",
                         tmp_path / "wd", tmp_path / "build.log")
    assert not result.ok
    assert "dev-libs/libcore-1.0 is not in the staging binhost" in result.error
    assert "phase 2/2" not in result.log.read_text()


@pytest.mark.slow
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    profile = _sleepy_profile(tmp_path)
    result = await build(profile, "app-misc/sleepy-1.0", tmp_path / "staging", tmp_path / "wd",
                         tmp_path / "build.log", timeout_s=4)
    assert not result.ok and result.error == "timed out after 4s"
    assert 4 <= result.duration_s < 4 + 10
    pgids = _pgids(result.log)
    assert pgids
    assert all(_group_alive(g) == [] for g in pgids)
    assert leftover_build_processes(tmp_path / "wd") == []


@pytest.mark.slow
async def test_cancelling_a_build_kills_it(tmp_path: Path) -> None:
    profile = _sleepy_profile(tmp_path)
    log = tmp_path / "build.log"
    task = asyncio.create_task(build(profile, "app-misc/sleepy-1.0", tmp_path / "staging",
                                     tmp_path / "wd", log, timeout_s=600))
    for _ in range(600):  # until the compile phase runs (bounded: 60 s)
        if log.exists() and "sleepy: compiling" in log.read_text():
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the build never reached its compile phase")
    pgid = _pgids(log)[-1]
    assert _group_alive(pgid)  # make sure we are really killing something
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _group_alive(pgid) == []
    assert leftover_build_processes(tmp_path / "wd") == []


@pytest.mark.slow
async def test_signed_gpkg_carries_the_swarms_build_id(tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch"]
    subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", "test <t@t>", "ed25519", "sign",
                    "never"], check=True, capture_output=True)
    listing = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True,
                             capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    signing = {"BINPKG_GPG_SIGNING_GPG_HOME": str(home), "BINPKG_GPG_SIGNING_KEY": fpr}
    try:
        result = await build(example_profile("desktop"), "dev-libs/libcore-1.0",
                             tmp_path / "staging", tmp_path / "wd", tmp_path / "build.log",
                             signing_env=signing, build_id=7)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    assert result.ok, result.error
    assert result.gpkg is not None and result.gpkg.name == "libcore-1.0-7.gpkg.tar"
    assert read_gpkg_metadata(result.gpkg)["BUILD_ID"] == "7"  # what clients record
    with tarfile.open(result.gpkg) as tar:
        names = tar.getnames()
        manifest = tar.extractfile("libcore-1.0-7/Manifest").read()  # type: ignore[union-attr]
    assert "libcore-1.0-7/image.tar.zst.sig" in names
    assert b"-----BEGIN PGP SIGNATURE-----" in manifest
    verify = subprocess.run([*gpg, "--verify"], input=manifest, capture_output=True)
    assert verify.returncode == 0, verify.stderr
