import glob
import math
import os
import subprocess
import sys
import time
import types

import pytest
import torch
from helpers import ROOT, sigkill_midway, write_params

import perfkit.sweep.budget
import perfkit.sweep.units as units
from perfkit.cli import main as cli_main
from perfkit.errors import UsageError
from perfkit.measure import Point, System, measure_point
from perfkit.results import load_results
from perfkit.sweep import plan, run_sweep
from perfkit.sweep.search import BatchSearch, SearchSpec
from perfkit.sweep.units import FAULT_ENV

CPU = System("cpu", "hf-loop", "float32", "cpu", "sdpa")


def ids(df):
    return sorted(zip(df["model"], df["input_len"], df["output_len"], df["batch"]))


def test_sweep_measures_every_point_then_a_rerun_skips_them(tmp_path):
    params = write_params(tmp_path / "p.yaml")
    out = str(tmp_path / "out")
    first = run_sweep(params, out_dir=out, progress=False)
    assert (first.measured, first.skipped, first.failures, first.stopped_early) == (3, 0, [], False)
    df = load_results(out)
    assert ids(df) == [("tiny-llama2-13b", 16, 4, b) for b in (1, 2, 4)]
    assert set(df["status"]) == {"ok"} and set(df["sweep_name"]) == {"t"}
    assert df["derived_from_output_len"].isna().all()
    assert list(df.sort_values("batch")["search_stop"]) == ["", "", "grid_end"]
    assert len(glob.glob(os.path.join(out, "runs", "*.json"))) == 1
    again = run_sweep(params, out_dir=out, progress=False)
    assert (again.measured, again.skipped, again.run_id) == (0, 3, None)
    assert len(load_results(out)) == 3
    assert len(glob.glob(os.path.join(out, "runs", "*.json"))) == 1  # nothing to do: nothing written


@pytest.fixture
def spy(monkeypatch):
    """Records every measure_point call (system label, model, I, B) and every model build of a sweep."""
    record = types.SimpleNamespace(calls=[], builds=[])
    real_measure, real_build = units.measure_point, units.build_model

    def measure(model, system, point, **kw):
        record.calls.append((system.label, point.model, point.input_len, point.batch))
        return real_measure(model, system, point, **kw)

    def build(name, *a, **kw):
        record.builds.append(name)
        return real_build(name, *a, **kw)

    monkeypatch.setattr(units, "measure_point", measure)
    monkeypatch.setattr(units, "build_model", build)
    return record


def test_batch_one_everywhere_first_and_each_model_built_once_per_pass(tmp_path, spy):
    params = write_params(tmp_path / "p.yaml", models=["tiny-llama2-13b", "tiny-mistral-7b"],
                          grid={"input_lens": [8, 16], "output_lens": [2], "batch_sizes": [1, 2]}, repeats=1)
    run_sweep(params, out_dir=str(tmp_path / "out"), progress=False)
    assert [c[3] for c in spy.calls] == [1] * 4 + [2] * 4  # pass 1 (batch 1) for every model and config first
    assert spy.builds == ["tiny-llama2-13b", "tiny-mistral-7b"] * 2  # once per model per pass
    # within a pass a model's points are contiguous: it is measured fully before the next is built
    assert [c[1] for c in spy.calls] == ["tiny-llama2-13b"] * 2 + ["tiny-mistral-7b"] * 2 + \
        ["tiny-llama2-13b"] * 2 + ["tiny-mistral-7b"] * 2


def _row(status="ok", tok_s=float("nan"), e2e_spread=0.01):
    """A judged row: throughput, and an e2e whose IQR is `e2e_spread` of its median."""
    return {"status": status, "output_tok_s": tok_s, "e2e_ms": 100.0, "e2e_iqr_ms": 100.0 * e2e_spread}


