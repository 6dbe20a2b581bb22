"""The multi-process nemesis: its per-link proxy between two namespaces (fast), and one seeded
run against three real nodes building a small held-out repository (slow).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from heldout_repo import make_repository, program_atoms
from simulation.nemesis.checks import OperatorAck, final_violations
from simulation.nemesis.client import FinalState
from simulation.nemesis.netns import Namespaces, SocketFactory
from simulation.nemesis.proxy import CUT, HEALTHY, RST, Endpoint, LinkFault, Proxy, delay
from simulation.nemesis.runner import NemesisConfig, profile_toml, run_async
from simulation.nemesis.schedule import Fault, parse_kinds, plan
from simulation.sim import invariants as inv
from swarmnode.state import SwarmState

PORT = 24000  # the server's port in namespace b, and the proxy's in namespace a
WAIT_S = 5.0  # deadline for something that must happen
QUIET_S = 0.6  # how long "nothing arrives" is watched


def _need_root() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")


@dataclass
class Pair:
    """Namespaces a and b, link a→b proxied, an echo server in b; clients connect from a."""

    proxy: Proxy
    sockets: SocketFactory
    ns_a: str
    accepted: list[asyncio.StreamWriter]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = await self.sockets.connect(self.ns_a, "127.0.0.1", PORT)
        return await asyncio.open_connection(sock=sock)

    def set(self, fault: LinkFault) -> None:
        self.proxy.set("a", "b", fault)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    _need_root()
    namespaces = Namespaces("nemt")
    sockets = SocketFactory()
    proxy = Proxy(sockets)
    accepted: list[asyncio.StreamWriter] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()
        except ConnectionError:
            pass

    try:
        ns_a, ns_b = namespaces.add("a"), namespaces.add("b")
        server = await asyncio.start_server(echo, sock=await sockets.listener(ns_b, "127.0.0.1",
                                                                               PORT))
        await proxy.forward("a", "b", Endpoint(ns_a, PORT), Endpoint(ns_b, PORT))
        yield Pair(proxy, sockets, ns_a, accepted)
        server.close()
        for w in accepted:
            w.transport.abort()
    finally:
        await proxy.close()
        sockets.close()
        namespaces.close()


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), WAIT_S)


async def test_bytes_flow_both_ways_between_namespaces(pair: Pair) -> None:
    reader, writer = await pair.connect()
    payload = os.urandom(1 << 20)
    assert await roundtrip(reader, writer, payload) == payload
    writer.close()


async def test_the_namespaces_are_apart_without_the_proxy(pair: Pair) -> None:
    """Nothing listens on PORT in a except the proxy: b's server is reachable only through it."""
    await pair.proxy.close()
    with pytest.raises(ConnectionRefusedError):
        await pair.connect()


async def test_a_delay_holds_each_chunk_and_keeps_the_order(pair: Pair) -> None:
    reader, writer = await pair.connect()
    assert await roundtrip(reader, writer, b"warm") == b"warm"
    pair.set(delay(150))
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks = [f"chunk{i:02d};".encode() for i in range(20)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0)  # separate writes: separate chunks at the proxy
    got = await asyncio.wait_for(reader.readexactly(sum(map(len, chunks))), WAIT_S)
    elapsed = loop.time() - started
    assert got == b"".join(chunks)
    assert elapsed >= 0.3  # 150 ms there and 150 ms back
    pair.set(HEALTHY)
    started = loop.time()
    assert await roundtrip(reader, writer, b"fast") == b"fast"
    assert loop.time() - started < 0.15


async def test_a_blackhole_stalls_old_and_new_connections_silently(pair: Pair) -> None:
    reader, writer = await pair.connect()
    assert await roundtrip(reader, writer, b"before") == b"before"
    pair.set(CUT)
    writer.write(b"lost")
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):  # no answer, and no error either
        await asyncio.wait_for(reader.read(1), QUIET_S)
    served = len(pair.accepted)
    r2, w2 = await pair.connect()  # accepted …
    w2.write(b"hello")
    await w2.drain()
    with pytest.raises(asyncio.TimeoutError):  # … but never forwarded
        await asyncio.wait_for(r2.read(1), QUIET_S)
    assert len(pair.accepted) == served


async def test_healing_a_blackhole_resets_the_stalled_and_new_connections_work(pair: Pair) -> None:
    reader, writer = await pair.connect()
    pair.set(CUT)
    pair.set(HEALTHY)
    with pytest.raises(ConnectionResetError):  # told at once, so it reconnects
        await asyncio.wait_for(reader.read(1), WAIT_S)
    r2, w2 = await pair.connect()
    assert await roundtrip(r2, w2, b"again") == b"again"


async def test_a_reset_gives_econnreset_to_old_and_new_connections(pair: Pair) -> None:
    reader, writer = await pair.connect()
    assert await roundtrip(reader, writer, b"before") == b"before"
    pair.set(RST)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), WAIT_S)
    r2, w2 = await pair.connect()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r2.read(1), WAIT_S)
    pair.set(HEALTHY)
    r3, w3 = await pair.connect()
    assert await roundtrip(r3, w3, b"healed") == b"healed"


def test_the_plan_is_seeded_and_has_every_chosen_kind() -> None:
    kinds = parse_kinds("all")
    one = plan(7, 5, kinds, 60.0)
    assert one == plan(7, 5, kinds, 60.0)
    assert one != plan(8, 5, kinds, 60.0)
    assert {f.kind for f in one} == set(kinds)
    assert all(0 < f.at and f.at + f.seconds <= 60.0 for f in one)
    with pytest.raises(ValueError, match="cannot inject joins"):
        parse_kinds("partitions,joins")


