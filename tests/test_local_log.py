"""The single-node log: what was acknowledged survives a crash, a torn record does not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from swarmnode.consensus.local import LocalLog
from swarmnode.node.commands import command


def register(i: int) -> dict:
    return command("register_node", node_id=f"n{i}", url=f"http://n{i}", cores=4,
                   profiles=["desktop"], sweeper=False, tree_versions={})


async def submit_all(log: LocalLog, cmds: list[dict]) -> None:
    for cmd in cmds:
        assert (await log.submit(cmd))["ok"]


def test_acknowledged_commands_survive_restart(tmp_path: Path) -> None:
    log = LocalLog(tmp_path)
    asyncio.run(submit_all(log, [register(i) for i in range(5)]))
    digest, index = log.state.digest(), log.applied_index
    log.close()
    again = LocalLog(tmp_path)
    assert (again.state.digest(), again.applied_index) == (digest, index)
    assert [n.node_id for n in again.state.nodes()] == [f"n{i}" for i in range(5)]


def test_snapshot_and_journal_replay_give_the_same_state(tmp_path: Path) -> None:
    log = LocalLog(tmp_path, snapshot_every=3)
    asyncio.run(submit_all(log, [register(i) for i in range(7)]))
    assert (tmp_path / "state.snapshot").exists()
    digest = log.state.digest()
    log.close()
    assert LocalLog(tmp_path, snapshot_every=3).state.digest() == digest


def test_torn_final_record_is_dropped_and_log_stays_usable(tmp_path: Path) -> None:
    log = LocalLog(tmp_path)
    asyncio.run(submit_all(log, [register(i) for i in range(3)]))
    digest = log.state.digest()
    log.close()
    with open(tmp_path / "state.journal", "ab") as fh:
        fh.write(b"\x00\x00\x01\x00partial")  # a crash in the middle of an append
    again = LocalLog(tmp_path)
    assert again.state.digest() == digest and again.applied_index == 3
    asyncio.run(submit_all(again, [register(9)]))
    again.close()
    assert LocalLog(tmp_path).applied_index == 4


def test_duplicate_request_id_is_applied_once(tmp_path: Path) -> None:
    log = LocalLog(tmp_path)
    cmd = register(1)
    first = asyncio.run(log.submit(cmd))
    digest = log.state.digest()
    assert asyncio.run(log.submit(dict(cmd))) == first
    assert log.state.digest() == digest


def test_a_caller_cancelled_mid_submit_leaves_memory_and_journal_in_agreement(
        tmp_path: Path) -> None:
    """A heartbeat task stopped while its command waits for fsync must not leave a command
    that the journal has and the live state lacks (a restart would then replay a different
    history than the node lived: leases that expired live would be alive after the restart)."""
    async def scenario() -> str:
        log = LocalLog(tmp_path)
        await submit_all(log, [register(1)])
        task = asyncio.create_task(log.submit(register(2)))
        await asyncio.sleep(0)  # the submit runs up to its first await (the fsync)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return log.state.digest()

    live = asyncio.run(scenario())
    assert LocalLog(tmp_path).state.digest() == live
