"""The CLI's contract with a user: one line per error, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

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
                    "logs", "jobs", "releases", "key"):
        assert command in proc.stdout
