import math

import pandas as pd
import pytest

import perfkit
from perfkit.metrics import point_metrics


def row(model, i, o, b, status="ok", ttft_ms=(10.0, 12.0, 14.0), e2e_ms=None, stop="", derived=None,
        created="2026-01-01T00:00:00Z", system="gpu"):
    e2e_ms = e2e_ms or [t + 5.0 * o for t in ttft_ms]
    r = {"system": system, "model": model, "input_len": i, "output_len": o, "batch": b, "status": status,
         "error": None if status == "ok" else "x", "search_stop": stop, "derived_from_output_len": derived,
         "created_utc": created}
    if status == "ok":
        r.update(point_metrics(b, i, o, [t / 1e3 for t in ttft_ms], [t / 1e3 for t in e2e_ms]))
        r["ttft_ms_samples"], r["e2e_ms_samples"] = list(ttft_ms), list(e2e_ms)
    else:
        r.update(point_metrics(b, i, o, [], []))
        r["ttft_ms_samples"] = r["e2e_ms_samples"] = None
    return r


def frame():
    rows = [
        # (m, I=100): O=10 at B=1, 2, 4, 8 (OOM at 8); O=20 at B=1, 2 (plateau at 2)
        row("m", 100, 10, 1, ttft_ms=(10, 11, 30)),
        row("m", 100, 20, 1, ttft_ms=(12, 13, 14)),
        row("m", 100, 10, 2, ttft_ms=(15, 15, 15), e2e_ms=(40, 40, 40)),
        row("m", 100, 10, 4, ttft_ms=(20, 20, 20), e2e_ms=(50, 50, 50)),
        row("m", 100, 10, 8, status="oom", stop="oom"),
        row("m", 100, 20, 2, ttft_ms=(16, 16, 16), e2e_ms=(100, 100, 100), stop="plateau"),
        # a derived row shares the ttft of the run it was read off: it must not be pooled again
        row("m", 100, 5, 1, ttft_ms=(1000, 1000, 1000), derived=20),
        row("m", 100, 5, 2, ttft_ms=(1, 1, 1), e2e_ms=(9, 9, 9), derived=20, stop="grid_end"),
        # an older measurement of the same point is superseded by the newer one
        row("m", 100, 10, 4, ttft_ms=(1, 1, 1), e2e_ms=(2, 2, 2), created="2025-01-01T00:00:00Z"),
    ]
    return pd.DataFrame(rows)


def test_tables_and_their_columns():
    t = perfkit.summarize(frame())
    assert set(t) == {"ttft", "prefill_max", "single_user", "multi_user_max", "oom"}
    for name, cols in {
        "ttft": ["system", "model", "input_len", "ttft_ms", "ttft_iqr_ms"],
        "prefill_max": ["system", "model", "input_len", "max_prefill_tok_s", "batch"],
        "single_user": ["system", "model", "input_len", "output_len", "output_tok_s", "e2e_ms", "tpot_ms",
                        "decode_tok_s"],
        "multi_user_max": ["system", "model", "input_len", "output_len", "max_output_tok_s", "batch", "stop_reason"],
        "oom": ["system", "model", "input_len", "output_len", "batch"],
    }.items():
        assert set(cols) <= set(t[name].columns), name


def test_ttft_pools_the_batch_one_samples_of_every_measured_output_length():
    ttft = perfkit.summarize(frame())["ttft"]
    assert len(ttft) == 1
    r = ttft.iloc[0]
    samples = [10, 11, 30, 12, 13, 14]  # the derived row's 1000s are not counted
    assert r["ttft_ms"] == pytest.approx(pd.Series(samples).median())
    q = pd.Series(samples).quantile([0.25, 0.75])
    assert r["ttft_iqr_ms"] == pytest.approx(q[0.75] - q[0.25])


def test_prefill_max_is_the_best_batch_above_one():
    pm = perfkit.summarize(frame())["prefill_max"].iloc[0]
    # B=2: ttft samples 15 (O=10) and 16 (O=20) pooled -> 15.5 ms -> 2*100/0.0155; B=4: 20 ms -> 4*100/0.02
    assert pm["batch"] == 4 and pm["max_prefill_tok_s"] == pytest.approx(400 / 0.020)


