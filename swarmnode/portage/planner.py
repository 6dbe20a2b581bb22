"""Turn a profile's targets into build jobs with dependency edges, using portage's resolver.

Resolution runs in a child process (`swarmnode.portage._plan_child`) with the profile's
PortageEnv, on an empty ROOT, so the whole closure of the targets is computed. With a release's
PKGDIR, portage itself decides what is stale (`--usepkg --binpkg-respect-use=y
--binpkg-changed-deps=y`): what it would install as a binary is reused, what it would build from
an ebuild becomes a job. That includes slot-operator rebuilds: a binary records its `:=` deps
with the sub-slot it was built against (`dev-libs/libgreet:0/1=`), so when the library's new
version has sub-slot 0/2 portage rejects those binaries and rebuilds exactly the `:=` dependents
(verified in tests/test_planner.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import swarmnode
from swarmnode.config import ProfileConfig
from swarmnode.errors import UserError
from swarmnode.portage.atoms import validate_targets
from swarmnode.portage.env import PortageEnv


@dataclass(frozen=True)
class JobSpec:
    """One package to build; deps are what building it needs installed (DEPEND, BDEPEND,
    IDEPEND and their runtime deps), restricted to other jobs of the plan."""

    cpv: str
    slot: str
    subslot: str
    use: tuple[str, ...]
    repo: str
    deps: tuple[str, ...]  # cpvs of other jobs in the plan that must be built first
    reason: str  # why it is (re)built: "new", "USE changed: +x -y", "sub-slot rebuild: …"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["use"], d["deps"] = list(self.use), list(self.deps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobSpec":
        return cls(d["cpv"], d["slot"], d["subslot"], tuple(d["use"]), d["repo"],
                   tuple(d["deps"]), d["reason"])


@dataclass(frozen=True)
class Plan:
    """What a cycle builds. A job's builder installs its deps from a staging PKGDIR, so staging
    must hold the reused binaries plus every job built so far (deps name jobs only)."""

    jobs: tuple[JobSpec, ...]  # in a valid build order (portage's merge order)
    reused: tuple[str, ...]  # cpvs from the current release kept as they are
    tree_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": [j.to_dict() for j in self.jobs], "reused": list(self.reused),
                "tree_version": self.tree_version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return cls(tuple(JobSpec.from_dict(j) for j in d["jobs"]), tuple(d["reused"]),
                   d["tree_version"])


def profile_sets(profile: ProfileConfig) -> list[str]:
    """User package sets the profile defines (files in its portage config's sets/)."""
    if profile.portage_config is None:
        return []
    sets_dir = profile.portage_config / "sets"
    return sorted(p.name for p in sets_dir.iterdir() if p.is_file()) if sets_dir.is_dir() else []


def plan(profile: ProfileConfig, targets: list[str], workdir: Path,
         release_pkgdir: Path | None = None, timeout_s: float = 600) -> Plan:
    """Resolve targets for profile; incremental against release_pkgdir when given.

    Blocking (seconds for small trees); call it from a thread in async code. Resolution
    problems (unknown or masked packages, unsatisfiable deps) raise UserError with portage's
    explanation.
    """
    targets = validate_targets(list(targets), extra_sets=profile_sets(profile))
    if release_pkgdir is not None and not Path(release_pkgdir).is_dir():
        raise UserError(f"release package directory {release_pkgdir} does not exist")
    version = tree_version(profile)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="plan-", dir=workdir))
    try:
        pkgdir = Path(release_pkgdir) if release_pkgdir is not None else tmp / "pkgdir"
        env = PortageEnv.create(profile, tmp / "env", pkgdir)
        request = {"targets": targets, "usepkg": release_pkgdir is not None}
        result = _run_child(env, request, timeout_s, profile.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not result.get("ok"):
        detail = result.get("error") or "dependency resolution failed"
        if result.get("traceback"):
            detail += "\n" + result["traceback"].strip().splitlines()[-1]
        raise UserError(f"cannot plan {' '.join(targets)} for profile {profile.name}:\n{detail}")
    packages = result["packages"]
    jobs = tuple(JobSpec(p["cpv"], p["slot"], p["subslot"], tuple(p["use"]), p["repo"],
                         tuple(p["deps"]), p["reason"]) for p in packages if not p["binary"])
    reused = tuple(p["cpv"] for p in packages if p["binary"])
    return Plan(jobs, reused, version)


def _run_child(env: PortageEnv, request: dict[str, Any], timeout_s: float,
               profile_name: str) -> dict[str, Any]:
    environ = env.environ()
    # The child imports swarmnode too, also when it runs from a source checkout.
    environ["PYTHONPATH"] = str(Path(swarmnode.__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmnode.portage._plan_child"], env=environ,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=env.workdir, start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(request).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise UserError(f"planning profile {profile_name} timed out after {timeout_s:g}s") from None
    finally:
        try:  # metadata generation may leave helpers behind in the child's group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        return json.loads(out)
    except ValueError:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise UserError(f"planning profile {profile_name} failed (exit {proc.returncode}): "
                        + " / ".join(tail)) from None


def tree_version(profile: ProfileConfig) -> str:
    """Identifies the repositories' contents: git HEAD per repository, else a content hash."""
    return "+".join(_repo_version(repo) for repo in profile.repositories)


def _repo_version(repo: Path) -> str:
    head = _git_head(repo)
    if head is None:
        return _content_hash(repo)
    if _git_dirty(repo):
        return f"{head}-dirty-{_content_hash(repo)[:8]}"
    return head


def _git(repo: Path, *args: str) -> str | None:
    try:
        # safe.directory: a checkout owned by another user (portage) must still give its HEAD,
        # or this node would report a content hash where the others report the commit.
        proc = subprocess.run(["git", "-c", f"safe.directory={repo.resolve()}", "-C", str(repo),
                               *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _git_head(repo: Path) -> str | None:
    """HEAD when repo is the top of a git checkout with commits (not merely inside one)."""
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != repo.resolve():
        return None
    return _git(repo, "rev-parse", "HEAD")


def _git_dirty(repo: Path) -> bool:
    status = _git(repo, "status", "--porcelain", "--untracked-files=normal")
    return bool(status)


#: repo → (stat fingerprint, content hash) of the last hash: a node re-reads its tree every
#: few seconds while a pinned cycle runs, and a rsync'd Gentoo tree is ~170 000 files.
_HASHED: dict[Path, tuple[str, str]] = {}


def _tree_stats(repo: Path) -> list[tuple[str, os.stat_result | None]]:
    """Every file under ``repo`` (relative path, lstat), sorted, VCS metadata skipped.
    os.scandir with plain strings: a Path object per file made the walk several times slower."""
    found: list[tuple[str, os.stat_result | None]] = []
    stack = [("", str(repo))]
    while stack:
        rel, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            name = f"{rel}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in (".git", ".svn", ".hg"):
                        stack.append((name + "/", entry.path))
                    continue
                found.append((name, entry.stat(follow_symlinks=False)))
            except OSError:
                found.append((name, None))
    found.sort(key=lambda f: f[0].split("/"))  # component-wise, as sorting Paths did
    return found


#: A file changed this recently may change again within the same timestamp tick (the kernel
#: stamps with a coarse clock) without its stat changing: its tree is hashed, not cached.
_RACY_NS = 2_000_000_000


def _fingerprint(files: list[tuple[str, os.stat_result | None]]) -> tuple[str, int]:
    """Every file's path, size, mtime, ctime and inode: any write, rename or replacement
    changes the ctime (which, unlike the mtime rsync restores, no one can set back). Also the
    newest ctime."""
    h = hashlib.sha256()
    newest = 0
    for rel, st in files:
        if st is None:
            h.update(f"{rel}\0?\0".encode())
            continue
        newest = max(newest, st.st_ctime_ns)
        h.update(f"{rel}\0{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}\0"
                 .encode())
    return h.hexdigest(), newest


def _content_hash(repo: Path) -> str:
    """sha256 over every file's relative path and contents (ebuilds, Manifests, eclasses,
    profiles, files/ …), in sorted order; VCS metadata is skipped. Contents are read again
    only when a file's stat changed since the last hash of ``repo``."""
    files = _tree_stats(repo)
    key = repo.resolve()
    fingerprint, newest = _fingerprint(files)
    cached = _HASHED.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    h = hashlib.sha256()
    for rel, st in files:
        h.update(rel.encode() + b"\0")
        path = os.path.join(repo, rel)
        try:
            if st is not None and stat.S_ISLNK(st.st_mode):
                h.update(b"->" + os.readlink(path).encode())
            else:
                with open(path, "rb") as f:
                    h.update(f.read())
        except OSError:
            h.update(b"?")
        h.update(b"\0")
    digest = h.hexdigest()[:16]
    if newest < time.time_ns() - _RACY_NS:
        _HASHED[key] = (fingerprint, digest)
    else:
        _HASHED.pop(key, None)
    return digest
