"""Sync a profile's repositories with portage itself, and report the tree version they give.

Every node must build from the same portage tree, so `swarmnode sync` makes each node run
portage's own git sync (`emaint sync -r NAME`, the module `emerge --sync` uses) for every
repository that has a sync URI (`sync_uris` in the profile), then report
`planner.tree_version` per profile; a build cycle is pinned to one version.

Sync runs in a throw-away PortageEnv of the profile (env.py writes `sync-type = git`,
`sync-uri`, `volatile = no` for synced repositories), as a child process in its own session so
a timeout kills git too. A repository that is not cloned yet (missing or empty directory) is
cloned by its first sync. Both functions block: call them via asyncio.to_thread.

git refuses repositories owned by another user ("dubious ownership"), and portage answers that
by adding `safe.directory` to the host's *system* git config. The child's environment declares
each synced location safe through GIT_CONFIG_COUNT instead, which portage's check also sees, so
the host's git configuration is never written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from swarmnode.config import ProfileConfig
from swarmnode.errors import UserError
from swarmnode.portage.env import PortageEnv, repos_conf_name, venv_bin
from swarmnode.portage.planner import tree_version

# Reaching a remote needs these (ssh agent, proxies); a build never gets them.
_SYNC_PASS_ENV = ("SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "http_proxy", "https_proxy", "HTTPS_PROXY",
                  "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY")
_OUTPUT_LIMIT = 64_000  # characters of portage's output kept in a SyncResult (the tail)
_ERROR_LINES = 5  # lines of portage's output quoted in an error


@dataclass
class SyncResult:
    """One profile's sync. error is "" on success; otherwise it names every repository that
    failed, with the last lines portage printed for it."""

    profile: str
    tree_version: str
    synced: list[str] = field(default_factory=list)  # repositories synced without error
    output: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def sync_profile(profile: ProfileConfig, workdir: Path, timeout_s: float = 1800) -> SyncResult:
    """Sync every repository of profile that has a sync URI; never raises for a sync failure.

    workdir holds the throw-away portage configuration (removed afterwards); timeout_s bounds
    the whole sync.
    """
    deadline = time.monotonic() + timeout_s
    targets = [(repo, uri) for repo, uri in zip(profile.repositories, profile.sync_uris) if uri]
    if not targets:
        return SyncResult(profile.name, tree_version(profile),
                          output=f"profile {profile.name} has no sync_uris: nothing to sync\n")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sync-", dir=workdir))
    synced: list[str] = []
    outputs: list[str] = []
    errors: list[str] = []
    try:
        try:
            env = PortageEnv.create(profile, tmp / "env", tmp / "pkgdir")
        except (UserError, OSError) as exc:
            message = exc.message if isinstance(exc, UserError) else str(exc)
            return SyncResult(profile.name, tree_version(profile),
                              error=f"profile {profile.name}: cannot set up portage to sync: {message}")
        environ = _sync_environ(env, [repo for repo, _ in targets])
        for repo, uri in targets:
            name = repos_conf_name(repo, uri)
            code, out = _emaint_sync(env, environ, name, deadline - time.monotonic())
            outputs.append(out)
            if code == 0:
                synced.append(repos_conf_name(repo, uri))  # its real name once cloned
            else:
                why = "timed out" if code is None else f"failed (exit {code})"
                errors.append(f"syncing repository {name} ({repo}) from {uri} {why}: "
                              + _tail(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    error = f"profile {profile.name}: " + "; ".join(errors) if errors else ""
    return SyncResult(profile.name, tree_version(profile), synced,
                      "".join(outputs)[-_OUTPUT_LIMIT:], error)


def tree_versions(profiles: Iterable[ProfileConfig]) -> dict[str, str]:
    """Profile name -> the tree version its repositories have now (what a plan pins)."""
    return {p.name: tree_version(p) for p in profiles}


def git_environ(locations: Iterable[Path]) -> dict[str, str]:
    """git configuration through the environment: `safe.directory` for each location, so git
    works on repositories another user owns and portage does not add them to the host's system
    git config. Numbered after any GIT_CONFIG_COUNT entries already in the environment."""
    first = int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0)
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))} if first else {}
    paths = [str(Path(p).resolve()) for p in locations]
    for i, path in enumerate(paths, start=first):
        env[f"GIT_CONFIG_KEY_{i}"] = "safe.directory"
        env[f"GIT_CONFIG_VALUE_{i}"] = path
    env["GIT_CONFIG_COUNT"] = str(first + len(paths))
    return env


def _sync_environ(env: PortageEnv, locations: list[Path]) -> dict[str, str]:
    environ = env.environ()
    environ.update({k: os.environ[k] for k in _SYNC_PASS_ENV if k in os.environ})
    environ.update(git_environ(locations))
    environ["GIT_TERMINAL_PROMPT"] = "0"  # no tty: a credential prompt must fail, not hang
    return environ


def _emaint_sync(env: PortageEnv, environ: dict[str, str], name: str,
                 timeout_s: float) -> tuple[int | None, str]:
    """Run `emaint sync -r name`: (exit code or None on timeout, its output)."""
    if timeout_s <= 0:
        return None, f"!!! no time left to sync {name}\n"
    proc = subprocess.Popen(
        [sys.executable, str(venv_bin() / "emaint"), "sync", "-r", name], env=environ,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=env.workdir, start_new_session=True)
    code: int | None
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    finally:
        try:  # git helpers (ssh, remote-https) may outlive emaint in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code, out.decode("utf-8", "replace")


def _tail(output: str) -> str:
    """The last lines portage printed, one line; without its repos.conf name warnings."""
    lines = [ln.strip() for ln in output.splitlines()
             if ln.strip() and not ln.startswith("!!! Section '")]
    return " / ".join(lines[-_ERROR_LINES:]) or "(no output)"
