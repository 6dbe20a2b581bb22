"""`python -m simulation bench`: the duration model, the bound, the reference policy, the CLI,
and the placement rules of the real scheduler that the bench measures."""

from __future__ import annotations

import json
import math
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest

from simulation.__main__ import main
from simulation.schedule.bench import BenchConfig, run_bench
from simulation.schedule.bounds import big_node_bound, gate_bound, lower_bound
from simulation.schedule.model import SerialParams, build_model, duration, serial_fraction
from simulation.schedule.reference import emerge_order, simulate_reference
from simulation.schedule.swarm import SwarmSettings
from simulation.schedule.matrix import parse_seeds
from simulation.schedule.synth import generate, variants
from simulation.schedule.synth import main as synth_main
from simulation.schedule.timeline import Build, finishing_chain, makespan
from simulation.schedule.workload import (BenchInputError, Package, load_workload,
                                          parse_fleet, parse_workload)
from swarmnode.state import SwarmState
from swarmnode.state.scheduling import Candidate, Capacity, one_core_seconds, place, wall_time

# A copy lives in tests/data so a clone checked out anywhere (CI) has it.
DESKTOP = Path(__file__).resolve().parent / "data" / "workloads" / "desktop.json"


def workload(pkgs: list[tuple[str, float, list[str]]], kib: float = 500.0) -> Any:
    doc = {"packages": [{"name": n, "duration_s": d, "deps": deps, "installed_kib": kib}
                        for n, d, deps in pkgs]}
    return parse_workload(doc, "tiny", "0" * 64)


def write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------------------- the model

def test_duration_is_the_measurement_at_four_cores_and_shrinks_with_more() -> None:
    for serial in (0.05, 0.5, 0.9):
        assert duration(100.0, serial, 4) == pytest.approx(100.0)
        times = [duration(100.0, serial, c) for c in range(1, 33)]
        assert all(a > b for a, b in zip(times, times[1:]))
        assert times[-1] > serial * 100.0  # never below the serial part


def test_serial_fraction_small_packages_serial_big_ones_parallel() -> None:
    params = SerialParams()
    tiny = Package("tiny", 14.0, (), 73.0, 0)
    median = Package("median", 41.0, (), 604.0, 1)
    huge = Package("huge", 27727.0, (), 356778.0, 2)
    fractions = [serial_fraction(p, params) for p in (tiny, median, huge)]
    assert fractions[0] == pytest.approx(params.serial_max)
    assert 0.75 < fractions[1] < params.serial_max
    assert fractions[2] == pytest.approx(params.serial_min)
    assert fractions[0] > fractions[1] > fractions[2]


def test_without_installed_sizes_the_serial_fraction_follows_the_duration() -> None:
    w = parse_workload({"packages": [{"name": "short", "duration_s": 20, "deps": []},
                                     {"name": "long", "duration_s": 7200, "deps": ["short"],
                                      "installed_kib": None}]}, "w", "")
    assert [p.installed_kib for p in w.packages] == [None, None]
    model = build_model(w)
    assert model.serial == {"short": pytest.approx(0.9), "long": pytest.approx(0.05)}


def test_every_serial_fraction_of_desktop_is_within_bounds() -> None:
    model = build_model(load_workload(DESKTOP))
    assert all(0.05 - 1e-9 <= s <= 0.9 + 1e-9 for s in model.serial.values())


def test_override_file_sets_parameters_and_single_packages() -> None:
    w = workload([("a", 100.0, []), ("b", 100.0, [])])
    model = build_model(w, {"default": {"serial_max": 0.6, "serial_min": 0.6},
                            "packages": {"b": 0.25, "not-in-this-workload": 0.5}})
    assert model.serial == {"a": pytest.approx(0.6), "b": 0.25}
    assert model.overrides == {"b": 0.25}
    assert model.duration("b", 8) == pytest.approx(100.0 * (0.25 + 0.75 * 4 / 8))
    for bad in ({"default": {"serial_max": "x"}}, {"default": {"nope": 1}},
                {"packages": {"a": 1.5}}, {"other": {}},
                {"default": {"serial_min": 0.9, "serial_max": 0.1}}):
        with pytest.raises(BenchInputError):
            build_model(w, bad)


# ---------------------------------------------------------------------------- bound, reference

