"""Tailscale peer source: real `tailscale status --json` captures in, probe URLs out.

The captures under tests/data/tailscale/ are verbatim outputs of the real CLI (see the README
there). `tailscale` itself cannot run here, so `read_peers` is driven through a small script
standing in for it: the process boundary (exit codes, stderr, hangs) is the real one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarmnode.discovery.tailscale import (
    TailscaleError,
    TailscalePeer,
    candidate_urls,
    parse_status,
    read_peers,
)

DATA = Path(__file__).parent / "data" / "tailscale"
TAGGED = DATA / "status-1.94.2-tagged.json"  # 14 peers, tags, subnet routers, many offline
SMALL = DATA / "status-1.98.4-offline-peer.json"  # 2 peers: one online, one offline
NO_DAEMON = (
    "failed to connect to local tailscaled; it doesn't appear to be running "
    "(sudo systemctl start tailscaled ?)"
)


def fake_tailscale(tmp_path: Path, body: str, name: str = "tailscale") -> Path:
    """An executable standing in for the tailscale CLI."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def capture(path: Path, **changes: Any) -> str:
    """A real capture, with top-level fields changed (for states we have no capture of)."""
    doc = json.loads(path.read_text())
    doc.update(changes)
    return json.dumps(doc, indent=2)


def test_real_tagged_tailnet_lists_every_peer_but_self() -> None:
    status = parse_status(TAGGED.read_bytes())

    assert status.running and status.backend_state == "Running"
    assert status.self_ips == ("100.93.0.7", "fd7a:115c:a1e0::9536:9513")
    names = [p.dns_name for p in status.peers]
    assert len(names) == 14 and names == sorted(names)
    assert "unifi.moose-ph.ts.net" not in names  # Self is not a peer
    assert status.peers[0] == TailscalePeer(
        host_name="DELL-XPS-15",
        dns_name="dell-xps-15.moose-ph.ts.net",
        ips=("100.93.0.107", "fd7a:115c:a1e0::d936:5255"),
        online=False,
        os="windows",
        tags=(),
    )
    by_name = {p.dns_name.split(".")[0]: p for p in status.peers}
    assert by_name["pfsense"].tags == ("tag:router",) and by_name["pfsense"].os == "freebsd"
    assert by_name["unraid-proxy"].host_name == "proxy"  # DNS name and host name differ
    assert by_name["pixel-8"].host_name == "localhost"  # Android reports this; dns_name is the id
    assert {n for n, p in by_name.items() if p.online} == {
        "pfsense", "thinkbook14g8", "unraid-proxy", "openwrt", "vps",
    }


def test_real_capture_keeps_offline_peers_marked_offline() -> None:
    status = parse_status(SMALL.read_text())

    assert [(p.host_name, p.online, p.os) for p in status.peers] == [
        ("I2216", False, "android"),
        ("tailscale-ssh-console-user1@example.com-3fechdv20c", True, "js"),
    ]
    assert status.peers[0].ipv4 == "100.116.39.124"
    assert status.self_ips == ("100.90.229.12", "fd7a:115c:a1e0::bc39:e50d")


def test_candidate_urls_are_the_online_peers_ipv4_api() -> None:
    peers = list(parse_status(TAGGED.read_bytes()).peers)

    assert candidate_urls(peers, 8788) == [
        "http://100.93.0.2:8788",  # openwrt
        "http://100.93.0.1:8788",  # pfsense
        "http://100.93.0.106:8788",  # thinkbook14g8
        "http://100.93.0.4:8788",  # unraid-proxy
        "http://100.93.0.5:8788",  # vps
    ]


def test_ipv6_only_peers_get_bracketed_urls_and_addressless_peers_are_skipped() -> None:
    doc = json.loads(SMALL.read_text())
    console, phone = sorted(doc["Peer"].values(), key=lambda n: n["HostName"], reverse=True)
    console["TailscaleIPs"] = ["fd7a:115c:a1e0::f739:3d1d"]  # e.g. an IPv6-only tailnet node
    phone.update(TailscaleIPs=None, Online=True)  # null, as Go writes an empty slice
    doc["Peer"]["nodekey:sparse"] = {"HostName": "sparse", "TailscaleIPs": ["100.64.0.9"],
                                     "DNSName": None, "OS": None, "Tags": None, "Online": None}

    peers = list(parse_status(json.dumps(doc)).peers)

    assert [p.host_name for p in peers] == ["sparse", console["HostName"]]  # "" sorts first
    assert peers[0] == TailscalePeer("sparse", "", ("100.64.0.9",), False, "", ())
    assert peers[1].ipv4 is None
    assert candidate_urls(peers, 9000) == ["http://[fd7a:115c:a1e0::f739:3d1d]:9000"]


def test_no_peers_is_an_empty_list_not_an_error() -> None:
    assert parse_status(capture(SMALL, Peer=None)).peers == ()  # Go's nil map


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not JSON"),
        (NO_DAEMON, "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"BackendState": "Running"}', "no Peer map"),
        ('{"BackendState": "Running", "Peer": []}', "Peer is not a map"),
    ],
)
def test_malformed_output_raises_a_clear_error(raw: bytes | str, message: str) -> None:
    with pytest.raises(TailscaleError, match=message):
        parse_status(raw)


async def test_read_peers_runs_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args = tmp_path / "args"
    fake_tailscale(bin_dir, f'echo "$@" > {args}\ncat {TAGGED}')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    peers = await read_peers()  # found on PATH under its default name

    assert peers == list(parse_status(TAGGED.read_bytes()).peers)
    assert args.read_text().split() == ["status", "--json"]


async def test_missing_command_means_no_tailscale(tmp_path: Path) -> None:
    assert await read_peers(str(tmp_path / "tailscale")) is None
    assert await read_peers("swarmnode-no-such-tailscale") is None


async def test_failing_command_reports_its_stderr(tmp_path: Path) -> None:
    cmd = fake_tailscale(tmp_path, f'echo "{NO_DAEMON}" >&2\nexit 1')

    with pytest.raises(TailscaleError, match=r"failed \(exit 1\): failed to connect") as err:
        await read_peers(str(cmd))
    assert "tailscaled" in str(err.value)


@pytest.mark.parametrize("state", ["NeedsLogin", "Stopped", "Starting"])
async def test_backend_not_running_is_an_error_naming_the_state(tmp_path: Path, state: str) -> None:
    out = tmp_path / "status.json"
    out.write_text(capture(SMALL, BackendState=state))
    cmd = fake_tailscale(tmp_path, f"cat {out}")

    with pytest.raises(TailscaleError, match=f"BackendState '{state}'"):
        await read_peers(str(cmd))


async def test_hung_command_is_killed_with_its_children(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    cmd = fake_tailscale(tmp_path, f"sleep 60 &\necho $! > {child_pid}\nwait")

    started = time.monotonic()
    with pytest.raises(TailscaleError, match="did not answer within 1 s"):
        await read_peers(str(cmd), timeout_s=1.0)
    assert time.monotonic() - started < 10

    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 5
    while not _gone(pid):
        assert time.monotonic() < deadline, f"the hung command's child {pid} survived"
        await asyncio.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped
    except psutil.NoSuchProcess:
        return True
