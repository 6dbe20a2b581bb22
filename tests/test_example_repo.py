"""The example ebuild repository and profiles are valid for real portage (no builds).

The demo and the slow tests build this repository with real emerge; these checks catch a
broken ebuild, a stale distfile or a world file naming a missing package in about a second,
before anything is compiled. Portage reads its configuration from the environment at import
time, so every query runs in a child process with the docs/portage-on-debian.md environment.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from portage.dep import Atom  # profile-independent parts only, as in the daemon
from portage.versions import cpv_getkey

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE = PROJECT / "config" / "example"
REPO = EXAMPLE / "repo"
DISTDIR = EXAMPLE / "distfiles"
PROFILES = PROJECT / "config" / "profiles"
PORTAGE_PROFILE = "swarm/amd64"
DEP_KEYS = ("DEPEND", "RDEPEND", "BDEPEND", "PDEPEND")

# Runs inside the child: dumps everything the tests assert on as JSON.
QUERY = r'''
import json, sys
import portage
from portage.checksum import verify_all
from portage.dep import Atom, use_reduce

repo_path, distdir, world_path = sys.argv[1:4]
settings = portage.config(clone=portage.settings)
portdb = portage.db[portage.root]["porttree"].dbapi
repo = portdb.repositories.get_repo_for_location(repo_path)
keys = ["EAPI", "SLOT", "KEYWORDS", "LICENSE", "RESTRICT", "IUSE", "SRC_URI",
        "DEPEND", "RDEPEND", "BDEPEND", "PDEPEND"]
out = {"settings": {k: settings.get(k, "") for k in (
           "ARCH", "ACCEPT_KEYWORDS", "ABI", "DEFAULT_ABI", "MULTILIB_ABIS", "LIBDIR_amd64",
           "CHOST", "ELIBC", "KERNEL")},
       "repo_name": repo.name, "errors": {}, "packages": {}, "manifest": {}, "world": {}, "closure": []}

def deps(cpv, meta, use):
    """Atoms per dependency class, reduced with this profile's USE, plus all branches."""
    d = {}
    for k in ("DEPEND", "RDEPEND", "BDEPEND", "PDEPEND"):
        reduced = use_reduce(meta[k], uselist=use, eapi=meta["EAPI"], token_class=Atom, flat=True)
        every = use_reduce(meta[k], matchall=True, eapi=meta["EAPI"], token_class=Atom, flat=True)
        d["use_" + k] = [str(a) for a in reduced if a != "||"]
        d["all_" + k] = [str(a) for a in every if a != "||"]
    return d

for cp in portdb.cp_all(trees=[repo_path]):
    for cpv in portdb.cp_list(cp, mytree=repo_path):
        try:
            meta = dict(zip(keys, portdb.aux_get(cpv, keys, mytree=repo_path)))
            settings.setcpv(cpv, mydb=portdb)
            use = settings["PORTAGE_USE"].split()
            meta.update(deps(cpv, meta, use))
        except Exception as e:  # a broken ebuild: report it by name, keep checking the rest
            out["errors"][cpv] = f"{type(e).__name__}: {e}"
            continue
        meta["USE"] = use
        meta["visible"] = bool(portdb.xmatch("match-visible", "=" + cpv))
        meta["fetch"] = sorted(portdb.getFetchMap(cpv, mytree=repo_path))
        meta["atoms_unmatched"] = [a for k in ("DEPEND", "RDEPEND", "BDEPEND", "PDEPEND")
                                   for a in meta["all_" + k] if not portdb.xmatch("match-all", a)]
        out["packages"][cpv] = meta
    manifest = repo.load_manifest(f"{repo_path}/{cp}", distdir)
    for name, digests in manifest.fhashdict.get("DIST", {}).items():
        try:
            ok, reason = verify_all(f"{distdir}/{name}", digests)
        except portage.exception.FileNotFound:
            ok, reason = False, "missing"
        out["manifest"][name] = {"ok": ok, "reason": str(reason), "cp": cp,
                                 "hashes": sorted(digests)}

# World atoms and the closure of everything they pull in (all dependency classes).
todo = []
for line in open(world_path).read().split():
    best = portdb.xmatch("bestmatch-visible", line)
    out["world"][line] = best
    if best:
        todo.append(best)
