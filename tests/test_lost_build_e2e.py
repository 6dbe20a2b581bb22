"""A build whose only copy dies with its node is built again (real processes, real portage).

Three nodes, one build at a time each, `replicas = 1` (nothing copies an artifact unless a
build needs it). The cycle: `lost-gate`, which `lost-user` installs, next to two builds that
keep the other nodes busy (`busy-a`, `busy-b`). The builds wait for flag files the test
creates, so the order is certain: once each node holds one job, lost-gate is let go; its node
is killed the moment the build is recorded, while the others still wait — nobody can have
fetched it. lost-user can then only be built after lost-gate is built again on a live node;
before the rebuild existed it waited for the dead node forever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import PROFILES, NodeProc, copy_example, profile_toml, run_cluster, wait_for

pytestmark = pytest.mark.slow

EBUILD = """EAPI=8
DESCRIPTION="{desc}"
HOMEPAGE="https://example.invalid/swarmnode"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
{deps}
S="${{WORKDIR}}"
src_compile() {{
	# wait (at most 5 min) for the test to let this build finish
	for i in $(seq 1500); do [[ -e "{flag}" ]] && return; sleep 0.2; done
	die "{flag} never appeared"
}}
src_install() {{
	mkdir -p "${{ED}}/usr/share/${{PN}}" || die
	echo "${{PF}}" > "${{ED}}/usr/share/${{PN}}/built-by" || die
}}
"""

GATE, USER = "app-misc/lost-gate-1.0", "app-misc/lost-user-1.0"
PACKAGES = {  # name: (description, dependencies, flag file that lets it finish)
    "lost-gate": ("the build whose only copy is lost", "", "gate"),
    "lost-user": ("installs lost-gate to build", 'DEPEND="app-misc/lost-gate"\n'
                  'RDEPEND="${DEPEND}"', "rest"),
    "busy-a": ("keeps one node busy", "", "rest"),
    "busy-b": ("keeps another node busy", "", "rest"),
}


def write_packages(repo: Path, flags: Path) -> None:
    for name, (desc, deps, flag) in PACKAGES.items():
        d = repo / "app-misc" / name
        d.mkdir(parents=True)
        (d / f"{name}-1.0.ebuild").write_text(
            EBUILD.format(desc=desc, deps=deps, flag=flags / flag))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lost")
    repo, distfiles = copy_example(root)
    write_packages(repo, root / "flags")
    (root / "flags").mkdir()
    profiles = profile_toml("desktop", repo, PROFILES / "desktop", distfiles)
    yield from run_cluster(root, profiles, max_parallel_jobs=1, cluster_toml="replicas = 1")


def cycle(n: NodeProc) -> dict[str, Any]:
    return n.get("/api/v1/cycles/latest?profile=desktop")


def test_a_build_lost_with_its_node_is_built_again_on_another(cluster: list[NodeProc]) -> None:
    flags = cluster[0].root / "flags"
    wait_for(lambda: sum(1 for x in cluster[0].get("/api/v1/nodes")["nodes"] if x["up"]) == 3,
             60, "three nodes up")
    started = cluster[0].cli("fresh", "--profile", "desktop", *(f"app-misc/{p}" for p in PACKAGES))
    assert started.returncode == 0, started.stdout + started.stderr

    def holders() -> dict[str, str] | None:
        jobs = cycle(cluster[0])["jobs"]
        held = {cpv: job["node"] for cpv, job in jobs.items() if job["state"] == "leased"}
        return held if len(set(held.values())) == 3 else None

    held = wait_for(holders, 300, "each node to hold one job")
    assert set(held) == {GATE, "app-misc/busy-a-1.0", "app-misc/busy-b-1.0"}, held
    victim = next(n for n in cluster if n.node_id == held[GATE])
    (flags / "gate").touch()
    wait_for(lambda: cycle(victim)["jobs"][GATE]["state"] == "built", 120, f"{GATE} built",
             interval=0.05)
    victim.kill9()  # it holds the only copy: the other two are still building
    watch = next(n for n in cluster if n is not victim)

    def reopened() -> dict[str, Any] | None:
        c = cycle(watch)
        return c if c["jobs"][GATE]["state"] != "built" else None

    c = wait_for(reopened, 60, f"the leader to see {GATE} lost and build it again")
    assert c["jobs"][USER]["state"] == "planned", c["jobs"][USER]  # waits for it again
    assert watch.get("/api/v1/status")["summary"]["counters"].get("lost_builds") == 1
    (flags / "rest").touch()
    done = wait_for(lambda: (c := cycle(watch))["finished"] and c, 300,
                    "the cycle to finish without the dead node")
    assert done["counts"]["built"] == len(PACKAGES), done["counts"]
    for cpv in (GATE, USER):
        assert done["jobs"][cpv]["log_node"] != victim.node_id, done["jobs"][cpv]
    logs = "".join(n.log_path.read_text() for n in cluster if n is not victim)
    assert f"every copy of {GATE}" in logs and "building it again" in logs
    result = watch.cli("finalize", "--profile", "desktop")  # every artifact is on a live node
    assert result.returncode == 0, result.stdout + result.stderr