def test_lower_bound_on_a_hand_checked_workload() -> None:
    w = workload([("a", 40.0, []), ("b", 80.0, ["a"]), ("c", 20.0, [])])
    model = build_model(w, {"packages": {"a": 0.5, "b": 0.5, "c": 0.5}})
    bound = lower_bound(w, model, parse_fleet("8,4"))
    # at 8 cores every package takes 0.75 × d4: the chain a→b is 30 + 60 s
    assert bound.critical_path_s == pytest.approx(90.0)
    assert bound.critical_path == ("a", "b")
    # cheapest on one core: 2.5 × d4 each, (100 + 200 + 50) core-s over 12 cores
    assert bound.work_s == pytest.approx(350.0 / 12)
    assert bound.value == pytest.approx(90.0)


def test_gate_bound_counts_the_work_waiting_behind_one_package() -> None:
    # six packages wait for a; c waits for b1 (and so for a too)
    w = workload([("a", 40.0, []), *((f"b{i}", 80.0, ["a"]) for i in range(1, 7)),
                  ("c", 20.0, ["b1"])])
    model = build_model(w, {"default": {"serial_min": 0.5, "serial_max": 0.5}})
    fleet = parse_fleet("8,4")
    bound = lower_bound(w, model, fleet)
    assert bound.value == pytest.approx(max(30 + 60 + 15, (100 + 6 * 200 + 50) / 12))
    gate = gate_bound(w, model, fleet)
    # a ends at 30 s at the earliest; b1..b6 and c (1 250 core-s) share 12 cores after it
    assert (gate.gate, gate.gate_done_s) == ("a", pytest.approx(30.0))
    assert gate.work_behind_core_s == pytest.approx(1250.0)
    assert gate.value_s == pytest.approx(30 + 1250 / 12) and gate.value_s > bound.value


def test_big_node_bound_counts_two_builds_that_each_need_the_one_largest_node() -> None:
    # x and y (perfectly parallel) take 200 s on the 8-core node, 400 s on the 4-core one
    w = workload([("x", 400.0, []), ("y", 400.0, []), ("z", 10.0, [])])
    model = build_model(w, {"packages": {"x": 0.0, "y": 0.0, "z": 0.9}})
    fleet = parse_fleet("8,4")
    bound = lower_bound(w, model, fleet)
    assert bound.value == pytest.approx((1600 + 1600 + 13) / 12)   # the work term
    big = big_node_bound(w, model, fleet)
    # on the 8-core node one after the other (400 s), or one on 4 cores (400 s)
    assert big.builds == ("x", "y") and big.small_cores == 4
    assert big.value_s == pytest.approx(400.0)
    result = run_bench(w, fleet, BenchConfig(seed=1))
    assert result["tighter_bound"]["binding"] == "big_node"
    assert result["tighter_bound"]["value_s"] == pytest.approx(400.0, abs=1e-3)
    assert result["makespan_s"] >= 400.0 - 1e-6          # no schedule beats it
    assert result["reference_policy_makespan_s"] >= 400.0 - 1e-6
    # two nodes of the largest size: either can take each build, nothing to count
    assert big_node_bound(w, model, parse_fleet("8,8")).builds == ()
    # one behind the other: a chain, which the critical path already counts
    chain = workload([("x", 400.0, []), ("y", 400.0, ["x"])])
    model = build_model(chain, {"packages": {"x": 0.0, "y": 0.0}})
    assert big_node_bound(chain, model, fleet).builds == ()


def test_big_node_bound_on_desktop_is_chromium_and_rustc() -> None:
    w = load_workload(DESKTOP)
    model = build_model(w)
    fleet = parse_fleet("16,8,14,24,8s")
    big = big_node_bound(w, model, fleet)
    assert set(big.builds) == {"chromium", "rustc"} and big.small_cores == 16
    assert big.value_s > 1.1 * lower_bound(w, model, fleet).value


def test_reference_policy_by_hand() -> None:
    # file order b, a, c, d: emerge lists b's dependency a first
    w = workload([("b", 80.0, ["a"]), ("a", 40.0, []), ("c", 20.0, []), ("d", 10.0, [])])
    assert emerge_order(w) == ["a", "b", "c", "d"]
    model = build_model(w)
    builds = {b.name: b for b in simulate_reference(w, model, parse_fleet("8,4"))}
    # slots: n1 ×2, n2 ×1, 4 cores each (so every build takes exactly d4)
    assert {n: (b.node_id, b.start, b.end) for n, b in builds.items()} == {
        "a": ("n01", 0.0, 40.0), "c": ("n01", 0.0, 20.0), "d": ("n02", 0.0, 10.0),
        "b": ("n01", 40.0, 120.0)}
    assert all(b.cores == 4 for b in builds.values())
    assert makespan(list(builds.values())) == 120.0