def test_search_stops_on_plateau_oom_or_grid_end():
    spec = SearchSpec(CPU, "m", 16, 4, (4,))
    s = BatchSearch(spec, (1, 2, 4, 8, 16), min_gain=0.03)
    for tok_s in (100.0, 180.0, 185.0):
        assert not s.finished()
        rows = {4: _row(tok_s=tok_s)}
        s.judge(rows)
    assert rows[4]["search_stop"] == "plateau" and rows[4]["search_gain"] == pytest.approx(185 / 180 - 1)
    assert s.finished() and s.stop == {4: "plateau"}

    s = BatchSearch(spec, (1, 2, 4, 8), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0)})
    s.judge({4: _row("error")})  # an error neither stops the search nor becomes the reference
    rows = {4: _row(tok_s=102.0)}
    s.judge(rows)
    assert rows[4]["search_stop"] == "plateau" and rows[4]["search_gain"] == pytest.approx(0.02)

    s = BatchSearch(spec, (1, 2, 4), min_gain=None)
    s.judge({4: _row(tok_s=100.0)})
    rows = {4: _row("oom")}
    s.judge(rows)
    assert rows[4]["search_stop"] == "oom" and s.finished() and s.remaining() == 0

    s = BatchSearch(spec, (1, 2), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0)})
    rows = {4: _row(tok_s=150.0)}
    s.judge(rows)
    assert rows[4]["search_stop"] == "grid_end" and s.finished()

    # derived output lengths share a run: each keeps its own search, the run goes on while one is live
    s = BatchSearch(SearchSpec(CPU, "m", 16, 8, (4, 8)), (1, 2, 4), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0), 8: _row(tok_s=100.0)})
    s.judge({4: _row(tok_s=101.0), 8: _row(tok_s=150.0)})
    assert s.live() == (8,) and s.next_job().output_lens == (8,)


def test_a_plateau_read_through_noise_takes_the_next_batch():
    spec = SearchSpec(CPU, "m", 16, 4, (4,))
    # B=2 reads as a 5 % loss, but its e2e spread is 20 %: not believed, the search goes on to B=4
    s = BatchSearch(spec, (1, 2, 4, 8, 16), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0)})
    noisy = {4: _row(tok_s=95.0, e2e_spread=0.2)}
    s.judge(noisy)
    assert noisy[4]["search_stop"] == "" and noisy[4]["search_gain"] == pytest.approx(-0.05)
    assert not s.finished() and s.next_job().batch == 4
    # B=4 is quiet but is compared with the noisy B=2: still not believed
    after_noisy = {4: _row(tok_s=96.0)}
    s.judge(after_noisy)
    assert after_noisy[4]["search_stop"] == "" and not s.finished()
    # two quiet measurements without a gain: a plateau
    quiet = {4: _row(tok_s=97.0)}
    s.judge(quiet)
    assert quiet[4]["search_stop"] == "plateau" and s.finished()
    # exactly at the threshold (IQR/median = 10 %) counts as quiet, as metrics.is_noisy does
    s = BatchSearch(spec, (1, 2, 4), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0, e2e_spread=0.1)})
    edge = {4: _row(tok_s=100.0, e2e_spread=0.1)}
    s.judge(edge)
    assert edge[4]["search_stop"] == "plateau"
    # a noisy row that gains enough simply continues, and one at the grid's end ends it
    s = BatchSearch(spec, (1, 2), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0)})
    end = {4: _row(tok_s=90.0, e2e_spread=0.3)}
    s.judge(end)
    assert end[4]["search_stop"] == "grid_end_noisy" and s.finished()  # the doubt is kept at the end
    # the doubt stays through a noisy gain, to the grid's end
    s = BatchSearch(spec, (1, 2, 4), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0)})
    s.judge({4: _row(tok_s=90.0, e2e_spread=0.3)})
    end = {4: _row(tok_s=150.0, e2e_spread=0.3)}
    s.judge(end)
    assert end[4]["search_stop"] == "grid_end_noisy"
    # a clear, quiet gain after it shows the search was not done there: a plain grid_end
    s = BatchSearch(spec, (1, 2, 4, 8), min_gain=0.03)
    for tok_s, spread in ((100.0, 0.01), (98.0, 0.3), (150.0, 0.01)):
        s.judge({4: _row(tok_s=tok_s, e2e_spread=spread)})
    end = {4: _row(tok_s=220.0)}
    s.judge(end)
    assert end[4]["search_stop"] == "grid_end"
    s = BatchSearch(spec, (1, 2), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0, e2e_spread=0.3)})  # noisy, but gaining: no doubt raised
    end = {4: _row(tok_s=150.0, e2e_spread=0.3)}
    s.judge(end)
    assert end[4]["search_stop"] == "grid_end"


