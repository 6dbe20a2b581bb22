"""The planner and the portage environment, against the example repository with real portage.

Full plans need no builds; the incremental ones plan against the example desktop set built
once per session by test_builder.example_release().
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from example_build import REPO, ExampleRelease, example_profile

from swarmnode.errors import UserError
from swarmnode.portage.env import PortageEnv, venv_bin
from swarmnode.portage import planner
from swarmnode.portage.planner import JobSpec, Plan, plan, tree_version

DESKTOP_CLOSURE = {
    "dev-libs/libcore-1.0", "dev-libs/libformat-1.0", "dev-libs/libparse-1.0",
    "dev-libs/libgreet-1.0", "dev-libs/libcolor-1.0", "dev-util/codegen-1.0",
    "dev-lang/toylang-1.4", "dev-lang/toylang-2.1", "app-misc/bigtable-1.0",
    "app-misc/greeter-1.0", "app-misc/motd-1.0", "app-misc/report-1.0",
    "app-misc/report-plugins-1.0", "app-misc/welcome-1.0",
}


@pytest.fixture(scope="module")
def desktop_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan(example_profile("desktop"), ["@world"], tmp_path_factory.mktemp("plan"))


def _jobs(p: Plan) -> dict[str, JobSpec]:
    return {j.cpv: j for j in p.jobs}


def _portageq(env: PortageEnv, *names: str) -> list[str]:
    out = subprocess.run([sys.executable, str(venv_bin() / "portageq"), "envvar", *names],
                         env=env.environ(), capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_env_is_a_configuration_portage_accepts(tmp_path: Path) -> None:
    # A user make.conf that tries to move paths or re-enable the sandbox cannot break builds.
    cfg = tmp_path / "portage-config"
    shutil.copytree(example_profile("desktop").portage_config, cfg)
    with open(cfg / "make.conf", "a") as f:
        f.write('PKGDIR="/nowhere"\nFEATURES="sandbox"\nCFLAGS="-O1"\n')
    env = PortageEnv.create(example_profile("desktop", portage_config=cfg), tmp_path / "wd",
                            tmp_path / "pkgs", cores=3)
    root, pkgdir, features, cflags, ldflags, makeopts, use, chost = _portageq(
        env, "ROOT", "PKGDIR", "FEATURES", "CFLAGS", "LDFLAGS", "MAKEOPTS", "USE", "CHOST")
    assert root == f"{tmp_path}/wd/root/"
    assert pkgdir == f"{tmp_path}/pkgs"
    assert "sandbox" not in features.split() and "binpkg-multi-instance" in features.split()
    assert cflags == f"-O1 -I{tmp_path}/wd/root/usr/include"  # the user's flags, then ours
    assert f"-L{tmp_path}/wd/root/usr/lib64" in ldflags
    assert makeopts == "-j3 -l3"
    assert "color" in use.split()  # the profile's make.conf is kept
    assert chost == "x86_64-pc-linux-gnu"  # from the repository's profile
    assert (tmp_path / "wd" / "root" / "var/lib/portage/world").read_text().splitlines() == \
        list(env.profile.world)
    assert (tmp_path / "wd" / "bin" / "gtar").exists()


def test_full_plan_is_the_whole_closure_in_build_order(desktop_plan: Plan) -> None:
    jobs = _jobs(desktop_plan)
    assert set(jobs) == DESKTOP_CLOSURE
    assert desktop_plan.reused == ()
    assert all(j.reason == "new" and j.repo == "swarm-example" for j in jobs.values())
    built: set[str] = set()
    for job in desktop_plan.jobs:  # jobs come in an order that respects their deps
        assert set(job.deps) <= built, job
        built.add(job.cpv)
    assert jobs["dev-libs/libgreet-1.0"].slot == "0"
    assert jobs["dev-libs/libgreet-1.0"].subslot == "1"
    assert jobs["app-misc/report-1.0"].use == ("csv",)


def test_edges_are_what_building_needs(desktop_plan: Plan) -> None:
    deps = {cpv: set(j.deps) for cpv, j in _jobs(desktop_plan).items()}
    # A chain, transitively: welcome -> libgreet -> libformat -> libcore.
    assert deps["app-misc/welcome-1.0"] == {
        "dev-libs/libgreet-1.0", "dev-libs/libformat-1.0", "dev-libs/libcore-1.0"}
    # A diamond: report needs libformat and libparse, both need libcore.
    assert deps["app-misc/report-1.0"] == {
        "dev-libs/libformat-1.0", "dev-libs/libparse-1.0", "dev-libs/libcore-1.0"}
    assert deps["dev-libs/libcore-1.0"] == set()
    # A build tool (BDEPEND).
    assert deps["app-misc/bigtable-1.0"] == {"dev-util/codegen-1.0"}
    # The report <-> report-plugins runtime cycle is not a build dependency either way.
    assert "app-misc/report-1.0" not in deps["app-misc/report-plugins-1.0"]
    assert "app-misc/report-plugins-1.0" not in deps["app-misc/report-1.0"]


def test_server_differs_through_the_use_conditional_dep(desktop_plan: Plan,
                                                         tmp_path: Path) -> None:
    server = _jobs(plan(example_profile("server"), ["@world"], tmp_path))
    desktop = _jobs(desktop_plan)
    assert "dev-libs/libcolor-1.0" in desktop["app-misc/greeter-1.0"].deps
    assert desktop["app-misc/greeter-1.0"].use == ("color",)
    assert "dev-libs/libcolor-1.0" not in server
    assert "dev-libs/libcolor-1.0" not in server["app-misc/greeter-1.0"].deps
    assert server["app-misc/greeter-1.0"].use == ()


def test_plans_round_trip_through_dicts(desktop_plan: Plan) -> None:
    assert Plan.from_dict(desktop_plan.to_dict()) == desktop_plan
    assert desktop_plan.to_dict()["jobs"][0]["deps"] == []


def test_single_atoms_plan_their_closure(tmp_path: Path) -> None:
    p = plan(example_profile("desktop"), ["=dev-libs/libformat-1.0"], tmp_path)
    assert [j.cpv for j in p.jobs] == ["dev-libs/libcore-1.0", "dev-libs/libformat-1.0"]


@pytest.mark.parametrize("target, message", [
    ("greeter", "invalid atom 'greeter': missing category"),
    ("@nope", "unknown set '@nope'"),
    ("app-misc/nonexistent", 'there are no ebuilds to satisfy "app-misc/nonexistent"'),
    (">=app-misc/greeter-99", 'there are no ebuilds to satisfy ">=app-misc/greeter-99"'),
])
def test_bad_targets_are_user_errors(target: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        plan(example_profile("desktop"), ["app-misc/motd", target], tmp_path)
    assert message in exc.value.message
    assert "Traceback" not in exc.value.message
    assert str(tmp_path) not in exc.value.message  # no throw-away paths


def test_masked_packages_are_explained(tmp_path: Path) -> None:
    cfg = tmp_path / "portage-config"
    shutil.copytree(example_profile("desktop").portage_config, cfg)
    (cfg / "package.mask").write_text("dev-libs/libcore\n")
    with pytest.raises(UserError) as exc:
        plan(example_profile("desktop", portage_config=cfg), ["app-misc/report"], tmp_path)
    msg = exc.value.message
    assert msg.startswith("cannot plan app-misc/report for profile desktop:")
    assert "dev-libs/libcore-1.0::swarm-example (masked by: package.mask)" in msg
    assert 'required by "app-misc/report' in msg or "app-misc/report" in msg


def test_planning_time_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="timed out after"):
        plan(example_profile("desktop"), ["@world"], tmp_path, timeout_s=0.05)


def test_tree_version_follows_the_contents(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    profile = example_profile("desktop", repo=repo)
    first = tree_version(profile)
    assert first == tree_version(profile) and len(first) == 16
    ebuild = repo / "app-misc" / "motd" / "motd-1.0.ebuild"
    ebuild.write_text(ebuild.read_text() + "\n# changed\n")
    assert tree_version(profile) != first
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert tree_version(profile) == head
    ebuild.write_text(ebuild.read_text() + "\n# dirty\n")
    assert tree_version(profile).startswith(f"{head}-dirty-")


def test_an_unchanged_tree_is_not_read_again(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A node re-reads its tree every few seconds during a pinned cycle: without git, only a
    stat walk unless a file changed (a rsync'd Gentoo tree is ~170 000 files)."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    profile = example_profile("desktop", repo=repo)
    monkeypatch.setattr(planner, "_RACY_NS", -10**18)   # the files are seconds old, say
    first = tree_version(profile)
    reads: list[str] = []

    def counting_open(path: str, mode: str = "r") -> Any:
        reads.append(path)
        return open(path, mode)
    monkeypatch.setattr(planner, "open", counting_open, raising=False)
    assert tree_version(profile) == first and reads == []
    ebuild = repo / "app-misc" / "motd" / "motd-1.0.ebuild"
    ebuild.write_text(ebuild.read_text() + "# appended\n")       # a write
    second = tree_version(profile)
    assert second != first and reads
    # replaced by a same-sized file with the old mtime, as rsync does: a new inode and ctime
    text, stat = ebuild.read_text(), ebuild.stat()
    swap = ebuild.with_suffix(".new")
    swap.write_text(text.replace("# appended", "# Appended"))
    os.utime(swap, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    swap.rename(ebuild)
    assert tree_version(profile) not in (first, second)


@pytest.mark.slow
def test_replan_against_the_release_schedules_nothing(release: ExampleRelease,
                                                      tmp_path: Path) -> None:
    again = plan(release.profile, ["@world"], tmp_path, release_pkgdir=release.pkgdir)
    assert again.jobs == ()
    assert set(again.reused) == DESKTOP_CLOSURE


@pytest.mark.slow
def test_sub_slot_bump_rebuilds_exactly_the_library_and_its_slot_operator_users(
        release: ExampleRelease, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    lib = repo / "dev-libs" / "libgreet"
    new = lib / "libgreet-1.1.ebuild"
    new.write_text((lib / "libgreet-1.0.ebuild").read_text().replace('SLOT="0/1"', 'SLOT="0/2"'))
    profile = example_profile("desktop", repo=repo)
    env = PortageEnv.create(profile, tmp_path / "manifest-env", tmp_path / "unused")
    subprocess.run([sys.executable, str(venv_bin() / "ebuild"), str(new), "manifest"],
                   env=env.environ(), check=True, capture_output=True)

    bumped = plan(profile, ["@world"], tmp_path / "plan", release_pkgdir=release.pkgdir)
    jobs = _jobs(bumped)
    assert set(jobs) == {"dev-libs/libgreet-1.1", "app-misc/greeter-1.0", "app-misc/welcome-1.0"}
    assert jobs["dev-libs/libgreet-1.1"].subslot == "2"
    assert jobs["dev-libs/libgreet-1.1"].reason == "version changed: 1.0 -> 1.1"
    for user in ("app-misc/greeter-1.0", "app-misc/welcome-1.0"):
        assert jobs[user].reason == "sub-slot rebuild: dev-libs/libgreet 0/1 -> 0/2"
        assert "dev-libs/libgreet-1.1" in jobs[user].deps
        assert not set(jobs[user].deps) - set(jobs)  # deps name jobs only
    assert set(bumped.reused) == DESKTOP_CLOSURE - {
        "dev-libs/libgreet-1.0", "app-misc/greeter-1.0", "app-misc/welcome-1.0"}


@pytest.mark.slow
def test_use_change_rebuilds_exactly_the_affected_packages(release: ExampleRelease,
                                                           tmp_path: Path) -> None:
    cfg = tmp_path / "portage-config"
    shutil.copytree(release.profile.portage_config, cfg)
    with open(cfg / "package.use", "a") as f:
        f.write("app-misc/report -csv\n")
    changed = plan(example_profile("desktop", portage_config=cfg), ["@world"], tmp_path,
                   release_pkgdir=release.pkgdir)
    assert [(j.cpv, j.use, j.reason) for j in changed.jobs] == [
        ("app-misc/report-1.0", (), "USE changed: -csv")]
    assert set(changed.reused) == DESKTOP_CLOSURE - {"app-misc/report-1.0"}


@pytest.mark.slow
def test_changed_dependencies_rebuild_the_package(release: ExampleRelease, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    ebuild = repo / "app-misc" / "motd" / "motd-1.0.ebuild"
    ebuild.write_text(ebuild.read_text() + '\nRDEPEND="dev-libs/libcore"\n')  # no revision bump
    changed = plan(example_profile("desktop", repo=repo), ["@world"], tmp_path / "plan",
                   release_pkgdir=release.pkgdir)
    assert [(j.cpv, j.reason) for j in changed.jobs] == [
        ("app-misc/motd-1.0", "dependencies changed")]
