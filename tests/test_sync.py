"""Repository sync with real portage (`emaint sync`) from a git repository over file://.

The example repository is offered as a bare git repository by config/example/make-git-repo.sh;
profiles point at a not-yet-existing directory with a sync URI, as a new node's config would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from example_build import CONFIG, REPO
from harness import profile_toml

from swarmnode.config import ProfileConfig, load_config
from swarmnode.errors import UserError
from swarmnode.portage.env import PortageEnv
from swarmnode.portage.planner import plan, tree_version
from swarmnode.portage.sync import git_environ, sync_profile, tree_versions

MAKE_GIT_REPO = CONFIG / "example" / "make-git-repo.sh"
SECRET = "test-secret-0123456789abcdef"
# No user or system git configuration: the tests' own git commands behave the same everywhere.
GIT_ENV = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True,
                          check=True).stdout.strip()


def make_git_repo(dest: Path) -> str:
    """A bare git repository of the example repository; returns its HEAD."""
    subprocess.run([str(MAKE_GIT_REPO), str(dest)], check=True, capture_output=True)
    return git("--git-dir", str(dest), "rev-parse", "HEAD")


def load_profile(tmp_path: Path, repos: list[Path], uris: list[str]) -> ProfileConfig:
    """A profile loaded from a TOML config, as a node loads it."""
    body = profile_toml("desktop", repos[0], CONFIG / "profiles" / "desktop",
                        CONFIG / "example" / "distfiles")
    body = body.replace(f'repositories = ["{repos[0]}"]',
                        "repositories = [" + ", ".join(f'"{r}"' for r in repos) + "]")
    body += "sync_uris = [" + ", ".join(f'"{u}"' for u in uris) + "]\n"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"[cluster]\nsecret = '{SECRET}'\n{body}")
    return load_config(cfg).profile("desktop")


def push_bump(bare: Path, work: Path) -> str:
    """Commit a changed motd ebuild from a second clone and push it; returns the new HEAD."""
    git("clone", "-q", f"file://{bare}", str(work))
    ebuild = work / "app-misc" / "motd" / "motd-1.0.ebuild"
    ebuild.write_text(ebuild.read_text() + "\n# bumped upstream\n")
    git("commit", "-qam", "bump motd", cwd=work)
    git("push", "-q", "origin", "master", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


# -- make-git-repo.sh --------------------------------------------------------------------------

def test_make_git_repo_is_reproducible_and_holds_the_example_repo(tmp_path: Path) -> None:
    first, second = make_git_repo(tmp_path / "a.git"), make_git_repo(tmp_path / "b.git")
    assert first == second and re.fullmatch(r"[0-9a-f]{40}", first)
    files = set(git("--git-dir", str(tmp_path / "a.git"), "ls-tree", "-r", "--name-only",
                    "HEAD").splitlines())
    assert files == {p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if p.is_file()}
    again = subprocess.run([str(MAKE_GIT_REPO), str(tmp_path / "a.git")], capture_output=True,
                           text=True)
    assert again.returncode == 1 and "is not empty" in again.stderr


# -- configuration -----------------------------------------------------------------------------

def test_a_synced_repository_may_not_exist_yet(tmp_path: Path) -> None:
    missing, empty = tmp_path / "repos" / "swarm", tmp_path / "empty"
    empty.mkdir()
    profile = load_profile(tmp_path, [missing, empty, REPO],
                           ["file:///srv/a.git", "https://example.org/b.git", ""])
    assert profile.sync_uris == ("file:///srv/a.git", "https://example.org/b.git", "")
    assert profile.sync_uri(missing) == "file:///srv/a.git" and profile.sync_uri(REPO) == ""
    assert not missing.exists(), "loading a config creates nothing; the first sync clones"


@pytest.mark.parametrize("uris, message", [
    ('"file:///srv/a.git"', "sync_uris must be a list of strings"),
    ("[1]", "sync_uris must be a list of strings"),
    ('["file:///srv/a.git", ""]', "sync_uris has 2 entries but repositories has 1"),
    ('["http://example.org/a.git"]', "sync_uris[0] must be empty or a git URI"),
    ('["/srv/a.git"]', "sync_uris[0] must be empty or a git URI"),
    ('["file://srv/a.git"]', "sync_uris[0] must be empty or a git URI"),
    ('["https://example.org/a.git\\nsync-type = rsync"]', "sync_uris[0] must be empty or a git URI"),
    ('["git@example.org"]', "sync_uris[0] must be empty or a git URI"),
])
def test_bad_sync_uris_are_one_clear_error(tmp_path: Path, uris: str, message: str) -> None:
    body = profile_toml("desktop", REPO, None, CONFIG / "example" / "distfiles",
                        extra=f"sync_uris = {uris}")
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"[cluster]\nsecret = '{SECRET}'\n{body}")
    with pytest.raises(UserError) as err:
        load_config(cfg)
    assert message in err.value.message and "\n" not in err.value.message


def test_an_unsynced_non_repository_is_still_refused(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "README").write_text("not a repository")
    with pytest.raises(UserError, match="is not an ebuild repository"):
        load_profile(tmp_path, [tmp_path / "stuff"], ["file:///srv/a.git"])
    with pytest.raises(UserError, match="is not an ebuild repository"):
        load_profile(tmp_path, [tmp_path / "absent"], [""])


def test_repos_conf_syncs_only_the_repositories_with_a_uri(tmp_path: Path) -> None:
    unsynced = tmp_path / "repos" / "my.overlay"
    profile = load_profile(tmp_path, [REPO, unsynced], ["", "git@example.org:o/overlay.git"])
    env = PortageEnv.create(profile, tmp_path / "env", tmp_path / "pkgdir")
    conf = (env.etc_portage / "repos.conf").read_text()
    sections = {s.split("]")[0]: s for s in conf.split("\n[")[1:]}
    assert set(sections) == {"swarm-example", "my-overlay"}  # not cloned: the directory's name
    assert "auto-sync = no" in sections["swarm-example"]
    assert "sync-type" not in sections["swarm-example"]
    assert (f"location = {profile.repositories[1]}\nsync-type = git\nsync-uri = git@example.org:o/overlay.git\n"
            "auto-sync = yes\nvolatile = no\n") in sections["my-overlay"]


def test_git_environ_declares_the_locations_safe_for_portage(tmp_path: Path) -> None:
    # portage adds a repository to the host's *system* git config unless this finds it.
    location = tmp_path / "a-b.c" / "repo"
    env = dict(os.environ, **git_environ([location]))
    check = subprocess.run(["git", "config", "--get", "safe.directory",
                            f"^{re.escape(str(location))}$"], env=env, capture_output=True)
    assert check.returncode == 0


# -- syncing with portage ----------------------------------------------------------------------

@pytest.fixture
def bare(tmp_path: Path) -> Path:
    path = tmp_path / "upstream" / "swarm-example.git"
    make_git_repo(path)
    return path


def _system_gitconfig() -> bytes | None:
    path = Path("/etc/gitconfig")
    return path.read_bytes() if path.is_file() else None


@pytest.mark.slow
def test_sync_clones_then_follows_upstream_and_the_planner_uses_it(tmp_path: Path,
                                                                    bare: Path) -> None:
    head = git("--git-dir", str(bare), "rev-parse", "HEAD")
    repo = tmp_path / "var" / "db" / "repos" / "swarm"
    profile = load_profile(tmp_path, [repo], [f"file://{bare}"])
    host_gitconfig = _system_gitconfig()

    first = sync_profile(profile, tmp_path / "work")
    assert first.error == "", first.output
    assert first.synced == ["swarm-example"] and first.tree_version == head
    assert (repo / "profiles" / "repo_name").read_text().strip() == "swarm-example"
    assert "Sync completed" in first.output
    assert tree_versions([profile]) == {"desktop": head}
    assert list((tmp_path / "work").iterdir()) == [], "the throw-away portage config is removed"

    new_head = push_bump(bare, tmp_path / "upstream-work")
    assert tree_version(profile) == head, "nothing changes until the next sync"
    second = sync_profile(profile, tmp_path / "work")
    assert second.error == "" and second.tree_version == new_head != head
    assert "# bumped upstream" in (repo / "app-misc" / "motd" / "motd-1.0.ebuild").read_text()
    assert _system_gitconfig() == host_gitconfig, "the host's git config is never written"

    # The config now validates like any repository's, and the planner resolves from it.
    profile = load_profile(tmp_path, [repo], [f"file://{bare}"])
    motd = plan(profile, ["app-misc/motd"], tmp_path / "plan")
    assert motd.tree_version == new_head
    assert {j.cpv for j in motd.jobs} == {"app-misc/motd-1.0", "dev-util/codegen-1.0"}
    assert {j.repo for j in motd.jobs} == {"swarm-example"}


@pytest.mark.slow
def test_a_failed_sync_names_the_repository_and_does_not_raise(tmp_path: Path,
                                                               bare: Path) -> None:
    good, bad = tmp_path / "repos" / "swarm", tmp_path / "repos" / "extra"
    profile = load_profile(tmp_path, [good, bad],
                           [f"file://{bare}", f"file://{tmp_path}/nonexistent.git"])
    result = sync_profile(profile, tmp_path / "work")
    assert result.synced == ["swarm-example"], "the other repository is still synced"
    bad = profile.repositories[1]
    assert result.error.startswith(f"profile desktop: syncing repository extra ({bad}) from "
                                   f"file://{tmp_path}/nonexistent.git failed (exit ")
    assert "nonexistent.git" in result.error.split(": ", 2)[2], "portage's last lines are quoted"
    assert "\n" not in result.error
    # Nothing was cloned, so the config still loads: the next sync can try again.
    assert load_profile(tmp_path, [good, bad], list(profile.sync_uris)).sync_uris


@pytest.mark.slow
def test_sync_time_is_bounded(tmp_path: Path, bare: Path) -> None:
    repo = tmp_path / "repos" / "swarm"
    profile = load_profile(tmp_path, [repo], [f"file://{bare}"])
    result = sync_profile(profile, tmp_path / "work", timeout_s=0.01)
    assert "swarm" in result.error and "timed out" in result.error and result.synced == []


_NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chown") is None,
                                 reason="needs root to give the repository to another user")


def _foreign_owned_sync(tmp_path: Path, bare: Path) -> tuple[ProfileConfig, str]:
    """Sync, give the checkout to `nobody`, push upstream and sync again; returns the new HEAD."""
    repo = tmp_path / "repos" / "swarm"
    profile = load_profile(tmp_path, [repo], [f"file://{bare}"])
    assert sync_profile(profile, tmp_path / "work").error == ""
    subprocess.run(["chown", "-R", "nobody", str(repo)], check=True)
    new_head = push_bump(bare, tmp_path / "upstream-work")
    result = sync_profile(profile, tmp_path / "work")
    assert result.error == "", result.output  # git's "dubious ownership" did not stop portage
    assert "# bumped upstream" in (repo / "app-misc" / "motd" / "motd-1.0.ebuild").read_text()
    return profile, new_head


@pytest.mark.slow
@_NEEDS_ROOT
def test_sync_works_on_a_repository_another_user_owns(tmp_path: Path, bare: Path) -> None:
    _foreign_owned_sync(tmp_path, bare)


@pytest.mark.slow
@_NEEDS_ROOT
def test_tree_version_of_a_repository_another_user_owns_is_its_head(tmp_path: Path,
                                                                    bare: Path) -> None:
    profile, new_head = _foreign_owned_sync(tmp_path, bare)
    assert tree_version(profile) == new_head


def test_a_profile_without_sync_uris_syncs_nothing(tmp_path: Path) -> None:
    profile = load_profile(tmp_path, [REPO], [])
    result = sync_profile(profile, tmp_path / "work")
    assert result.error == "" and result.synced == []
    assert result.tree_version == tree_version(profile) and "nothing to sync" in result.output