def test_reference_slots_on_a_small_node_use_its_cores() -> None:
    w = workload([("a", 40.0, [])])
    model = build_model(w, {"packages": {"a": 0.5}})
    (build,) = simulate_reference(w, model, parse_fleet("2"))
    assert build.cores == 2 and build.end == pytest.approx(model.duration("a", 2))


# ---------------------------------------------------------------------------- a whole run

def _figures(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "wall_time_s"}


def test_a_run_is_physical_and_deterministic() -> None:
    w = parse_workload(generate("chain-fanout", 3), "chain-fanout", "1" * 64)
    fleet = parse_fleet("16,8,14,24,8s")
    result = run_bench(w, fleet, BenchConfig(seed=5))
    for key in ("makespan_s", "lower_bound_s", "reference_policy_makespan_s",
                "ratio_to_lower_bound", "speedup_vs_reference", "nodes", "fleet", "workload",
                "seed", "model", "wall_time_s"):
        assert key in result
    assert result["makespan_s"] >= result["lower_bound_s"]
    assert result["reference_policy_makespan_s"] >= result["lower_bound_s"]
    # the tighter bound is still a bound: no schedule, ours or the reference, beats it
    tighter = result["tighter_bound"]["value_s"]
    assert result["lower_bound_s"] <= tighter <= result["makespan_s"]
    assert tighter <= result["reference_policy_makespan_s"]
    assert sum(n["dispatches"] for n in result["nodes"]) == len(w.packages)
    assert all(0.0 < n["utilisation"] <= 1.0 for n in result["nodes"])
    builds = {b["name"]: b for b in result["builds"]}
    assert set(builds) == {p.name for p in w.packages}          # each package built once
    for p in w.packages:                                         # after its dependencies
        assert all(builds[d]["end_s"] <= builds[p.name]["start_s"] + 1e-6 for d in p.deps)
    cores = {n.node_id: n.cores for n in fleet}
    for node_id, limit in cores.items():                        # never more cores than exist
        edges = sorted((t, sign * b["cores"]) for b in result["builds"] if b["node"] == node_id
                       for t, sign in ((b["start_s"], 1), (b["end_s"], -1)))
        load = 0
        for _, delta in sorted(edges, key=lambda e: (e[0], e[1])):
            load += delta
            assert load <= limit
    again = run_bench(w, fleet, BenchConfig(seed=5))
    assert _figures(again) == _figures(result)


def test_finishing_chain_walks_back_through_the_dependency_that_ended_last() -> None:
    # c needs a and b; b ended last, so c waited for b, and c then sat ready for 20 s
    builds = [Build("a", "n1", 4, 0.0, 10.0), Build("b", "n2", 8, 5.0, 30.0),
              Build("c", "n1", 4, 50.0, 60.0), Build("d", "n2", 1, 30.0, 40.0)]
    chain = finishing_chain(builds, {"a": (), "b": (), "c": ("a", "b"), "d": ("b",)})
    assert [(c.name, c.ready, c.wait) for c in chain] == [("b", 0.0, 5.0), ("c", 30.0, 20.0)]
    assert finishing_chain([], {}) == []


def test_result_names_the_chain_that_ended_the_run_and_its_waits() -> None:
    w = parse_workload(generate("chain-fanout", 3), "chain-fanout", "1" * 64)
    result = run_bench(w, parse_fleet("16,8,14,24,8s"), BenchConfig(seed=5))
    chain = result["finishing_chain"]["builds"]
    deps = {p.name: p.deps for p in w.packages}
    assert chain[-1]["end_s"] == result["makespan_s"]
    assert not deps[chain[0]["name"]]                            # starts at a root
    for prev, link in zip(chain, chain[1:]):                     # each link waited for prev
        assert prev["name"] in deps[link["name"]] and link["ready_s"] == prev["end_s"]
    assert all(link["waited_s"] >= 0 for link in chain)
    assert result["finishing_chain"]["waited_s"] == pytest.approx(
        sum(link["waited_s"] for link in chain), abs=0.01)


def test_subset_keeps_the_closure_of_a_share_of_the_top_level_packages() -> None:
    source = json.loads(DESKTOP.read_text())["packages"]
    whole = generate("subset", 1, source, share=1.0)["packages"]
    assert [p["name"] for p in whole] == [p["name"] for p in source]   # all of it, in order
    assert any(a["duration_s"] != b["duration_s"] for a, b in zip(whole, source))
    names = {p["name"] for p in source}
    for share in (0.4, 0.7):
        kept = generate("subset", 1, source, share=share)["packages"]
        have = {p["name"] for p in kept}
        assert len(kept) < len(source)
        assert all(d in have for p in kept for d in p["deps"] if d in names)  # closed
    assert generate("subset", 2, source, 0.7) == generate("subset", 2, source, 0.7)