def test_multi_user_max_with_stop_reasons_and_the_oom_table():
    t = perfkit.summarize(frame())
    mu = t["multi_user_max"].set_index("output_len")
    assert mu.loc[10, "batch"] == 4 and mu.loc[10, "max_output_tok_s"] == pytest.approx(4 * 10 / 0.050)
    assert mu.loc[10, "stop_reason"] == "oom"
    assert mu.loc[20, "batch"] == 2 and mu.loc[20, "stop_reason"] == "plateau"
    assert mu.loc[5, "stop_reason"] == "grid_end" and mu.loc[5, "derived_from_output_len"] == 20
    oom = t["oom"]
    assert oom[["input_len", "output_len", "batch"]].values.tolist() == [[100, 10, 8]]
    su = t["single_user"].set_index("output_len")
    assert su.loc[10, "output_tok_s"] == pytest.approx(10 / (min(11 + 50, 61) / 1e3))  # median e2e 61 ms
    assert math.isnan(su.loc[20, "derived_from_output_len"]) and su.loc[5, "derived_from_output_len"] == 20


def test_a_search_that_only_ran_out_of_memory_still_has_its_row():
    df = pd.DataFrame([row("m", 64, 8, 1), row("m", 64, 8, 2, status="oom", stop="oom")])
    mu = perfkit.summarize(df)["multi_user_max"].iloc[0]
    assert mu["stop_reason"] == "oom" and pd.isna(mu["batch"]) and math.isnan(mu["max_output_tok_s"])


def test_summarize_works_after_the_tables_module_is_imported(tmp_path):
    import perfkit.summary  # a submodule import must not shadow perfkit.summarize

    assert set(perfkit.summarize(frame())) == {"ttft", "prefill_max", "single_user", "multi_user_max", "oom"}
    from perfkit.results import COLUMNS

    empty = perfkit.summarize(pd.DataFrame(columns=COLUMNS))
    assert all(len(v) == 0 for v in empty.values())


def test_an_unfinished_search_is_incomplete_not_grid_end():
    # A sweep stopped by its time budget after B=2 of a longer grid: nothing says the grid ended.
    df = pd.DataFrame([row("m", 64, 8, 1), row("m", 64, 8, 2, e2e_ms=(20, 20, 20))])
    assert perfkit.summarize(df)["multi_user_max"].iloc[0]["stop_reason"] == "incomplete"
    df = df.drop(columns=["search_stop"])  # rows from `perfkit run`: never searched
    assert perfkit.summarize(df)["multi_user_max"].iloc[0]["stop_reason"] == "not searched"
    # a search that passed over a noisy plateau and ran to the grid's end keeps saying so
    df = pd.DataFrame([row("m", 64, 8, 1), row("m", 64, 8, 2, e2e_ms=(20, 20, 20), stop="grid_end_noisy")])
    assert perfkit.summarize(df)["multi_user_max"].iloc[0]["stop_reason"] == "grid_end_noisy"


def test_static_prompt_phase_uses_its_shortest_output_only():
    # static sizes its cache for I + O, so a longer O means a longer prompt attention: not pooled.
    rows = [row("m", 64, 8, 1, ttft_ms=(10, 10, 10)), row("m", 64, 64, 1, ttft_ms=(30, 30, 30))]
    for r in rows:
        r["backend"] = "static"
    assert perfkit.summarize(pd.DataFrame(rows))["ttft"].iloc[0]["ttft_ms"] == 10
    for r in rows:
        r["backend"] = "hf-loop"  # the same work whatever O: both are pooled
    assert perfkit.summarize(pd.DataFrame(rows))["ttft"].iloc[0]["ttft_ms"] == 20


# ---- perfkit summary (the command line) -------------------------------------------------------------