def test_patience_lets_the_search_past_a_stall():
    spec = SearchSpec(CPU, "m", 16, 4, (4,))
    # B=2 stalls (as a CPU's kernel choice made tiny-llama3-8b do), B=4 jumps: patience 2 finds the jump
    s = BatchSearch(spec, (1, 2, 4, 8, 16, 32), min_gain=0.03, patience=2)
    verdicts = []
    for tok_s in (100.0, 101.0, 250.0, 252.0, 251.0):
        rows = {4: _row(tok_s=tok_s)}
        s.judge(rows)
        verdicts.append(rows[4]["search_stop"])
    assert verdicts == ["", "", "", "", "plateau"] and s.finished()  # two stalls in a row end it at B=16
    # a noisy stall breaks the row: stall, noisy stall, stall is not two in a row
    s = BatchSearch(spec, (1, 2, 4, 8, 16), min_gain=0.03, patience=2)
    for tok_s, spread in ((100.0, 0.01), (101.0, 0.01), (100.0, 0.3), (101.0, 0.01)):
        rows = {4: _row(tok_s=tok_s, e2e_spread=spread)}
        s.judge(rows)
    assert rows[4]["search_stop"] == "" and not s.finished()
    # with patience 1 the first stall ends it
    s = BatchSearch(spec, (1, 2, 4), min_gain=0.03)
    s.judge({4: _row(tok_s=100.0)})
    rows = {4: _row(tok_s=101.0)}
    s.judge(rows)
    assert rows[4]["search_stop"] == "plateau"


def test_oom_is_recorded_memory_freed_and_the_search_stops(tmp_path, monkeypatch):
    freed = []
    real_free = units.free_memory
    monkeypatch.setattr(units, "free_memory", lambda device: (freed.append(device), real_free(device)))
    monkeypatch.setenv(FAULT_ENV, "oom:4")
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [16], "output_lens": [4],
                                                     "batch_sizes": [1, 2, 4, 8]})
    out = str(tmp_path / "out")
    outcome = run_sweep(params, out_dir=out, progress=False)
    df = load_results(out).sort_values("batch")
    assert list(df["batch"]) == [1, 2, 4]  # batch 8 is never tried
    assert list(df["status"]) == ["ok", "ok", "oom"]
    oom = df[df["status"] == "oom"].iloc[0]
    assert "OutOfMemoryError" in oom["error"] and oom["search_stop"] == "oom" and math.isnan(oom["ttft_ms"])
    assert outcome.failures == [] and len(outcome.ooms) == 1
    assert freed.count("cpu") >= 3  # after the OOM, and after each model released
    # a re-run keeps the OOM as data: it is done, not retried
    monkeypatch.delenv(FAULT_ENV)
    assert run_sweep(params, out_dir=out, progress=False).measured == 0