def test_variants_are_the_jitter_and_closure_sets_drawn_from_one_workload(
        tmp_path: Path) -> None:
    source = json.loads(DESKTOP.read_text())["packages"]
    docs = variants(source, 2)
    assert sorted(docs) == ["closure70-1", "closure70-2", "jitter-1", "jitter-2",
                            "subset-1", "subset-2"]
    assert docs["jitter-2"] == generate("subset", 2, source, 1.0)
    assert len(docs["subset-1"]["packages"]) < len(docs["closure70-1"]["packages"]) \
        < len(source) == len(docs["jitter-1"]["packages"])
    out = tmp_path / "v"
    assert synth_main(["variants", "--from", str(DESKTOP), "--count", "1",
                       "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["closure70-1.json", "jitter-1.json",
                                                    "subset-1.json"]
    assert json.loads((out / "jitter-1.json").read_text()) == variants(source, 1)["jitter-1"]


@pytest.mark.parametrize("text,seeds", [("1", [1]), ("0", [0]), ("3,1,3", [3, 1]),
                                        ("1-3,7", [1, 2, 3, 7]), ("2-3", [2, 3])])
def test_seeds_are_one_a_list_or_a_range(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "x", "-1", "3-1", "1-", "1,,2", "1-99999", "1.5"])
def test_bad_seeds_are_refused_with_what_is_expected(text: str) -> None:
    with pytest.raises(BenchInputError, match="--seed"):
        parse_seeds(text)