def _results_on_an_h100(tmp_path):
    """A results directory of llama3-8b bf16 rows on an H100 (by name), with a probe of that device."""
    import json

    from perfkit.results import write_point
    from perfkit.rows import with_provenance

    env = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "torch_version": "2.11.0"}
    out = tmp_path / "res"
    rows = [row("llama3-8b", 128, 8, 1, ttft_ms=(20.0, 20.0, 20.0), e2e_ms=(62.0, 62.0, 62.0)),
            row("llama3-8b", 128, 8, 2, ttft_ms=(30.0, 30.0, 30.0), e2e_ms=(100.0, 100.0, 100.0), stop="grid_end"),
            row("llama3-8b", 128, 8, 4, status="oom", stop="oom")]
    for r in rows:
        r.update(dtype="bfloat16", backend="static", backend_mode="cuda-graph")
        write_point(str(out), with_provenance(r, "run-1", env, {k: r[k] for k in ("model", "input_len", "batch")}))
    (out / "probes").mkdir()
    (out / "probes" / "p.json").write_text(json.dumps({"device_name": env["device_name"],
                                                       "copy_bandwidth_bytes_s": 3.0e12,
                                                       "matmul_flops": {"bfloat16": 700e12}}))
    return out


def test_cli_summary_prints_the_study_tables_and_speed_of_light(tmp_path, capsys):
    from perfkit import roofline
    from perfkit.cli import main

    out = _results_on_an_h100(tmp_path)
    assert main(["summary", str(out), "--points", "--csv", str(tmp_path / "csv")]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{out}: 3 points on NVIDIA H100 80GB HBM3 (2 ok, 1 out of memory, 0 failed)")
    for name in ("every point", "ttft:", "prefill_max:", "single_user:", "multi_user_max:", "oom:", "speed_of_light:"):
        assert f"--- {name}" in text, name
    # the multi-user max (B=2: 16 tokens in 100 ms) and why the search stopped (B=4 ran out of memory)
    mu = next(ln for ln in text.split("--- multi_user_max")[1].splitlines() if "llama3-8b" in ln)
    assert " 160 " in mu and " oom" in mu
    # MFU at B=1 against the H100's spec (989 TFLOP/s dense bf16) and its probe (700), as percentages
    flops = roofline.prefill_flops("llama3-8b", 1, 128)
    sol = next(ln for ln in text.split("--- speed_of_light")[1].splitlines() if "llama3-8b" in ln)
    assert f"{flops / 989e12 / 0.020:.1%}" in sol and f"{flops / 700e12 / 0.020:.1%}" in sol
    csv = pd.read_csv(tmp_path / "csv" / "speed_of_light.csv")
    assert len(csv) == 2 and csv["mfu_probed"].iloc[0] == pytest.approx(flops / 700e12 / 0.020)
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == sorted(
        f"{n}.csv" for n in ("ttft", "prefill_max", "single_user", "multi_user_max", "oom", "speed_of_light",
                             "pareto", "slo"))


def test_cli_summary_says_unknown_where_no_peak_is_known(tmp_path, capsys):
    from perfkit.cli import main
    from perfkit.results import write_point

    out = tmp_path / "cpu"
    write_point(str(out), {**row("tiny-llama3-8b", 16, 4, 1), "dtype": "float32", "device_name": "Some CPU",
                           "point_key": "k1"})
    assert main(["summary", str(out)]) == 0
    sol = capsys.readouterr().out.split("--- speed_of_light")[1]
    line = next(ln for ln in sol.splitlines() if "tiny-llama3-8b" in ln)
    assert line.count("unknown") == 4  # spec and probed, MFU and MBU: no guess


@pytest.mark.parametrize("args,message", [
    (["summary", "NOPE"], "nope' does not exist"),
    (["summary", "RES", "--system", "x"], "system 'x' is not in"),
    (["summary", "RES", "--csv", "FILE"], "is a file, expected a directory"),
    (["summary", "FILE"], "is a file, expected a results directory"),
    (["summary", "EMPTY"], "no results in"),
])
def test_cli_summary_bad_input_is_one_line(tmp_path, capsys, args, message):
    from perfkit.cli import main

    res = _results_on_an_h100(tmp_path)
    (tmp_path / "empty").mkdir()
    a_file = tmp_path / "f.csv"
    a_file.write_text("keep")
    subst = {"NOPE": str(tmp_path / "nope"), "RES": str(res), "FILE": str(a_file), "EMPTY": str(tmp_path / "empty")}
    assert main([subst.get(a, a) for a in args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
    assert a_file.read_text() == "keep"
