"""The example repository's desktop set, built once per test session with the real builder.

Shared by the builder and planner tests (the planner's incremental tests need a release)."""

from __future__ import annotations

import asyncio
import shutil
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