@pytest.mark.slow
def test_cli_error_points_are_recorded_summarised_exit_1_and_retried(tmp_path, monkeypatch, capsys):
    params = write_params(tmp_path / "p.yaml", models=["tiny-llama2-13b", "tiny-mistral-7b"],
                          grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2, 4]}, repeats=1)
    out = str(tmp_path / "out")
    monkeypatch.setenv(FAULT_ENV, "error:2:tiny-mistral-7b")
    assert cli_main(["sweep", params, "--out", out, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "2 failed points" in err and "injected failure at batch 2" in err
    df = load_results(out)
    assert len(df) == 6  # the sweep went on past the failures
    bad = df[df["status"] == "error"]
    assert sorted(bad["batch"]) == [2, 4] and set(bad["model"]) == {"tiny-mistral-7b"}
    assert bad["error"].str.contains("RuntimeError: injected failure").all()
    monkeypatch.delenv(FAULT_ENV)
    assert cli_main(["sweep", params, "--out", out, "--no-progress"]) == 0
    df = load_results(out)
    assert len(df) == 6 and set(df["status"]) == {"ok"}  # the failed points were redone, once each


@pytest.mark.slow
def test_derived_output_lens_match_a_direct_run(tmp_path, tiny_models):
    model = tiny_models["tiny-llama2-13b"]
    threads = torch.get_num_threads()
    # One thread: on a shared 2-core machine a second OpenMP thread waiting for a descheduled peer
    # turns a 1 ms step into 100 ms. Long and direct runs alternate so that both see the same machine.
    torch.set_num_threads(1)
    try:
        pairs = [(measure_point(model, CPU, Point("tiny-llama2-13b", 16, 16, 2), warmup=1, repeats=3),
                  measure_point(model, CPU, Point("tiny-llama2-13b", 16, 5, 2), warmup=1, repeats=3))
                 for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    derived = [units.truncated(long, 5) for long, _ in pairs]
    for d, (long, direct) in zip(derived, pairs):
        assert torch.equal(d.tokens, direct.tokens)  # the same greedy work: the same tokens
        assert all(len(s) == 4 for s in d.step_s)
        for ttft, e2e, steps in zip(d.ttft_s, d.e2e_s, long.step_s):
            assert e2e == pytest.approx(ttft + sum(steps[:4]))
    # Timings agree within CPU noise (the fastest repeat of each kind: stalls only ever add time); the
    # long run's 11 extra steps, if they were counted, would make it ~3x as long.
    fastest_derived = min(e for d in derived for e in d.e2e_s)
    fastest_direct = min(e for _, direct in pairs for e in direct.e2e_s)
    fastest_long = min(e for long, _ in pairs for e in long.e2e_s)
    assert 0.6 < fastest_derived / fastest_direct < 1.6, (fastest_derived, fastest_direct)
    assert fastest_long / fastest_direct > 1.8  # the check can tell a truncated run from a full one

    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [16], "output_lens": [5, 12], "batch_sizes": [1, 2]},
                          derive_output_lens=True)
    out = str(tmp_path / "out")
    outcome = run_sweep(params, out_dir=out, progress=False)
    df = load_results(out)
    assert outcome.measured == 4 and len(df) == 4
    short = df[df["output_len"] == 5]
    assert (short["derived_from_output_len"] == 12).all()
    assert df[df["output_len"] == 12]["derived_from_output_len"].isna().all()
    for _, r in short.iterrows():
        assert r["generated_tokens"] == r["batch"] * 5
        for ttft, e2e, steps in zip(r["ttft_ms_samples"], r["e2e_ms_samples"], r["decode_step_ms_samples"]):
            assert len(steps) == 4 and e2e == pytest.approx(ttft + sum(steps))
    assert plan(params, out_dir=out).count("done") == 4


def test_time_budget_stops_cleanly_and_the_same_call_continues(tmp_path):
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [8, 16], "output_lens": [2],
                                                     "batch_sizes": [1, 2, 4]}, repeats=1)
    out = str(tmp_path / "out")
    first = run_sweep(params, out_dir=out, progress=False, max_minutes=0.0001)  # 6 ms: one point fits at most
    assert first.stopped_early and 0 <= first.measured < 6 and first.left == 6 - first.measured
    second = run_sweep(params, out_dir=out, progress=False)
    assert not second.stopped_early and second.skipped == first.measured
    assert first.measured + second.measured == 6
    df = load_results(out)
    assert len(df) == 6 and len(set(ids(df))) == 6


def test_a_changed_params_file_is_not_a_resume(tmp_path):
    out = str(tmp_path / "out")
    run_sweep(write_params(tmp_path / "a.yaml", grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1]},
                           repeats=1), out_dir=out, progress=False)
    changed = write_params(tmp_path / "b.yaml", grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1]},
                           repeats=2)
    # Another definition under the same label is refused before anything runs (tests/test_generations.py
    # has the cases); --discard-stale moves the old points aside and measures the new definition.
    with pytest.raises(UsageError, match=r"holds 1 point this params file does not define \(repeats 1 there, 2 here\)"):
        plan(changed, out_dir=out)
    pl = plan(changed, out_dir=out, discard_stale=True)
    assert (pl.count("done"), pl.count("todo"), pl.other_points, pl.stale) == (0, 1, 0, 1)
    assert run_sweep(changed, out_dir=out, progress=False, discard_stale=True).measured == 1
    df = load_results(out)
    assert sorted(df["repeats"]) == [2] and df["point_key"].nunique() == 1
    assert len(glob.glob(os.path.join(out, "stale", "*", "*.parquet"))) == 1