seen = set()
while todo:
    cpv = todo.pop()
    if cpv in seen:
        continue
    seen.add(cpv)
    meta = out["packages"].get(cpv, {"use_" + k: [] for k in keys})
    for k in ("DEPEND", "RDEPEND", "BDEPEND", "PDEPEND"):
        for a in meta["use_" + k]:
            best = portdb.xmatch("bestmatch-visible", a)
            if best:
                todo.append(best)
out["closure"] = sorted(seen)
json.dump(out, sys.stdout)
'''


def portage_env(work: Path, profile: str) -> dict[str, str]:
    """A throw-away config root for `profile`, as swarmnode lays it out (recipe layout)."""
    share = Path(sys.prefix) / "share" / "portage" / "config"
    host, cfg, root = work / "host", work / "cfg" / "etc" / "portage", work / "root"
    for d in (host / "share" / "portage" / "config", host / "etc", cfg / "repos.conf", root,
              work / "tmp"):
        d.mkdir(parents=True)
    for f in share.iterdir():  # portage's defaults minus its built-in, absent [gentoo] repo
        if f.name != "repos.conf":
            (host / "share" / "portage" / "config" / f.name).symlink_to(f)
    (host / "share" / "portage" / "config" / "repos.conf").write_text(
        "[DEFAULT]\nmain-repo = swarm-example\n")
    (host / "etc" / "portage").symlink_to(cfg)
    (cfg / "make.profile").symlink_to(REPO / "profiles" / PORTAGE_PROFILE)
    (cfg / "repos.conf" / "swarm-example.conf").write_text(
        f"[DEFAULT]\nmain-repo = swarm-example\n\n[swarm-example]\nlocation = {REPO}\n")
    # No ACCEPT_LICENSE here: the repository's license_groups must make MIT acceptable.
    (cfg / "make.conf").write_text(
        f'DISTDIR="{DISTDIR}"\nPORTAGE_TMPDIR="{work}/tmp"\nPKGDIR="{work}/pkgs"\n'
        f'PORTAGE_DEPCACHEDIR="{work}/depcache"\nFEATURES="-news"\n'
        + (PROFILES / profile / "make.conf").read_text())
    if (PROFILES / profile / "package.use").exists():
        (cfg / "package.use").write_text((PROFILES / profile / "package.use").read_text())
    return {"PORTAGE_OVERRIDE_EPREFIX": str(host), "EPREFIX": "",
            "PORTAGE_CONFIGROOT": str(work / "cfg"), "ROOT": str(root), "SYSROOT": str(root),
            "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(work)}


def query(work: Path, profile: str) -> dict:
    env = portage_env(work, profile)
    proc = subprocess.run(
        [sys.executable, "-c", QUERY, str(REPO), str(DISTDIR), str(PROFILES / profile / "world")],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def repo_info(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """What portage sees of the repository, once per profile."""
    yield {p: query(tmp_path_factory.mktemp(p), p) for p in ("desktop", "server")}


@pytest.fixture(scope="module")
def packages(repo_info: dict[str, dict]) -> dict[str, dict]:
    return repo_info["desktop"]["packages"]


def cp_of(cpv: str) -> str:
    return cpv_getkey(cpv)


def cp_of_atom(atom: str) -> str:
    return Atom(atom).cp


def test_profile_sets_what_portage_needs_on_a_foreign_host(repo_info: dict[str, dict]) -> None:
    s = repo_info["desktop"]["settings"]
    assert repo_info["desktop"]["repo_name"] == "swarm-example"
    assert s["ARCH"] == "amd64" and s["ACCEPT_KEYWORDS"] == "amd64"
    assert s["ABI"] == s["DEFAULT_ABI"] == s["MULTILIB_ABIS"] == "amd64"
    assert s["LIBDIR_amd64"] == "lib64"
    assert s["CHOST"] == "x86_64-pc-linux-gnu"
    assert (s["ELIBC"], s["KERNEL"]) == ("glibc", "linux")


def test_every_ebuild_parses_and_is_installable(repo_info: dict[str, dict],
                                                packages: dict[str, dict]) -> None:
    assert repo_info["desktop"]["errors"] == {}
    assert packages, "portage found no ebuilds"
    for cpv, meta in packages.items():
        assert meta["EAPI"] == "8", cpv
        assert meta["KEYWORDS"] == "amd64", cpv
        assert meta["LICENSE"] == "MIT", cpv
        assert "mirror" in meta["RESTRICT"].split(), cpv
        assert meta["visible"], f"{cpv} is masked for the swarm/amd64 profile"
        assert len(meta["fetch"]) == 1 and meta["SRC_URI"] == meta["fetch"][0], cpv
        assert meta["atoms_unmatched"] == [], f"{cpv} depends on missing packages"


def test_distfiles_match_manifests(repo_info: dict[str, dict], packages: dict[str, dict]) -> None:
    manifest = repo_info["desktop"]["manifest"]
    fetched = {name for meta in packages.values() for name in meta["fetch"]}
    on_disk = {p.name for p in DISTDIR.iterdir()}
    assert fetched == set(manifest) == on_disk
    for name, check in manifest.items():
        assert check["ok"], f"{name}: {check['reason']}"
        assert {"size", "BLAKE2B", "SHA512"} <= set(check["hashes"]), name


def test_distfiles_are_reproducible_from_sources() -> None:
    proc = subprocess.run([str(EXAMPLE / "make-distfiles.sh"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_repository_covers_the_cases_the_swarm_relies_on(packages: dict[str, dict]) -> None:
    cps = {cp_of(cpv) for cpv in packages}
    assert len(cps) >= 12 and len({cp.split("/")[0] for cp in cps}) >= 3

    def all_deps(cpv: str, *keys: str) -> set[str]:
        return {cp_of_atom(a) for k in keys for a in packages[cpv]["all_" + k]}

    # A sub-slotted library with at least two slot-operator (:=) dependents.
    libgreet = packages["dev-libs/libgreet-1.0"]
    assert libgreet["SLOT"] == "0/1"
    for key in ("DEPEND", "RDEPEND"):
        users = [c for c, m in packages.items() if "dev-libs/libgreet:=" in m["all_" + key]]
        assert len(users) >= 2, key
    # Two slots of one package.
    assert {packages[c]["SLOT"] for c in packages if c.startswith("dev-lang/toylang-")} == {"1", "2"}
    # The package that must fail to compile.
    assert "app-misc/broken-1.0" in packages
    # USE-conditional dependency.
    assert "color? ( dev-libs/libcolor )" in " ".join(packages["app-misc/greeter-1.0"]["DEPEND"].split())
    # A BDEPEND-only tool and a PDEPEND.
    bdep_only = {a for c in packages for a in all_deps(c, "BDEPEND")} - {
        a for c in packages for a in all_deps(c, "DEPEND", "RDEPEND", "PDEPEND")}
    assert "dev-util/codegen" in bdep_only
    assert any(packages[c]["PDEPEND"] for c in packages)

    # A 4-deep chain and a diamond in the build/run-time graph.
    graph = {cp_of(c): all_deps(c, "DEPEND", "RDEPEND") for c in packages}

    def depth(cp: str) -> int:
        return 1 + max((depth(d) for d in graph.get(cp, ())), default=0)

    assert max(depth(cp) for cp in graph) >= 4
    assert any(len(deps) >= 2 and set.intersection(*(graph[d] for d in deps))
               for deps in graph.values())


def test_world_files_name_existing_packages(repo_info: dict[str, dict]) -> None:
    everything = {cp_of(c) for c in repo_info["desktop"]["packages"]}
    closures = {}
    for profile, info in repo_info.items():
        assert info["world"], f"{profile}/world is empty"
        for atom, best in info["world"].items():
            assert best, f"{profile}/world: {atom} matches no visible package"
            assert cp_of_atom(atom) not in ("app-misc/broken", "app-misc/broken-fan")
        closures[profile] = {cp_of(c) for c in info["closure"]}
    # The desktop world pulls in every package but the broken one; server builds a subset.
    assert closures["desktop"] == everything - {"app-misc/broken", "app-misc/broken-fan"}
    assert closures["server"] < closures["desktop"]


def test_profiles_use_flags_change_dependencies(repo_info: dict[str, dict]) -> None:
    desktop = repo_info["desktop"]["packages"]["app-misc/greeter-1.0"]
    server = repo_info["server"]["packages"]["app-misc/greeter-1.0"]
    assert "color" in desktop["USE"] and "color" not in server["USE"]
    assert "dev-libs/libcolor" in desktop["use_RDEPEND"]
    assert "dev-libs/libcolor" not in server["use_RDEPEND"]
    assert "dev-libs/libcolor" not in {cp_of(c) for c in repo_info["server"]["closure"]}
