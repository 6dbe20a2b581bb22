"""Build one package on a clean build root with real emerge.

Two phases, as on a Gentoo build host: install the package's dependencies as binaries from the
swarm's staging binhost, then build the package itself into a private PKGDIR. Every process runs
in its own session so a timeout or cancellation can kill the whole tree (ebuild.sh, make, gcc …)
by process group.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from portage.versions import catpkgsplit

from swarmnode.config import ProfileConfig
from swarmnode.portage.atoms import validate_cpv
from swarmnode.portage.env import PortageEnv

KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a build's process group

_ERROR_LINE = re.compile(r"^\s*(?:\* )?ERROR: (\S+) failed \(([\w ]+) phase\)")
_DIE_LINE = re.compile(r"^\s*\*\s+(\S.*)$")
_COMPILER_ERROR = re.compile(r"\berror(\[\w+\])?: ")  # gcc/clang/rustc diagnostics
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class BuildResult:
    ok: bool
    gpkg: Path | None  # the built package (under <workdir>/out), None on failure
    log: Path
    duration_s: float
    error: str  # one line; "" on success


class _Timeout(Exception):
    pass


_GUARD_VAR = "SWARMNODE_BINARY_DEPS_ONLY"
_GUARD = f"""
# swarmnode: while installing a build's dependencies, refuse to compile any of them: every
# dependency must come from the staging binhost (a missing one means it was not built yet).
if [[ ${{{_GUARD_VAR}}} == 1 && ${{EMERGE_FROM}} == ebuild && ${{EBUILD_PHASE}} == setup ]]; then
\teerror "swarmnode: dependency ${{CATEGORY}}/${{PF}} is not in the staging binhost"
\tdie "dependency ${{CATEGORY}}/${{PF}} is not in the staging binhost (would compile it)"
fi
"""


def _add_binary_only_guard(env: PortageEnv) -> None:
    bashrc = env.etc_portage / "bashrc"
    existing = bashrc.read_text() if bashrc.is_file() else ""
    bashrc.write_text(existing + _GUARD)


async def build(profile: ProfileConfig, cpv: str, staging_pkgdir: Path, workdir: Path,
                log_path: Path, cores: int = 1, timeout_s: float = 3600,
                signing_env: dict[str, str] | None = None,
                build_id: int | None = None) -> BuildResult:
    """Build =cpv: deps from staging_pkgdir (binaries only), the result into <workdir>/out.

    With `build_id`, the binpkg carries that BUILD_ID (the swarm's, allocated with the lease)
    instead of portage's per-PKGDIR counter (see _emerge_build_id).

    The caller owns (and deletes) workdir. On cancellation the build's processes are killed
    before CancelledError propagates.
    """
    cpv = validate_cpv(cpv)
    cat, pn = catpkgsplit(cpv)[:2]
    start = time.monotonic()
    deadline = start + timeout_s
    workdir, log_path = Path(workdir), Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    env = await asyncio.to_thread(PortageEnv.create, profile, workdir, Path(staging_pkgdir),
                                  signing_env, cores)
    out.mkdir(parents=True, exist_ok=True)
    _add_binary_only_guard(env)

    def result(ok: bool, error: str = "", gpkg: Path | None = None) -> BuildResult:
        return BuildResult(ok, gpkg, log_path, round(time.monotonic() - start, 3), error)

    build_args = ("--buildpkgonly", "--nodeps", "--oneshot", "--quiet-build=n", f"={cpv}")
    build_argv, stamp = env.emerge(*build_args), {}
    if build_id is not None:
        build_argv = [sys.executable, "-m", "swarmnode.portage._emerge_build_id", *build_args]
        stamp = {"SWARMNODE_BUILD_CPV": cpv, "SWARMNODE_BUILD_ID": str(int(build_id))}
    phases = [
        # What building needs, no more: the target's DEPEND/BDEPEND/IDEPEND and their runtime
        # deps (not its own RDEPEND/PDEPEND, not the deps' BDEPENDs) -- the same set the
        # planner uses for job edges (_plan_child._build_closure).
        # Not --usepkgonly: that needs a binary of the target itself. --usepkg resolves the
        # target from its ebuild (its own binaries excluded) and deps from staging; the bashrc
        # guard fails the phase if portage would build any dependency from source.
        ("1/2 install dependencies from staging", {_GUARD_VAR: "1"},
         env.emerge("--usepkg", "--onlydeps", "--onlydeps-with-rdeps=n",
                    "--onlydeps-with-ideps=y", "--with-bdeps=n", "--oneshot",
                    f"--usepkg-exclude={cat}/{pn}", "--quiet-build=n", f"={cpv}")),
        ("2/2 build", {"PKGDIR": str(out), **stamp}, build_argv),
    ]
    for title, extra_env, argv in phases:
        offset = log_path.stat().st_size if log_path.exists() else 0
        try:
            rc = await _run(argv, {**env.environ(), **extra_env}, log_path, title, deadline)
        except _Timeout:
            _append(log_path, f"=== swarmnode: timed out after {timeout_s:g}s, killed ===\n")
            return result(False, f"timed out after {timeout_s:g}s")
        if rc != 0:
            return result(False, _summarise(log_path, offset, title, rc))
    gpkgs = sorted(out.rglob("*.gpkg.tar"))
    if len(gpkgs) != 1:
        return result(False, f"expected one gpkg for {cpv} in {out}, found {len(gpkgs)}")
    return result(True, gpkg=gpkgs[0])


def _append(log_path: Path, text: str) -> None:
    with open(log_path, "a") as f:
        f.write(text)


async def _run(argv: list[str], environ: dict[str, str], log_path: Path, title: str,
               deadline: float) -> int:
    """Run argv in a new session, output appended to log_path; kill its group on timeout."""
    _append(log_path, f"=== swarmnode: phase {title}: {' '.join(argv[1:])} ===\n")
    with open(log_path, "ab") as log:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=environ, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            _append(log_path, f"=== swarmnode: cannot run {argv[1]}: {exc} ===\n")
            return 127
    # The process group id, so a hung build can be found (and checked for leftovers).
    _append(log_path, f"=== swarmnode: pgid {proc.pid} ===\n")
    try:
        return await asyncio.wait_for(proc.wait(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        await _kill_group(proc)
        raise _Timeout() from None
    except asyncio.CancelledError:
        await asyncio.shield(_kill_group(proc))
        raise
    finally:
        if proc.returncode is not None:
            await _reap_group(proc.pid)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the build's process group, SIGKILL it after a grace period."""
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
    except asyncio.TimeoutError:
        pass
    _signal_group(pgid, signal.SIGKILL)
    await proc.wait()
    await _reap_group(pgid)


async def _reap_group(pgid: int) -> None:
    """Kill what is left of a finished build's group and wait until it is gone."""
    loop_deadline = time.monotonic() + KILL_GRACE_S
    while _group_alive(pgid) and time.monotonic() < loop_deadline:
        _signal_group(pgid, signal.SIGKILL)
        await asyncio.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: they hold nothing
    but a pid, and are reaped by init whenever it gets to it (lazily in some containers)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc: trust killpg
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def leftover_build_processes(builds_root: Path) -> list[int]:
    """pids of build processes running under builds_root, found by their environment.

    Builds run in sessions of their own (so a timeout can kill the whole group), which also
    means they outlive a node killed with SIGKILL. A restarted node kills these before it wipes
    its build roots; each process's PORTAGE_CONFIGROOT says which build root it belongs to.
    """
    marker = f"PORTAGE_CONFIGROOT={Path(builds_root).resolve()}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(marker) for var in environ.split(b"\0")):
            found.append(int(entry))
    return found


def kill_leftover_builds(builds_root: Path, wait_s: float = 30.0) -> int:
    """SIGKILL every process of a build under builds_root and wait until they are gone (so
    nothing writes into the build roots any more); returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + wait_s
    while pids := [p for p in leftover_build_processes(builds_root) if not _zombie(p)]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)  # a SIGKILLed process takes a moment to exit; poll until it has
    return len(killed)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


def _summarise(log_path: Path, offset: int, title: str, rc: int) -> str:
    """One line saying why a phase failed, from that phase's part of the log."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", "replace").splitlines()
    for i, line in enumerate(lines):
        m = _ERROR_LINE.match(line)
        if m:
            reason = f"{m.group(1)} failed ({m.group(2)} phase)"
            # The compiler's first error says more than ebuild's "emake failed".
            detail = next((_ANSI.sub("", ln).strip() for ln in lines[:i]
                           if _COMPILER_ERROR.search(ln) and not ln.lstrip().startswith("*")),
                          None)
            if detail is None:
                detail = next((d.group(1).strip() for d in map(_DIE_LINE.match, lines[i + 1:i + 4])
                               if d and not d.group(1).startswith(("Call stack", "ebuild.sh"))),
                              None)
            return f"{reason}: {detail[:200]}" if detail else reason
    for line in lines:
        if "there are no binary packages to satisfy" in line or "there are no ebuilds" in line:
            return f"phase {title}: {line.strip()}"
    problems = [ln.strip("! ").strip() for ln in lines if ln.startswith("!!!") and ln.strip("! ")]
    if problems:
        return f"phase {title}: {problems[0]}"
    return f"phase {title}: emerge exited with status {rc}"