def test_system_selection_and_unknown_label(tmp_path):
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1]},
                          systems=[{"label": "a"}, {"label": "b", "attn_implementation": "eager"}], repeats=1)
    out = str(tmp_path / "out")
    run_sweep(params, systems=["b"], out_dir=out, progress=False)
    assert list(load_results(out)["system"]) == ["b"]
    with pytest.raises(UsageError, match=r"systems: no system labelled 'c', expected one of a, b"):
        run_sweep(params, systems=["c"], out_dir=out, progress=False)


def test_resuming_on_another_device_is_refused(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    grid = {"input_lens": [8], "output_lens": [2], "batch_sizes": [1]}
    run_sweep(write_params(tmp_path / "a.yaml", grid=grid, repeats=1), out_dir=out, progress=False)
    import perfkit.provenance as prov

    real_env = prov.environment
    monkeypatch.setattr(prov, "environment", lambda device=None: {**real_env(device), "device_name": "Other CPU"})
    more = write_params(tmp_path / "b.yaml", grid={**grid, "batch_sizes": [1, 2]}, repeats=1)
    with pytest.raises(UsageError, match="measured on .* this machine is 'Other CPU'"):
        run_sweep(more, out_dir=out, progress=False)
    # A changed params file (other repeats: none of its points is stored yet) under the same label would
    # mix two definitions, and two devices, in one directory: refused (tests/test_generations.py).
    changed = write_params(tmp_path / "c.yaml", grid=grid, repeats=2)
    with pytest.raises(UsageError, match=r"does not define \(repeats 1 there, 2 here\)"):
        run_sweep(changed, out_dir=out, progress=False)


def test_cli_dry_run_lists_points_and_what_is_done(tmp_path, capsys):
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2, 4]},
                          repeats=1)
    out = str(tmp_path / "out")
    assert cli_main(["sweep", params, "--out", out, "--dry-run"]) == 0
    stdout = capsys.readouterr().out
    assert "already done: 0; to measure: 1; up to 2 more" in stdout and not os.path.exists(out)
    run_sweep(params, out_dir=out, progress=False)
    assert cli_main(["sweep", params, "--out", out, "--dry-run"]) == 0
    stdout = capsys.readouterr().out
    assert "already done: 3; to measure: 0" in stdout
    assert sum(line.endswith("  done") for line in stdout.splitlines()) == 3


def _point_files(out):
    return [f for f in glob.glob(os.path.join(out, "points", "*.parquet"))]


@pytest.mark.slow
def test_sigkill_midway_then_the_same_command_finishes_every_point_exactly_once(tmp_path):
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [16, 32], "output_lens": [6],
                                                     "batch_sizes": [1, 2, 4]}, repeats=3)
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "perfkit", "sweep", params, "--out", out, "--no-progress"]
    sigkill_midway(cmd[3:], out)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    before = load_results(out)
    assert 2 <= len(before) < 6, "the sweep was not killed midway"
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = load_results(out)
    assert len(after) == 6 and len(set(ids(after))) == 6  # every point, exactly once
    assert len(_point_files(out)) == 6
    first_run = set(before["run_id"])
    kept = after[after["run_id"].isin(first_run)]
    assert len(kept) == len(before)  # nothing finished before the kill was measured again
    assert set(kept["point_key"]) == set(before["point_key"])


def test_budget_estimates_scale_each_phase_from_stored_points(tmp_path):
    """A batch-1 point at I = 2048 costs about what one at I = 128 does when decode dominates: the estimate
    scales the measured prompt pass and decode step separately (not the whole job by B·(I + O))."""
    from perfkit.params import load_params
    from perfkit.sweep.budget import Budget, DurationEstimator
    from perfkit.sweep.search import BatchRun

    params = load_params(write_params(tmp_path / "p.yaml", repeats=2))  # warmup 1 + 2 repeats = 3 runs
    stored = {"k": {"status": "ok", "derived_from_output_len": None, "system": "cpu", "model": "tiny-llama2-13b",
                    "dtype": "float32", "batch": 1, "input_len": 128, "output_len": 128, "ttft_ms": 10.0,
                    "tpot_ms": 50.0, "setup_ms": 0.0, "warmup": 1, "repeats": 2}}
    t0 = time.perf_counter()
    budget = Budget(params, t0 + 60.0, {"cpu": DurationEstimator(None)}, time.perf_counter)  # a 1-minute budget
    budget.learn(stored.values())
    same = budget.estimate_job(BatchRun(SearchSpec(CPU, "tiny-llama2-13b", 128, 128, (128,)), 1, (128,)))
    assert same == pytest.approx(3 * (0.010 + 127 * 0.050))
    long_prompt = budget.estimate_job(BatchRun(SearchSpec(CPU, "tiny-llama2-13b", 2048, 128, (128,)), 1, (128,)))
    # the prompt pass scales with its FLOPs (~16x), a decode step with the bytes it reads (~1x here)
    assert 1.0 < long_prompt / same < 2.0  # the old B·(I + O) scaling said 13x
    assert budget.fits(30.0) and not budget.fits(61.0)


