"""The CLI's contract with a user: one line per error, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import free_port


def swarmnode(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMNODE_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "swarmnode", *args], capture_output=True,
                          text=True, env=full_env, timeout=60)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unreachable_node_is_one_line_and_exit_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["fresh", "@world"], ["verify"], ["logs", "a/b-1"]):
        proc = swarmnode(*args, SWARMNODE_URL=url)
        line = one_line_error(proc)
        assert proc.returncode == 2
        assert line.startswith("swarmnode: error: cannot reach the node at " + url)


def test_usage_errors_are_one_line() -> None:
    line = one_line_error(swarmnode("finalize", "--no-such-flag"))
    assert "no such option" in line.lower()
    line = one_line_error(swarmnode("nosuchcommand"))
    assert "nosuchcommand" in line


def test_bad_config_file_is_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nlisten = 'x'\n")
    line = one_line_error(swarmnode("--config", str(bad), "status"))
    assert "node.listen must be HOST:PORT" in line
    line = one_line_error(swarmnode("serve", "--config", str(tmp_path / "missing.toml")))
    assert "does not exist" in line


def test_help_lists_every_command() -> None:
    proc = swarmnode("--help")
    assert proc.returncode == 0
    for command in ("serve", "fresh", "status", "verify", "finalize", "rollback", "reset",
                    "logs", "jobs", "releases", "key", "init", "nodes", "sync"):
        assert command in proc.stdout


def test_init_prepares_a_node_once(tmp_path) -> None:
    example = Path(__file__).resolve().parent.parent / "config"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"""
[node]
data_dir = "{tmp_path / 'data'}"
[cluster]
secret_file = "secret"
[profiles.desktop]
repositories = ["{example / 'example/repo'}"]
portage_profile = "swarm/amd64"
portage_config = "{example / 'profiles/desktop'}"
distfiles = "{example / 'example/distfiles'}"
""")
    first = swarmnode("init", "--config", str(cfg), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    secret = tmp_path / "secret"
    assert report["secret_file"] == str(secret)
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64
    assert report["public_key"].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    written = secret.read_text()
    again = json.loads(swarmnode("init", "--config", str(cfg), "--json").stdout)
    assert again["secret_file"] is None  # nothing that exists is changed
    assert again["fingerprint"] == report["fingerprint"] and secret.read_text() == written


def test_status_tells_copies_being_made_from_copies_nobody_up_has() -> None:
    from swarmnode.cli import render

    with render.console.capture() as out:
        render._copies({"under_replicated": 3, "unavailable": 1, "replica_target": 2}, "  ")
    text = out.get()
    assert "2 artifacts below 2 copies (replicating)" in text
    assert "1 artifacts have no copy on an up node (until their node returns" in text
    with render.console.capture() as out:
        render._copies({"under_replicated": 0, "unavailable": 0, "replica_target": 2}, "")
    assert out.get() == ""
