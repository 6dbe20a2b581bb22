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
from dataclasses import dataclass
from pathlib import Path

import pytest
from portage.getbinpkg import PackageIndex

from swarmnode.config import ProfileConfig
from swarmnode.portage.builder import BuildResult, build
from swarmnode.portage.planner import Plan, plan

PROJECT = Path(__file__).resolve().parents[1]
CONFIG = PROJECT / "config"
REPO = CONFIG / "example" / "repo"

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


def example_profile(name: str, repo: Path = REPO, portage_config: Path | None = None
                    ) -> ProfileConfig:
    """A profile of config/swarmnode.toml, optionally with another repo or portage config."""
    portage_config = portage_config or CONFIG / "profiles" / name
    world_file = portage_config / "world"
    world = tuple(line.split("#", 1)[0].strip() for line in world_file.read_text().splitlines())
    return ProfileConfig(name=name, portage_config=portage_config, repositories=(repo,),
                         portage_profile="swarm/amd64", distfiles=CONFIG / "example" / "distfiles",
                         world=tuple(a for a in world if a))


def add_to_pkgdir(pkgdir: Path, result: BuildResult, out: Path) -> None:
    """Copy a built gpkg into pkgdir and merge the Packages entry portage wrote for it."""
    assert result.gpkg is not None
    dest = pkgdir / result.gpkg.relative_to(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(result.gpkg, dest)
    index = PackageIndex()
    if (pkgdir / "Packages").exists():
        with open(pkgdir / "Packages") as f:
            index.read(f)
    with open(out / "Packages") as f:
        built = PackageIndex()
        built.read(f)
    index.header = index.header or built.header
    index.packages.extend(built.packages)
    index.header["PACKAGES"] = str(len(index.packages))
    tmp = pkgdir / "Packages.tmp"
    with open(tmp, "w") as f:
        index.write(f)
    tmp.replace(pkgdir / "Packages")  # atomic: concurrent builds read it


async def build_plan(profile: ProfileConfig, the_plan: Plan, pkgdir: Path, scratch: Path,
                     parallel: int = 2) -> dict[str, BuildResult]:
    """Build every job as soon as its plan dependencies are in pkgdir, `parallel` at a time."""
    pkgdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, BuildResult] = {}
    pending = list(the_plan.jobs)
    running: dict[asyncio.Task[BuildResult], str] = {}

    def start(cpv: str) -> None:
        name = cpv.replace("/", "_")
        running[asyncio.create_task(build(profile, cpv, pkgdir, scratch / name,
                                          scratch / f"{name}.log", timeout_s=300))] = cpv

    while pending or running:
        for job in [j for j in pending if set(j.deps) <= results.keys()]:
            if len(running) < parallel:
                pending.remove(job)
                start(job.cpv)
        assert running, f"no job is ready: {[j.cpv for j in pending]}"
        finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            cpv, result = running.pop(task), task.result()
            assert result.ok, f"{cpv}: {result.error}\n{result.log.read_text()[-3000:]}"
            add_to_pkgdir(pkgdir, result, scratch / cpv.replace("/", "_") / "out")
            results[cpv] = result
    return results


@dataclass
class ExampleRelease:
    profile: ProfileConfig
    plan: Plan
    pkgdir: Path  # gpkgs + Packages of every job: "the current release"
    results: dict[str, BuildResult]


_RELEASE: list[ExampleRelease] = []


def example_release(tmp_path_factory: pytest.TempPathFactory) -> ExampleRelease:
    """The example desktop set built once per test session (shared with test_planner.py)."""
    if not _RELEASE:
        base = tmp_path_factory.mktemp("example-release")
        profile = example_profile("desktop")
        full = plan(profile, ["@world"], base / "plan")
        results = asyncio.run(build_plan(profile, full, base / "pkgdir", base / "builds"))
        _RELEASE.append(ExampleRelease(profile, full, base / "pkgdir", results))
    return _RELEASE[0]


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> ExampleRelease:
    return example_release(tmp_path_factory)


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


def _processes_of(workdir: Path) -> list[int]:
    """pids of processes (in any group) that run in workdir's portage environment."""
    marker = f"PORTAGE_CONFIGROOT={workdir}/cfg".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


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
    assert _processes_of(tmp_path / "wd") == []


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
    assert _processes_of(tmp_path / "wd") == []


@pytest.mark.slow
async def test_signing_env_signs_the_gpkg(tmp_path: Path) -> None:
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
                             signing_env=signing)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    assert result.ok, result.error
    with tarfile.open(result.gpkg) as tar:
        names = tar.getnames()
        manifest = tar.extractfile("libcore-1.0-1/Manifest").read()  # type: ignore[union-attr]
    assert "libcore-1.0-1/image.tar.zst.sig" in names
    assert b"-----BEGIN PGP SIGNATURE-----" in manifest
    verify = subprocess.run([*gpg, "--verify"], input=manifest, capture_output=True)
    assert verify.returncode == 0, verify.stderr
