"""Nothing is special-cased to the example repository: a repository made here, with its own
name, profile, categories and distfiles, is built, published and installed through the CLI,
with nothing but a [profiles.*] table pointing at it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import NodeProc, profile_toml
from heldout_repo import make_repository
from swarmnode.portage.client import BinhostClient

pytestmark = pytest.mark.slow


def test_a_repository_outside_the_project_builds_and_installs(tmp_path: Path) -> None:
    repo, distfiles, conf = make_repository(tmp_path)
    # All a user adds: a profile table naming the repository, its profile and the distfiles
    # (no portage config directory at all: the repository's profile decides).
    node = NodeProc(tmp_path / "swarm", "solo",
                    profile_toml("lab", repo, None, distfiles, portage_profile="base"))
    node.start()
    try:
        empty = node.cli("fresh", "--profile", "lab")  # no world defined: say what to do
        assert empty.returncode == 1 and "@world of profile lab is empty" in empty.stderr
        built = node.cli("fresh", "--profile", "lab", "--wait", "games-misc/tallyho", timeout=600)
        assert built.returncode == 0, built.stdout + built.stderr + node.log_tail()
        assert node.cli("finalize", "--profile", "lab").returncode == 0
        with BinhostClient.create(tmp_path / "client", f"{node.url}/binhost/lab",
                                  node.cli("key").stdout, repo, "base") as client:
            client.install(["games-misc/tallyho"])
            assert client.run("tallyho").strip() == "tallyho 55"
    finally:
        node.stop()
        shutil.rmtree(tmp_path / "swarm", ignore_errors=True)