def _fake_timings(monkeypatch, ttft_s, step_s, build_s=1.0):
    """Replace measuring and building with injected timings on a fake clock that they advance."""
    from perfkit.measure import PointMeasurement

    now = [0.0]
    monkeypatch.setattr(perfkit.sweep.budget, "clock", lambda: now[0])

    def measure(model, system, point, warmup, repeats, seed):
        ttft, step = ttft_s(point), step_s(point)
        e2e = ttft + (point.output_len - 1) * step
        now[0] += (warmup + repeats) * e2e
        return PointMeasurement(point, system, [ttft] * repeats, [e2e] * repeats,
                                [[step] * (point.output_len - 1)] * repeats, warmup * e2e, 0.0, None, "none",
                                torch.zeros((point.batch, point.output_len), dtype=torch.long))

    def build(name, *a, **kw):
        now[0] += build_s
        return object()

    monkeypatch.setattr(units, "measure_point", measure)
    monkeypatch.setattr(units, "build_model", build)
    return now


def test_a_job_over_the_budget_is_skipped_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Injected timings (compute-bound prompts): I = 2048 would end past the budget, so it waits; I = 256,
    after it in the grid, still fits and runs; the same command later measures only what was left."""
    _fake_timings(monkeypatch, ttft_s=lambda p: 0.005 * p.batch * p.input_len, step_s=lambda p: 0.01)
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [128, 2048, 256], "output_lens": [8],
                                                     "batch_sizes": [1]})
    out = str(tmp_path / "out")
    first = run_sweep(params, out_dir=out, progress=False, max_minutes=0.2)  # 12 s of fake time
    assert first.stopped_early and first.measured == 2 and first.left == 1
    assert sorted(load_results(out)["input_len"]) == [128, 256]
    second = run_sweep(params, out_dir=out, progress=False)
    assert (second.measured, second.skipped, second.stopped_early) == (1, 2, False)
    assert sorted(load_results(out)["input_len"]) == [128, 256, 2048]


def test_a_long_prompt_no_longer_ends_the_sweep(tmp_path, monkeypatch):
    """Decode-dominated points (the GPU's case at batch 1): after I = 128 the sweep measures I = 2048 and the
    next model, then the batch climbs while they fit; what does not fit is left, not the whole rest."""
    from perfkit.hardware import by_name

    now = _fake_timings(monkeypatch, ttft_s=lambda p: 0.0001 * p.batch * p.input_len, step_s=lambda p: 0.05)
    # a device whose peaks are known, as on a GPU: a decode step's estimate follows the bytes it reads
    monkeypatch.setattr("perfkit.hardware.lookup", lambda name: by_name("H100 SXM"))
    params = write_params(tmp_path / "p.yaml", models=["tiny-llama2-13b", "tiny-mistral-7b"],
                          grid={"input_lens": [128, 2048], "output_lens": [32], "batch_sizes": [1, 2]})
    out = str(tmp_path / "out")
    first = run_sweep(params, out_dir=out, progress=False, max_minutes=0.6)  # 36 s: pass 1 takes ~22 s
    df = load_results(out)
    assert sorted(df.loc[df["batch"] == 1, "model"]) == ["tiny-llama2-13b"] * 2 + ["tiny-mistral-7b"] * 2
    # the climb goes on where it fits: llama2-13b's I = 2048 step (~10 s estimated, ~8 s left) waits, and
    # mistral-7b's I = 128 step, after it, still runs; the sweep never ends past its budget
    climbed = df[df["batch"] == 2]
    assert sorted(zip(climbed["model"], climbed["input_len"])) == [("tiny-llama2-13b", 128), ("tiny-mistral-7b", 128)]
    assert first.stopped_early and first.left == 2 and now[0] <= 36.0


def test_out_of_memory_reported_as_a_runtime_error_counts_as_oom():
    import torch

    from perfkit.measure import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_systems_differing_only_in_backend_share_one_build(tmp_path, spy):
    cpu = {"device": "cpu", "dtype": "float32", "attn_implementation": "sdpa"}
    params = write_params(tmp_path / "p.yaml", systems=[{"label": "loop", "backend": "hf-loop", **cpu},
                                                         {"label": "static", "backend": "static", **cpu}],
                          grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1]}, repeats=1)
    out = run_sweep(params, out_dir=str(tmp_path / "out"), progress=False)
    assert spy.builds == ["tiny-llama2-13b"]  # one build serves both backends
    assert sorted(c[0] for c in spy.calls) == ["loop", "static"] and out.measured == 2
    assert set(load_results(out.out_dir)["backend"]) == {"hf-loop", "static"}


@pytest.mark.slow
def test_resume_retries_an_error_but_not_the_stored_points_after_it(tmp_path, spy):
    from perfkit.results import write_point

    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2, 4]},
                          repeats=1)
    out = str(tmp_path / "out")
    run_sweep(params, out_dir=out, progress=False)
    df = load_results(out)
    b2 = df[df["batch"] == 2].iloc[0].to_dict()
    write_point(out, {**b2, "status": "error", "error": "RuntimeError: a transient failure"})  # as a crash left it
    spy.calls.clear()
    again = run_sweep(params, out_dir=out, progress=False)
    assert [c[3] for c in spy.calls] == [2] and again.measured == 1  # batch 4 was stored ok: judged, not measured again
    df = load_results(out)
    assert len(df) == 3 and set(df["status"]) == {"ok"}


def test_the_budget_learns_from_a_run_whose_own_output_length_already_plateaued(tmp_path, monkeypatch):
    """Derived output lengths: the longest O (the one run) can plateau while a shorter O still gains; the
    next runs then yield rows for the shorter O only, and the budget must still learn from the run."""
    _fake_timings(monkeypatch, ttft_s=lambda p: 0.05, step_s=lambda p: 0.01 * p.batch)
    params = write_params(tmp_path / "p.yaml", derive_output_lens=True, search={"min_gain": 0.03},
                          grid={"input_lens": [16], "output_lens": [2, 64], "batch_sizes": [1, 2, 4, 8]})
    out = str(tmp_path / "out")
    outcome = run_sweep(params, out_dir=out, progress=False, max_minutes=60)
    df = load_results(out)
    assert df.loc[df["output_len"] == 64, "batch"].max() == 4  # O = 64 stopped on a plateau at B = 4
    assert df.loc[df["output_len"] == 2, "batch"].max() == 8  # O = 2 went on, measured by the O = 64 run
    assert not outcome.failures and not outcome.stopped_early


# ---- memory checked before building ----------------------------------------------------------------

def test_a_model_that_cannot_fit_is_predicted_out_of_memory_and_never_built(tmp_path, monkeypatch):
    """With 2 GB available, llama2-13b in bf16 (26 GB of weights) is refused unbuilt: every point of it an
    "oom" row that says predicted, with the numbers; the tiny model beside it fits and is measured."""
    from helpers import write_params

    import perfkit.memory_check as memory_check
    import perfkit.sweep.units as units
    from perfkit.sweep import run_sweep

    built = []
    real_build = units.build_model

    def build(name, *args, **kwargs):
        built.append(name)
        return real_build(name, *args, **kwargs)

    monkeypatch.setattr(units, "build_model", build)
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: 2 * 10**9)
    params = write_params(tmp_path / "p.yaml", models=["tiny-llama2-13b", "llama2-13b"],
                          systems=[{"label": "cpu", "dtype": "bfloat16"}],
                          grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2]})
    out = run_sweep(params, out_dir=str(tmp_path / "out"), progress=False)
    assert set(built) == {"tiny-llama2-13b"}  # (once per pass)
    big = [r for r in out.ooms if r["model"] == "llama2-13b"]
    assert len(big) == 1 and big[0]["batch"] == 1  # the search stops at the first out-of-memory batch
    assert "out of memory predicted, not built: llama2-13b in bfloat16 needs 26.0 GB of weights" in big[0]["error"]
    assert "2.0 GB available on cpu" in big[0]["error"]
    assert out.measured == 3 and not out.failures


def test_a_point_whose_cache_cannot_fit_is_predicted_out_of_memory(tmp_path, monkeypatch):
    """The model fits; the batch's KV cache and activations do not: that batch is "oom" (predicted), not run."""
    import perfkit.memory_check as memory_check
    from perfkit.memory_check import PredictedOutOfMemory, check_build, check_point

    monkeypatch.setattr(memory_check, "available_bytes", lambda device: 3 * 2**30)
    check_build("tiny-llama3-8b", "float32", "cpu")  # a few MB of weights: fits
    check_point("tiny-llama3-8b", "float32", "cpu", 1, 128, 8)
    with pytest.raises(PredictedOutOfMemory, match=r"batch 4096 needs .* of KV cache .* conservative estimate"):
        check_point("tiny-llama3-8b", "float32", "cpu", 4096, 2048, 8)
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: None)  # unknown: never refused
    check_point("tiny-llama3-8b", "float32", "cpu", 4096, 2048, 8)


