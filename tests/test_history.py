"""Build times from a host's emerge.log: what counts as a build, and what the swarm keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulation.schedule.bench import BenchConfig, run_bench
from simulation.schedule.swarm import SwarmSettings
from simulation.schedule.synth import generate
from simulation.schedule.workload import parse_fleet, parse_workload
from swarmnode.errors import UserError
from swarmnode.portage import atoms, history
from swarmnode.state import SwarmState
from swarmnode.state.scheduling import DEFAULT_CORE_SECONDS, one_core_seconds

EXCERPT = Path(__file__).resolve().parent / "data" / "emerge.excerpt.log"


def test_a_real_log_gives_the_completed_source_builds_only() -> None:
    """The excerpt holds two chromium builds that never completed (the machine's user
    stopped them; the next emerge run starts), one that did (6 h), and a binary package's
    install (falkon, from --getbinpkg): only completed source builds count."""
    builds = history.read_log(EXCERPT)
    assert [(b.cpv, b.seconds) for b in builds] == [
        ("app-emulation/docker-machine-kvm-0.10.0", 18.0),
        ("sys-kernel/gentoo-sources-4.15.3", 80.0),
        ("dev-libs/libburn-1.4.8-r2", 19.0),
        ("net-analyzer/speedtest-cli-1.0.7", 19.0),
        ("www-client/chromium-64.0.3282.140", 21794.0),
    ]
    assert history.wall_seconds(builds)["www-client/chromium"] == 21794.0


def build(i: int, n: int, cpv: str, start: int, end: int | None, root: str = "/") -> list[str]:
    lines = [f"{start}:  >>> emerge ({i} of {n}) {cpv} to {root}"]
    if end is not None:
        lines.append(f"{end}:  ::: completed emerge ({i} of {n}) {cpv} to {root}")
    return lines


def test_the_latest_builds_of_a_package_give_its_time_whatever_the_version() -> None:
    lines = ["100: Started emerge on: Jan 01, 2024 00:00:00"]
    for k, secs in enumerate([9000, 10, 20, 30, 40, 50]):  # the oldest is out of the window
        t = 1000 * (k + 1)
        lines += build(1, 1, f"dev-libs/foo-1.{k}", t, t + secs)
    lines += build(1, 2, "dev-libs/bar-2", 9000, None)              # failed: no completion
    lines += ["9100: Started emerge on: Jan 02, 2024 00:00:00"]
    lines += build(1, 2, "dev-libs/bar-2", 9200, 9260, root="/mnt/x")  # another ROOT is fine
    lines += ["garbage", "9300:  >>> emerge (1 of 1) not-a-cpv to /",
              "9301:  ::: completed emerge (1 of 1) not-a-cpv to /"]
    walls = history.wall_seconds(history.parse(lines))
    assert walls == {"dev-libs/bar": 60.0, "dev-libs/foo": 30.0}


def test_a_build_left_open_when_the_next_emerge_run_starts_is_dropped() -> None:
    lines = [*build(1, 1, "a/b-1", 10, None), "20: Started emerge on: x",
             *build(1, 1, "c/d-1", 30, 40), "50:  ::: completed emerge (1 of 1) a/b-1 to /"]
    assert [b.cpv for b in history.parse(lines)] == ["c/d-1"]


def test_unreadable_or_empty_logs_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read emerge log"):
        history.read_log(tmp_path / "missing.log")
    empty = tmp_path / "emerge.log"
    empty.write_text("1: Started emerge on: x\n1:  *** terminating.\n")
    with pytest.raises(UserError, match="records no completed build from source"):
        history.read_log(empty)


def test_wall_times_become_one_core_seconds_through_the_schedulers_prior() -> None:
    assert history.core_seconds({"a/b": 600.0}, 4) == {"a/b": one_core_seconds(600.0, 4)}
    assert history.core_seconds({"a/b": 600.0}, 8)["a/b"] > 600.0 * 4


@pytest.mark.parametrize("key", ["dev-libs/glib-2.0", "glib", "dev libs/glib", "=a/b-1",
                                 "a/b:0", ""])
def test_history_names_are_packages_without_a_version(key: str) -> None:
    with pytest.raises(UserError, match="without a version"):
        atoms.validate_package_key(key)
    assert atoms.validate_package_key("www-client/chromium") == "www-client/chromium"


def learn(state: SwarmState, rid: str, durations: object) -> dict[str, object]:
    return state.apply({"op": "learn_history", "rid": rid, "ts": 1.0, "durations": durations})


def test_history_fills_only_what_the_swarm_has_not_learned_itself() -> None:
    state = SwarmState()
    state.durations["dev-libs/own"] = 500.0          # learned from one of its own builds
    assert learn(state, "r1", {"dev-libs/own": 9.0, "www-client/chromium": 80000.0}) == {
        "ok": True, "added": 1, "known": 1}
    assert state.estimate("dev-libs/own-1.0") == 500.0
    assert state.estimate("www-client/chromium-64.0") == 80000.0
    assert state.estimate("app-misc/new-1") == DEFAULT_CORE_SECONDS
    assert learn(state, "r2", {"www-client/chromium": 1.0})["added"] == 0
    assert state.estimate("www-client/chromium-64.0") == 80000.0
    replica = SwarmState()
    replica.durations["dev-libs/own"] = 500.0
    learn(replica, "r1", {"www-client/chromium": 80000.0, "dev-libs/own": 9.0})
    learn(replica, "r2", {"www-client/chromium": 1.0})
    assert replica.digest() == state.digest()


@pytest.mark.parametrize("durations,message", [
    ({}, "non-empty map"),
    ([], "non-empty map"),
    ({"a/b": 0}, "one-core seconds in (0"),
    ({"a/b": float("nan")}, "one-core seconds in (0"),
    ({"a/b": True}, "one-core seconds in (0"),
    ({"a/b": 2e8}, "one-core seconds in (0"),
    ({"not a key": 5.0}, "is not a 'category/package'"),
    ({"a/b/c": 5.0}, "is not a 'category/package'"),
])
def test_bad_history_is_refused_whole(durations: object, message: str) -> None:
    state = SwarmState()
    digest = state.digest()
    result = learn(state, "r", {"a/ok": 1.0, **durations} if isinstance(durations, dict)
                   and durations else durations)
    assert result["ok"] is False and message in str(result["error"])
    assert state.digest() == digest and not state.durations


def test_a_first_cycle_with_history_is_scheduled_like_one_that_learned() -> None:
    """Without estimates every package looks alike and the long chain starts on a slot's
    few cores; with the emerge log's times the first cycle is scheduled as the second is."""
    wl = parse_workload(generate("huge-cpp", 2), "huge", "0" * 64)
    fleet = parse_fleet("16,8,8s")

    def ratio(**settings: object) -> tuple[float, int]:
        r = run_bench(wl, fleet, BenchConfig(settings=SwarmSettings(**settings)))  # type: ignore[arg-type]
        return r["ratio_to_lower_bound"], r["scheduler"]["learned_estimates"]

    blind, learned_none = ratio(warmup_cycles=0)
    told, learned_all = ratio(warmup_cycles=0, history=True)
    warmed, _ = ratio(warmup_cycles=1)
    assert learned_none == 0 and learned_all == len(wl.packages)
    assert told < 0.8 * blind
    assert told <= 1.1 * warmed
