"""Interleaved sweeps (perfkit.sweep.interleave) and the paired comparison they allow (perfkit.compare)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pandas as pd
import pytest
from helpers import CPU, make_row, publish, run_cli, write_params, write_rows

from perfkit.compare import BETTER, NOISE, PAIRED, compare
from perfkit.errors import UsageError
from perfkit.params import parse_params
from perfkit.sweep.interleave import abba, check_interleavable
from perfkit.workload import System

FP16 = {**CPU, "label": "cpu-fp16", "dtype": "float16"}


# ---- the order -------------------------------------------------------------------------------------------

def test_abba_alternates_forward_and_backward_so_a_linear_drift_adds_the_same_to_each_side():
    assert "".join(abba(["A", "B"], 4)) == "ABBAABBA"
    assert "".join(abba(["A", "B", "C"], 2)) == "ABCCBA"
    order = abba(["A", "B"], 6)
    slots = {x: [i for i, y in enumerate(order) if y == x] for x in "AB"}
    assert sum(slots["A"]) == sum(slots["B"])  # a drift d·slot adds d·sum(slots) to each side's total


# ---- what is refused ---------------------------------------------------------------------------------------

def test_interleave_is_a_boolean_in_the_params_file():
    base = {"models": ["tiny-llama2-13b"], "systems": [CPU, FP16],
            "grid": {"input_lens": [16], "output_lens": [4], "batch_sizes": [1]}}
    assert parse_params({**base, "interleave": True}).interleave is True
    assert parse_params(base).interleave is False
    with pytest.raises(UsageError, match=r"interleave: 'yes' is not a boolean, expected true or false"):
        parse_params({**base, "interleave": "yes"})


def test_systems_that_cannot_be_interleaved_are_refused_in_one_line():
    from perfkit.serving.endpoint import Endpoint

    a, b = System("a"), System("b", dtype="float16")
    check_interleavable([a, b], ray=False)
    with pytest.raises(UsageError, match="needs two or more systems"):
        check_interleavable([a], ray=False)
    with pytest.raises(UsageError, match="--ray"):
        check_interleavable([a, b], ray=True)
    served = System("v", backend="served", endpoint=Endpoint(base_url="http://127.0.0.1:1/v1"))
    check_interleavable([a, served], ray=False)  # a server is a process of its own: it alternates as one
    with pytest.raises(UsageError, match="interleave with loads"):
        check_interleavable([a, served], False, loads=("a level",))
    launched = System("l", backend="served", endpoint=Endpoint(launch="serve {model} --port {port}"))
    gpu = System("g", device="cuda")
    check_interleavable([launched, a], ray=False)  # on the CPU, each side's memory check sees the other
    with pytest.raises(UsageError, match="server 'l' and in-process system 'g' on a GPU"):
        check_interleavable([launched, gpu], ray=False)


def test_the_cli_refuses_an_interleaved_sweep_of_one_system_before_any_work(tmp_path):
    params = write_params(tmp_path / "p.yaml", systems=[CPU, FP16], interleave=True)
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--system", "cpu", "--out", str(out), "--no-progress")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "interleave needs two or more systems" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(out / "points")


# ---- the paired comparison on rows with a known drift -------------------------------------------------------

def _drifting_rows(order: str, repeats: int = 8, drift: float = 0.01, noise: float = 0.002, seed: int = 0):
    """Two systems of identical speed (ttft 100 ms, e2e 400 ms), measured while the machine slows by `drift`
    per repeat slot, with `noise` of independent jitter: in `order` "sequential" (all of A, then all of B) or
    "interleaved" (ABBA)."""
    rng = np.random.default_rng(seed)
    labels = ["target", "baseline"]
    if order == "sequential":
        slots = {"target": list(range(repeats)), "baseline": list(range(repeats, 2 * repeats))}
    else:
        seq = abba(labels, repeats)
        slots = {x: [i for i, y in enumerate(seq) if y == x] for x in labels}
    rows = []
    for label in labels:
        slow = np.array([1 + drift * s for s in slots[label]])
        ttft = 100.0 * slow * (1 + noise * rng.standard_normal(repeats))
        e2e = 400.0 * slow * (1 + noise * rng.standard_normal(repeats))
        extra = {} if order == "sequential" else {
            "repeat_order": "interleaved", "interleave_id": "job-1", "repeat_slots": slots[label]}
        rows.append(make_row(label, "tiny-llama2-13b", 32, 8, 1, list(ttft), list(e2e), **extra))
    return pd.DataFrame(rows)


def test_a_drift_gives_sequential_order_a_false_verdict_and_interleaved_order_none():
    seq = compare(*(_drifting_rows("sequential").query(f"system == '{s}'") for s in ("target", "baseline")))
    ttft = seq.points.set_index("metric").loc["ttft_ms"]
    assert ttft["verdict"] == BETTER  # the target ran first, on the faster machine: a false verdict
    assert ttft["bootstrap"] == "independent"

    inter = compare(*(_drifting_rows("interleaved").query(f"system == '{s}'") for s in ("target", "baseline")))
    points = inter.points.set_index("metric")
    assert set(points["bootstrap"]) == {PAIRED}
    assert set(points["verdict"]) == {NOISE}, points[["ratio", "ratio_lo", "ratio_hi", "verdict"]]
    assert abs(points.loc["ttft_ms", "ratio"] - 1) < 0.01


def test_pairing_narrows_the_interval_where_the_drift_is_shared():
    """The same interleaved rows, resampled as pairs and as two independent sides: the pairs' interval is
    the narrower, since what drifted between repeats moved both sides of a pair alike."""
    df = _drifting_rows("interleaved", repeats=12, drift=0.02)
    paired = compare(df[df.system == "target"], df[df.system == "baseline"])
    alone = df.drop(columns=["repeat_order"])
    independent = compare(alone[alone.system == "target"], alone[alone.system == "baseline"])
    width = lambda c: (c.points.set_index("metric").loc["e2e_ms", ["ratio_lo", "ratio_hi"]]  # noqa: E731
                       .astype(float).diff().iloc[-1])
    assert independent.points["bootstrap"].eq("independent").all()
    assert width(paired) < 0.5 * width(independent)


def test_rows_of_different_jobs_or_lengths_are_not_paired():
    df = _drifting_rows("interleaved")
    other = df.copy()
    other.loc[other.system == "baseline", "interleave_id"] = "job-2"
    c = compare(other[other.system == "target"], other[other.system == "baseline"])
    assert set(c.points["bootstrap"]) == {"independent"}


def test_the_summary_line_says_which_intervals_are_paired():
    from perfkit.compare import summary_line

    df = _drifting_rows("interleaved")
    c = compare(df[df.system == "target"], df[df.system == "baseline"])
    assert "Every interval resamples pairs of repeats measured side by side" in summary_line(c)


def test_stored_order_fields_are_checked_when_read(tmp_path):
    from perfkit.results import load_results

    df = _drifting_rows("interleaved")
    rows = df.to_dict("records")
    rows[0]["repeat_slots"] = [0, 3, 3, 7, 8, 11, 12, 15]  # a slot twice
    write_rows(tmp_path, rows)
    loaded = load_results(str(tmp_path))
    assert list(loaded["system"]) == ["baseline"]
    reasons = [reason for _, reason in loaded.attrs["skipped_files"]]
    assert len(reasons) == 1 and "repeat_slots" in reasons[0] and "ascending, distinct" in reasons[0]


# ---- real interleaved sweeps on tiny models -----------------------------------------------------------------

def _sweep(tmp_path, name="p", **overrides):
    params = write_params(tmp_path / f"{name}.yaml", systems=[CPU, FP16], interleave=True, **overrides)
    out = tmp_path / f"out-{name}"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from perfkit.results import load_results

    return load_results(str(out)), out, r


@pytest.mark.slow
def test_an_interleaved_sweep_alternates_the_repeats_and_compares_paired(tmp_path):
    df, out, _ = _sweep(tmp_path, repeats=3)
    assert len(df) == 6 and set(df["repeat_order"]) == {"interleaved"}
    for _, pair in df.groupby("batch"):
        assert pair["interleave_id"].nunique() == 1
        slots = {r.system: list(r.repeat_slots) for r in pair.itertuples()}
        assert slots == {"cpu": [0, 3, 4], "cpu-fp16": [1, 2, 5]}
    c = compare(str(out), str(out), "cpu-fp16", "cpu")
    assert set(c.points["bootstrap"]) == {PAIRED} and set(c.study["bootstrap"]) == {PAIRED}
    # each system ran in its own process; the rows' provenance is complete as a sequential sweep's
    assert df["torch_version"].notna().all() and df["device_name"].notna().all()
    # and the same reports render from them as from a sequential sweep's rows
    reports = tmp_path / "reports"
    r = publish("compare", f"{out}:cpu-fp16", f"{out}:cpu", "--reports", str(reports))
    assert r.returncode == 0, r.stderr[-3000:]
    r = publish("report", str(out), "--system", "cpu", "--reports", str(reports))
    assert r.returncode == 0, r.stderr[-3000:]
    pages = {os.path.basename(p): open(p).read() for p in glob.glob(str(reports / "**" / "*.html"), recursive=True)}
    compare_page = next(text for name, text in pages.items() if "compare" in name)
    assert "Every interval resamples pairs of repeats measured side by side" in compare_page
    assert len(pages) >= 2


@pytest.mark.slow
def test_a_search_that_stops_leaves_its_peer_measuring_alone(tmp_path):
    fp16 = {**FP16, "env": {"PERFKIT_SWEEP_FAULT": "oom:2"}}  # only this system's process runs out at B >= 2
    params = write_params(tmp_path / "p.yaml", systems=[CPU, fp16], interleave=True)
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from perfkit.results import load_results

    df = load_results(str(out)).set_index(["system", "batch"])
    assert df.loc[("cpu-fp16", 2), "status"] == "oom"
    assert df.loc[("cpu-fp16", 1), "repeat_order"] == "interleaved"
    assert pd.isna(df.loc[("cpu-fp16", 2), "repeat_order"])  # a failed point has no order
    assert ("cpu-fp16", 4) not in df.index  # its search stopped at the oom
    assert df.loc[("cpu", 2), "repeat_order"] == "alone" and df.loc[("cpu", 4), "repeat_order"] == "alone"
    assert pd.isna(df.loc[("cpu", 4), "interleave_id"])


@pytest.mark.slow
def test_systems_that_cannot_be_held_together_alternate_whole_points(tmp_path, monkeypatch):
    from perfkit.cli import main

    monkeypatch.setattr("perfkit.memory_check.together_problem", lambda builds: "they do not fit (test)")
    params = write_params(tmp_path / "p.yaml", systems=[CPU, FP16], interleave=True,
                          grid={"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2]})
    out = tmp_path / "out"
    assert main(["sweep", params, "--out", str(out), "--no-progress"]) == 0
    from perfkit.results import load_results

    df = load_results(str(out))
    assert set(df["repeat_order"]) == {"grouped"}
    assert df["order_note"].str.contains("they do not fit").all()
    first = {b: g.sort_values("repeat_slots", key=lambda s: s.str[0])["system"].iloc[0] for b, g in df.groupby("batch")}
    assert first == {1: "cpu", 2: "cpu-fp16"}  # whoever goes first alternates point by point
    c = compare(str(out), str(out), "cpu-fp16", "cpu")
    assert set(c.points["bootstrap"]) == {"independent"}  # whole points apart: nothing to pair


@pytest.mark.slow
def test_a_resumed_interleaved_sweep_measures_only_what_is_missing(tmp_path):
    df, out, _ = _sweep(tmp_path)
    victim = df[(df.system == "cpu-fp16") & (df.batch == 4)]["point_key"].iloc[0]
    os.remove(out / "points" / f"{victim}.parquet")
    again, _, r = _sweep(tmp_path)
    assert len(again) == len(df)
    row = again[again.point_key == victim].iloc[0]
    assert row["repeat_order"] == "alone"  # its peer's point was stored: nothing to alternate with
    kept = again[again.point_key != victim].set_index("point_key")
    assert (kept["run_id"] == df.set_index("point_key").loc[kept.index, "run_id"]).all()


def test_a_dry_run_says_the_order_and_the_flag_overrides_the_file(tmp_path):
    params = write_params(tmp_path / "p.yaml", systems=[CPU, FP16])
    r = run_cli("sweep", params, "--out", str(tmp_path / "out"), "--dry-run", "--interleave")
    assert r.returncode == 0, r.stderr
    assert "order: interleaved" in r.stdout
    params = write_params(tmp_path / "q.yaml", systems=[CPU, FP16], interleave=True)
    r = run_cli("sweep", params, "--out", str(tmp_path / "out"), "--dry-run", "--no-interleave")
    assert r.returncode == 0, r.stderr
    assert "order:" not in r.stdout


@pytest.mark.slow
def test_a_system_whose_process_dies_leaves_its_points_and_its_peers_measuring(tmp_path):
    """fp16's process is killed (SIGKILL, as the host's OOM killer would) when it opens batch 2: its batch-1
    point is stored, batch 2 is an error row naming the exit, the sweep says the unit was lost (exit 1), and
    the other system measures the rest alone."""
    fp16 = {**FP16, "env": {"PERFKIT_SWEEP_FAULT": "kill:2"}}
    params = write_params(tmp_path / "p.yaml", systems=[CPU, fp16], interleave=True)
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress", timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "exited with code -9" in r.stderr and "Traceback" not in r.stderr
    from perfkit.results import load_results

    df = load_results(str(out)).set_index(["system", "batch"])
    assert df.loc[("cpu-fp16", 1), "status"] == "ok"
    assert df.loc[("cpu-fp16", 2), "status"] == "error" and "-9" in df.loc[("cpu-fp16", 2), "error"]
    assert ("cpu-fp16", 4) not in df.index
    assert df.loc[("cpu", 2), "repeat_order"] == "alone" and df.loc[("cpu", 4), "status"] == "ok"


def test_every_timed_repeat_follows_an_untimed_run_of_its_own(monkeypatch):
    """The worker's commands, in this process: the warm-up runs, then each repeat is an untimed run followed by
    the timed one, back to back (as a sequential sweep's repeats follow one another)."""
    import multiprocessing
    import threading

    import perfkit.measure as measure
    from perfkit.sweep.interleave import _worker_main
    from perfkit.sweep.search import BatchRun, SearchSpec

    calls = []
    real = measure._run_naming_phase
    monkeypatch.setattr(measure, "_run_naming_phase", lambda *a: calls.append("run") or real(*a))
    real_one = measure._one_repeat
    monkeypatch.setattr(measure, "_one_repeat", lambda *a: calls.append("timed") or real_one(*a))
    ours, theirs = multiprocessing.Pipe()
    system = System("a")
    worker = threading.Thread(target=_worker_main, args=(theirs, system, 0), daemon=True)
    worker.start()

    def call(command, *args):
        ours.send((command, args))
        kind, value = ours.recv()
        assert kind == "ok", value
        return value

    call("build", "tiny-llama2-13b")
    job = BatchRun(SearchSpec(system, "tiny-llama2-13b", 8, 4, (4,)), 1, (4,))
    call("open", job, 2, 0)
    assert calls == ["run", "run"]  # the point's warm-up
    for _ in range(3):
        call("repeat", True)
    m = call("finish")
    ours.send(("stop", ()))
    worker.join(10)
    # per repeat: an untimed run, then the timed repeat (whose own run goes through _run_naming_phase too)
    assert calls[2:] == ["run", "timed", "run"] * 3
    assert len(m.ttft_s) == 3


def test_rows_with_different_numbers_of_repeats_are_not_paired():
    df = _drifting_rows("interleaved")
    rows = df.to_dict("records")
    baseline = next(r for r in rows if r["system"] == "baseline")
    short = make_row("baseline", "tiny-llama2-13b", 32, 8, 1, baseline["ttft_ms_samples"][:6],
                     baseline["e2e_ms_samples"][:6], repeat_order="interleaved", interleave_id="job-1",
                     repeat_slots=list(baseline["repeat_slots"])[:6])
    c = compare(df[df.system == "target"], pd.DataFrame([short]))
    assert set(c.points["bootstrap"]) == {"independent"}