# ---- systems that need their own environment ---------------------------------------------------------

@pytest.mark.slow
def test_a_system_with_its_own_environment_runs_in_a_child_that_has_it(tmp_path):
    """Two systems alike but for `env`: the one whose environment sets the fault hook gets its injected
    errors (so the variable was in its process), the other none; both are their own points, each row
    records its environment, and this process's environment is as it was."""
    import json
    import os

    from helpers import write_params

    from perfkit.sweep import run_sweep

    before = {k: os.environ.get(k) for k in ("PERFKIT_SWEEP_FAULT", "OMP_NUM_THREADS")}
    params = write_params(tmp_path / "p.yaml", models=["tiny-llama3-8b"],
                          systems=[{"label": "plain"},
                                   {"label": "own", "env": {"PERFKIT_SWEEP_FAULT": "error:2", "OMP_NUM_THREADS": 1}}],
                          grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2]})
    out = run_sweep(params, out_dir=str(tmp_path / "out"), progress=False)
    assert {k: os.environ.get(k) for k in before} == before
    rows = {(r["system"], r["batch"]): r for r in _rows(tmp_path / "out")}
    assert {k: r["status"] for k, r in rows.items()} == {("plain", 1): "ok", ("plain", 2): "ok",
                                                       ("own", 1): "ok", ("own", 2): "error"}
    assert "injected failure at batch 2" in rows[("own", 2)]["error"] and not out.lost
    assert json.loads(rows[("own", 1)]["system_env"]) == {"OMP_NUM_THREADS": "1", "PERFKIT_SWEEP_FAULT": "error:2"}
    assert rows[("plain", 1)]["system_env"] is None
    assert rows[("own", 1)]["point_key"] != rows[("plain", 1)]["point_key"]
    again = run_sweep(params, out_dir=str(tmp_path / "out"), progress=False)
    assert again.measured == 1 and again.skipped == 3  # only the failed point is measured again (errors retry)


def test_an_environment_is_checked_like_any_key():
    from helpers import params_dict

    from perfkit.params import parse_params

    with pytest.raises(UsageError, match=r"systems\[0\].env: 'not a name' is not a variable name"):
        parse_params(params_dict(systems=[{"label": "x", "env": {"not a name": 1}}]))
    with pytest.raises(UsageError, match=r"systems\[0\].env.A: \[1\] is not a string or number"):
        parse_params(params_dict(systems=[{"label": "x", "env": {"A": [1]}}]))
    (s,) = parse_params(params_dict(systems=[{"label": "x", "env": {"B": 2, "A": "x"}}])).systems
    assert s.env == (("A", "x"), ("B", "2")) and s.env_key() == "cpu|env:x"


def _rows(out_dir) -> list[dict]:
    from servers import rows_of

    return rows_of(out_dir)