def test_several_workloads_and_seeds_run_side_by_side_with_one_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each run of the matrix is exactly the single run of its workload and seed (two runs
    in child processes at once), two files named alike keep apart, and the summary's worst
    is the worst row."""
    folder, other = tmp_path / "set", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    write(folder, "w.json", generate("huge-cpp", 2))
    write(folder, "fan.json", generate("chain-fanout", 1))
    write(other, "w.json", generate("huge-cpp", 3))
    out = tmp_path / "out"
    assert main(["bench", "--workload", str(folder), "--workload", str(other / "w.json"),
                 "--fleet", "8,8s", "--seed", "1-2", "--jobs", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert [(r["workload"], r["seed"]) for r in rows] == [
        ("fan", 1), ("fan", 2), ("w", 1), ("w", 2), ("w-2", 1), ("w-2", 2)]
    assert summary["runs"] == 6 and summary["failed_runs"] == 0
    for r in rows:
        result = json.loads((Path(r["out"]) / "result.json").read_text())
        assert (Path(r["out"]) / "timeline.svg").is_file()
        assert result["seed"] == r["seed"] and result["workload"]["path"] == r["path"]
        assert r["ratio_to_lower_bound"] == result["ratio_to_lower_bound"]
    single = tmp_path / "single"
    assert main(["bench", "--workload", str(other / "w.json"), "--fleet", "8,8s",
                 "--seed", "2", "--out", str(single)]) == 0
    alone = json.loads((single / "result.json").read_text())
    assert alone["makespan_s"] == rows[5]["makespan_s"]
    assert alone["scheduler"]["state_digest"] == json.loads(
        (Path(rows[5]["out"]) / "result.json").read_text())["scheduler"]["state_digest"]
    worst = max(rows, key=lambda r: r["ratio_to_lower_bound"])
    assert summary["worst"] == {"workload": worst["workload"], "seed": worst["seed"],
                                "ratio_to_lower_bound": worst["ratio_to_lower_bound"]}
    assert summary["over_ratio_target"] == sum(r["ratio_to_lower_bound"] > 1.3 for r in rows)
    for r in rows:  # the ratio to a bound no schedule beats: at least 1, at most the issue's
        assert 1.0 <= r["tighter_bound_ratio"] <= r["ratio_to_lower_bound"]
    assert summary["worst_tighter_ratio"] == max(r["tighter_bound_ratio"] for r in rows)
    printed = capsys.readouterr().out
    assert "6 runs on 8,8s" in printed and f"worst {worst['ratio_to_lower_bound']:.3f}" in printed


def test_a_bad_workload_among_several_is_reported_and_the_rest_still_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "good.json", generate("huge-cpp", 2))
    write(tmp_path, "bad.json", {"packages": [{"name": "a", "duration_s": -1, "deps": []}]})
    out = tmp_path / "out"
    assert main(["bench", "--workload", str(tmp_path), "--fleet", "8,8s", "--jobs", "1",
                 "--out", str(out)]) == 2
    rows = {r["workload"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert "'duration_s' must be a number" in rows["bad"]["error"]
    assert rows["good"]["makespan_s"] > 0
    captured = capsys.readouterr()
    assert "error: " in captured.out and "Traceback" not in captured.out + captured.err
    assert captured.err.startswith("bench: 1 of 2 runs could not run") \
        and captured.err.count("\n") == 1


def test_an_empty_workload_directory_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--workload", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds no .json file" in err and err.count("\n") == 1


def test_cli_writes_result_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "w.json", generate("huge-cpp", 2))
    out = tmp_path / "out"
    assert main(["bench", "--workload", str(path), "--fleet", "8,8s", "--out", str(out),
                 "--seed", "3"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["fleet"]["spec"] == "8,8s" and result["seed"] == 3
    assert [n["sweeper"] for n in result["fleet"]["nodes"]] == [False, True]
    assert result["makespan_s"] >= result["lower_bound_s"]
    svg = xml.dom.minidom.parse(str(out / "timeline.svg"))
    assert len(svg.getElementsByTagName("rect")) > 2 * len(result["builds"])
    printed = capsys.readouterr().out
    assert "lower bound" in printed and "finishing chain" in printed


@pytest.mark.parametrize("fleet", ["16,x", "", "0", "8,,8", "4t", "-4"])
def test_cli_refuses_a_bad_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 fleet: str) -> None:
    path = write(tmp_path, "w.json", {"packages": [{"name": "a", "duration_s": 1, "deps": [],
                                                    "installed_kib": 1}]})
    assert main(["bench", "--workload", str(path), "--fleet", fleet,
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: ") and "fleet" in err and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("doc,expect", [
    (None, "cannot read workload"),
    ("{not json", "not valid JSON"),
    ({"packages": [{"name": "a", "duration_s": -1, "deps": [], "installed_kib": 1}]},
     "'duration_s' must be a number"),
    ({"packages": [{"name": "a", "duration_s": 1, "deps": [], "installed_kib": 1},
                   {"name": "a", "duration_s": 1, "deps": [], "installed_kib": 1}]},
     "listed twice"),
    ({"packages": [{"name": "dev-libs/glib/x", "duration_s": 1, "deps": []}]}, "bad 'name'"),
    ({"packages": [{"name": "a b", "duration_s": 1, "deps": []}]}, "bad 'name'"),
    ({"packages": [{"name": "dev-libs/glib", "duration_s": 1, "deps": []},
                   {"name": "dev-libs.glib", "duration_s": 1, "deps": []}]},
     "would be that of 'dev-libs/glib'"),
])
def test_cli_refuses_bad_workloads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   doc: Any, expect: str) -> None:
    path = tmp_path / "w.json"
    if doc is not None:
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    assert main(["bench", "--workload", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_dependency_cycle_loses_one_dep_and_the_bench_says_which(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"packages": [{"name": n, "duration_s": 60, "deps": d, "installed_kib": 1}
                        for n, d in (("a", ["b"]), ("b", ["c"]), ("c", ["a", "zz"]),
                                     ("x", ["a", "x"]))]}
    w = parse_workload(doc, "w", "")
    assert w.cycle_deps_dropped == (("c", "a"), ("x", "x"))  # first walk from a, file order
    assert {p.name: p.deps for p in w.packages} == {"a": ("b",), "b": ("c",), "c": (),
                                                   "x": ("a",)}
    path = tmp_path / "w.json"
    path.write_text(json.dumps(doc))
    assert main(["bench", "--workload", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "ignored 2 dep(s) to break them: c → a, x → x" in capsys.readouterr().out
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["workload"]["cycle_deps_dropped"] == [["c", "a"], ["x", "x"]]
    ends = {b["name"]: (b["start_s"], b["end_s"]) for b in result["builds"]}
    assert ends["c"][1] <= ends["b"][0] and ends["b"][1] <= ends["a"][0] <= ends["a"][1] \
        <= ends["x"][0]  # what is left of the cycle is still a chain


def test_gentoo_style_names_with_a_category_or_a_version_are_built_under_their_names(
        tmp_path: Path) -> None:
    """A workload written as emerge prints it (``category/name``, even with the version) runs
    like one of bare names, and the result speaks of the names as the file gives them."""
    doc = {"packages": [{"name": "dev-libs/glib", "duration_s": 50, "deps": []},
                        {"name": "x11-libs/gtk+-3.24.41", "duration_s": 120,
                         "deps": ["dev-libs/glib"]},
                        {"name": "gimp", "duration_s": 30, "deps": ["x11-libs/gtk+-3.24.41"]}]}
    path = write(tmp_path, "w.json", doc)
    assert main(["bench", "--workload", str(path), "--out", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    ends = {b["name"]: (b["start_s"], b["end_s"]) for b in result["builds"]}
    assert set(ends) == {"dev-libs/glib", "x11-libs/gtk+-3.24.41", "gimp"}
    assert ends["dev-libs/glib"][1] <= ends["x11-libs/gtk+-3.24.41"][0]
    assert ends["x11-libs/gtk+-3.24.41"][1] <= ends["gimp"][0]


def test_deps_outside_the_workload_are_ignored() -> None:
    w = workload([("a", 1.0, ["virtual-libc"]), ("b", 1.0, ["a", "a"])])
    assert w.by_name()["a"].deps == () and w.by_name()["b"].deps == ("a",)
    assert w.ignored_deps == 1


# ---------------------------------------------------------------------------- the scheduler

class Swarm:
    """The real state machine, driven the way the bench drives it."""

    def __init__(self) -> None:
        self.s = SwarmState()
        self.n = 0
        self.ts = 100.0

    def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        self.n += 1
        res = self.s.apply({"op": op, "rid": f"r{self.n}", "ts": self.ts, **fields})
        assert res["ok"], res
        return res

    def node(self, node_id: str, cores: int, slots: int = 0) -> None:
        self.ok("register_node", node_id=node_id, url="http://x", cores=cores,
                profiles=["p"], sweeper=False, tree_versions={}, slots=slots)

    def done(self, claim: dict[str, Any], wall: float) -> None:
        job, lease = claim["job"], claim["lease"]
        self.ok("complete", node_id=lease["node_id"], fence=lease["fence"],
                cycle_id=job["cycle_id"], cpv=job["cpv"], success=True, duration_s=wall,
                log_sha256="l", artifact={"sha256": "s" + job["cpv"] + str(self.n), "size": 1})

    def claim(self, node_id: str, free: int) -> dict[str, Any]:
        return self.ok("claim", node_id=node_id, free_cores=free, lease_ttl_s=1e6)


def test_learning_from_a_parallel_build_does_not_count_its_serial_part_per_core() -> None:
    for est in (30.0, 500.0, 50_000.0):
        for cores in (1, 3, 24):
            assert one_core_seconds(wall_time(est, cores), cores) == pytest.approx(est)
    w = Swarm()
    w.node("n1", cores=8)
    for n, cores in ((1, 1), (2, 8)):
        w.ok("start_cycle", cycle_id=f"c{n}", profile="p", tree_version="", targets=[],
             jobs=[{"cpv": f"a/big-{n}", "deps": []}], reused=[])
        claim = w.claim("n1", cores)
        assert claim["lease"]["cores"] == cores
        w.done(claim, wall_time(8000.0, cores))   # the same build, on 1 then on 8 cores
    # wall × cores would have learned 8 × 1249 s for the second and drifted to ~9000
    assert w.s.estimate("a/big-3") == pytest.approx(8000.0)


def test_a_long_critical_build_waits_for_the_big_node_instead_of_starting_starved() -> None:
    w = Swarm()
    w.node("big", cores=16)
    w.node("small", cores=2)
    w.ok("start_cycle", cycle_id="c0", profile="p", tree_version="", targets=[],
         jobs=[{"cpv": "a/huge-1", "deps": []}], reused=[])
    w.done(w.claim("big", 1), 40_000.0)          # one core, 40 000 s: a huge build
    w.ok("start_cycle", cycle_id="c1", profile="p", tree_version="", targets=[],
         jobs=[{"cpv": "a/huge-2", "deps": []}, {"cpv": "a/tiny-1", "deps": []}], reused=[])
    # the small node asks first: it must not take the huge build onto 2 cores
    first = w.claim("small", 2)
    assert first["job"]["cpv"] == "a/tiny-1"
    second = w.claim("big", 16)
    assert second["job"]["cpv"] == "a/huge-2" and second["lease"]["cores"] == 16


def _capacity(**nodes: tuple[int, list[tuple[float, float, int]]]) -> dict[str, Capacity]:
    out = {}
    for node_id, (cores, busy) in nodes.items():
        out[node_id] = cap = Capacity(cores, 0)
        for start, end, used in busy:
            cap.book(start, end, used)
    return out


def test_a_node_keeps_cores_free_for_a_critical_build_and_only_backfills_short_ones() -> None:
    huge = Candidate("a/huge-1", est=80_000.0, want=8, nodes=("n1",))
    mid = Candidate("a/mid-1", est=3_000.0, want=2, nodes=("n1",))
    short = Candidate("a/x-1", est=50.0, want=1, nodes=("n1",))
    # 6 of 8 cores busy until t=100: the huge build waits for all 8 rather than start on 2
    busy = {"n1": (8, [(0.0, 100.0, 6)])}
    got = place([huge, mid, short], "n1", _capacity(**busy), now=0.0)
    assert got.index == 2 and got.cores == 1      # only what ends before t=100
    got = place([huge, mid], "n1", _capacity(**busy), now=0.0)
    assert got.index is None and "keeping its cores free for a/huge-1" in got.reason


def test_a_big_build_is_left_to_the_node_that_finishes_it_first() -> None:
    huge = Candidate("a/huge-1", est=80_000.0, want=16, nodes=("big", "small"))
    short = Candidate("a/x-1", est=50.0, want=1, nodes=("big", "small"))
    capacity = _capacity(big=(16, []), small=(4, []))
    got = place([huge, short], "small", capacity, now=0.0)
    assert got.index == 1                         # the small node takes the short one
    got = place([huge, short], "big", _capacity(big=(16, []), small=(4, [])), now=0.0)
    assert (got.index, got.cores) == (0, 16)


def test_cores_held_for_a_build_not_ready_yet_stay_usable_for_short_builds() -> None:
    coming = Candidate("a/chromium-1", est=80_000.0, want=8, nodes=("n1",),
                       release=50.0)
    rival = Candidate("a/rustc-1", est=80_000.0, want=8, nodes=("n1", "n2"))
    short = Candidate("a/x-1", est=200.0, want=2, nodes=("n1", "n2"))
    capacity = _capacity(n1=(8, []), n2=(8, [(0.0, 300.0, 8)]))
    # the long rival does not take n1 from the more critical build about to be ready...
    got = place([coming, rival, short], "n1", capacity, now=0.0)
    assert got.index == 2
    # ...but nobody idles for it: with no short job, n1 is not kept empty either
    got = place([coming, rival], "n1", _capacity(n1=(8, []), n2=(8, [(0.0, 300.0, 8)])),
                now=0.0)
    assert got.index is None


def test_a_build_stuck_far_past_its_estimate_does_not_hold_up_a_big_job() -> None:
    w = Swarm()
    w.ok("register_node", node_id="big", url="http://x", cores=16, profiles=["p", "q"],
         sweeper=False, tree_versions={})
    w.node("small", cores=8)
    for cycle, cpv, wall in (("w1", "a/stuck-1", 2_000.0), ("w2", "a/huge-1", 40_000.0)):
        w.ok("start_cycle", cycle_id=cycle, profile="p", tree_version="", targets=[],
             jobs=[{"cpv": cpv, "deps": []}], reused=[])
        w.done(w.claim("small", 1), wall)          # learned on one core
    w.ok("start_cycle", cycle_id="q1", profile="q", tree_version="", targets=[],
         jobs=[{"cpv": "a/stuck-2", "deps": []}], reused=[])
    stuck = w.claim("big", 16)
    assert stuck["lease"]["cores"] == 16            # predicted to take a few minutes
    w.ts += 20_000                                  # ...and still running hours later
    w.ok("start_cycle", cycle_id="p1", profile="p", tree_version="", targets=[],
         jobs=[{"cpv": "a/huge-2", "deps": []}], reused=[])
    got = w.claim("small", 8)
    assert got["job"] is not None and got["job"]["cpv"] == "a/huge-2"


def test_a_claim_can_be_previewed_without_a_commit() -> None:
    w = Swarm()
    w.node("big", cores=16)
    w.node("small", cores=2)
    w.ok("start_cycle", cycle_id="c0", profile="p", tree_version="", targets=[],
         jobs=[{"cpv": "a/huge-1", "deps": []}], reused=[])
    w.done(w.claim("big", 1), 40_000.0)
    w.ok("start_cycle", cycle_id="c1", profile="p", tree_version="", targets=[],
         jobs=[{"cpv": "a/huge-2", "deps": []}], reused=[])
    before = w.s.digest()
    # the only ready job belongs on the big node: the small one would get nothing
    assert w.s.claim_preview("small", 2, w.ts)["cpv"] is None
    assert w.claim("small", 2)["job"] is None
    preview = w.s.claim_preview("big", 16, w.ts)
    assert w.s.digest() == before
    claim = w.claim("big", 16)
    assert (preview["cpv"], preview["cores"]) == (claim["job"]["cpv"], claim["lease"]["cores"])


def test_a_slot_limited_node_gives_each_build_its_cores_per_slot() -> None:
    w = Swarm()
    w.node("n1", cores=16, slots=4)               # the daemon's default: one build per 4 cores
    w.ok("start_cycle", cycle_id="c", profile="p", tree_version="", targets=[],
         jobs=[{"cpv": f"a/p{i}-1", "deps": []} for i in range(6)], reused=[])
    leases = [w.claim("n1", 16 - 4 * i)["lease"]["cores"] for i in range(4)]
    assert leases == [4, 4, 4, 4]                 # 1 core each would leave 12 idle


def test_claims_agree_across_a_snapshot_mid_cycle() -> None:
    w = Swarm()
    for node_id, cores in (("a", 16), ("b", 8), ("c", 4)):
        w.node(node_id, cores=cores, slots=max(1, cores // 4))
    jobs = [{"cpv": f"x/p{i}-1", "deps": [f"x/p{i - 1}-1"] if i % 3 else []}
            for i in range(12)]
    w.ok("start_cycle", cycle_id="c", profile="p", tree_version="", targets=[], jobs=jobs,
         reused=[])
    w.done(w.claim("a", 16), 500.0)
    w.claim("b", 8)
    w.ts += 50
    clone = SwarmState.from_bytes(w.s.to_bytes())
    for node_id, free in (("c", 4), ("a", 16), ("b", 4)):
        cmd = {"op": "claim", "rid": f"q{node_id}", "ts": w.ts, "node_id": node_id,
               "free_cores": free, "lease_ttl_s": 60.0}
        assert w.s.apply(dict(cmd)) == clone.apply(dict(cmd))
    assert w.s.digest() == clone.digest()


@pytest.mark.slow
def test_desktop_on_the_reference_fleet_beats_the_reference_policy_twice() -> None:
    from simulation.schedule.workload import load_workload
    result = run_bench(load_workload(DESKTOP), parse_fleet("16,8,14,24,8s"),
                       BenchConfig(seed=1, settings=SwarmSettings()))
    assert result["makespan_s"] >= result["lower_bound_s"]
    assert result["speedup_vs_reference"] >= 2.0
    assert not math.isnan(result["ratio_to_lower_bound"])


def _leaf_scenario(leaf_has_dependent: bool) -> tuple[Swarm, dict[str, Any]]:
    """A 3-link chain of 40 000 core-second builds on a 24-core node and a 30 000 core-second
    build on an 8-core one, learned in a first cycle; the small node claims it in the next."""
    w = Swarm()
    w.node("big", cores=24)
    w.node("small", cores=8)
    first = [{"cpv": f"a/link{i}-1", "deps": []} for i in range(3)] + [{"cpv": "b/app-1",
                                                                          "deps": []}]
    w.ok("start_cycle", cycle_id="c0", profile="p", tree_version="", targets=[], jobs=first,
         reused=[])
    for wall in (40_000.0, 40_000.0, 40_000.0, 30_000.0):
        w.done(w.claim("big", 1), wall)              # one core each: wall = core-seconds
    jobs = [{"cpv": f"a/link{i}-2", "deps": [f"a/link{i - 1}-2"] if i else []} for i in range(3)]
    jobs += [{"cpv": "b/app-2", "deps": []}, {"cpv": "c/small-2", "deps": []}]
    if leaf_has_dependent:
        jobs.append({"cpv": "b/plugin-2", "deps": ["b/app-2"]})
    w.ok("start_cycle", cycle_id="c1", profile="p", tree_version="", targets=[], jobs=jobs,
         reused=[])
    assert w.claim("big", 24)["job"]["cpv"] == "a/link0-2"
    claim = w.claim("small", 8)
    assert claim["job"]["cpv"] == "b/app-2"
    return w, claim


def test_a_long_leaf_with_slack_leaves_cores_beside_it_for_other_builds() -> None:
    # nothing waits for b/app: it need not take the whole node, and a short build runs beside it
    w, claim = _leaf_scenario(leaf_has_dependent=False)
    assert claim["lease"]["cores"] < 8
    beside = w.claim("small", 8 - claim["lease"]["cores"])
    assert beside["job"]["cpv"] == "c/small-2"
    # the same build with something depending on it keeps the narrower margin: the whole node
    _, claim = _leaf_scenario(leaf_has_dependent=True)
    assert claim["lease"]["cores"] == 8