def test_the_checks_name_each_broken_invariant() -> None:
    state = SwarmState()
    good = FinalState("n1", 7, state.digest(), state)
    clean = dict(leaders={3: {"n1"}}, replicas=[("n1", 7, state.digest())], acks=[],
                 states=[good], stores={"n1": set()}, cycle_ids=[], replicas_wanted=2,
                 now_ts=0.0, logs={"n1": "all fine\n"})
    assert final_violations(**clean) == []
    broken = dict(clean, leaders={3: {"n1", "n2"}},
                  replicas=[("n1", 5, "aa"), ("n2", 5, "bb")],
                  acks=[OperatorAck("fresh", "n2", "c1"), OperatorAck("finalize", "n2", "r1")],
                  states=[good, FinalState("n2", 7, "f" * 64, state)], cycle_ids=["c1"],
                  logs={"n2": "x\nERROR unexpected error handling GET /\n"})
    found = final_violations(**broken)
    names = sorted({name for name, _ in found})
    assert names == sorted({inv.ONE_LEADER, inv.SAME_DIGEST, inv.ACKED_KEPT, inv.CYCLES_END,
                            inv.NO_ERRORS}), found
    assert any("term 3 had leaders n1, n2" in m for _, m in found)
    assert sum(1 for name, _ in found if name == inv.ACKED_KEPT) == 2


# -- the slow run -----------------------------------------------------------------------------
PROFILE = "lab"
EXTRA_PROGRAMS = 3  # libtally, tallyho, tally1..3: five packages, a chain of four
#: a partition (blackhole), a delay, resets, a kill -9 with a restart and a SIGSTOP/SIGCONT,
#: one after the other (three nodes: never two down at once)
PLAN = (
    Fault(0.5, "partitions", 4.0, "halves", (0,)),
    Fault(5.0, "slow", 3.0, "node", (1,), 200.0),
    Fault(8.5, "flaky", 2.5),
    Fault(11.5, "crashes", 3.5, "leader"),
    Fault(16.0, "pauses", 3.5, "node", (2,)),
)
WINDOW_S = 20.0


@pytest.mark.slow
async def test_three_real_nodes_keep_every_invariant_through_the_faults(tmp_path: Path) -> None:
    _need_root()
    repo, distfiles, _conf = make_repository(tmp_path, EXTRA_PROGRAMS)
    world = json.dumps(program_atoms(EXTRA_PROGRAMS))
    toml = profile_toml(PROFILE, repo, distfiles, "base", extra=f"world = {world}")
    config = NemesisConfig(root=tmp_path / "run", profiles_toml=toml, profile=PROFILE, seed=5,
                           nodes=3, plan=PLAN, window_s=WINDOW_S, converge_s=60.0,
                           finish_s=240.0)  # a deadline: 60 s was missed on a loaded machine
    result = await run_async(config)
    print(result.report())
    assert result.ok, result.report() + "\n" + "\n".join(
        f"--- {n} ---\n{tail}" for n, tail in result.logs.items())
    done = [e.kind for e in result.history.events if e.node == "nemesis"]
    for kind in ("partition", "slow", "reset", "kill-9", "restart", "sigstop", "sigcont",
                 "heal-all"):
        assert kind in done, f"{kind} never happened: {done}"
    assert result.cycle_id and result.release_id


# -- the plan on the command line (no processes) -------------------------------------------------
from simulation import faultplan  # noqa: E402
from simulation.nemesis import cli as nemesis_cli  # noqa: E402
from simulation.nemesis.runner import NemesisResult, write_out  # noqa: E402
from simulation.sim.history import History  # noqa: E402


def test_print_plan_prints_the_seeded_plan_and_runs_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    """No root needed, nothing started: the JSON is exactly plan(seed, nodes, kinds, …)."""
    assert nemesis_cli.main(["--seed", "4", "--nodes", "3", "--faults", "all",
                             "--duration", "25", "--max-active", "1", "--print-plan"]) == 0
    printed = faultplan.from_json(json.loads(capsys.readouterr().out), 3)
    assert printed == plan(4, 3, parse_kinds("all"), 25.0, 1)


def test_a_plan_file_is_read_checked_and_printed_back(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    mine = tmp_path / "mine.json"
    mine.write_text(faultplan.dumps(PLAN))
    assert nemesis_cli.main(["--nodes", "3", "--duration", str(WINDOW_S), "--plan-file",
                             str(mine), "--print-plan"]) == 0
    assert tuple(faultplan.from_json(json.loads(capsys.readouterr().out), 3)) == PLAN
    # too few nodes for the plan's indexes, or a window that ends before a fault starts
    assert nemesis_cli.main(["--nodes", "2", "--plan-file", str(mine), "--print-plan"]) == 2
    assert "node index 2 out of range" in capsys.readouterr().err
    assert nemesis_cli.main(["--nodes", "3", "--duration", "10", "--plan-file", str(mine),
                             "--print-plan"]) == 2
    assert "starts after the 10s fault window ends" in capsys.readouterr().err


def test_a_run_directory_keeps_its_plan_for_either_tier(tmp_path: Path) -> None:
    """plan.json (and result.json's plan) read back as the run's plan: what --plan-file of
    this tier or of the simulator takes."""
    result = NemesisResult(5, True, [], History(), list(PLAN), ["n1", "n2", "n3"])
    write_out(result, tmp_path)
    assert tuple(faultplan.read(str(tmp_path / "plan.json"), 3, WINDOW_S)) == PLAN
    assert tuple(faultplan.read(str(tmp_path / "result.json"), 3, WINDOW_S)) == PLAN
