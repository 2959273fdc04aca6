"""perfkit.compare against hand-made results whose ratios are known exactly."""

import numpy as np
import pandas as pd
import pytest
from helpers import make_row, modules_loaded_by, study_rows, write_rows

from perfkit.compare import BETTER, NOISE, WORSE, compare, load_side, ratio, verdict
from perfkit.errors import UsageError


@pytest.fixture
def two_sides(tmp_path):
    # The target is exactly twice as fast everywhere: every ratio is 0.5, with no noise at all.
    t = write_rows(tmp_path / "target", study_rows("fast", 0.5, extra_points=[("tiny-llama2-13b", 64, 8, 1)]))
    b = write_rows(tmp_path / "baseline", study_rows("slow", 1.0, extra_points=[("tiny-mistral-7b", 16, 8, 1)]))
    return t, b


def test_ratio_convention_both_directions():
    # Latency: target/baseline. Throughput: baseline/target. Both < 1 when the target is better.
    assert ratio("latency", 5.0, 10.0) == 0.5
    assert ratio("throughput", 200.0, 100.0) == 0.5
    assert ratio("latency", 20.0, 10.0) == 2.0
    assert verdict(0.4, 0.6) == BETTER and verdict(1.1, 1.3) == WORSE and verdict(0.9, 1.1) == NOISE


def test_exact_ratios_and_verdicts(two_sides):
    c = compare(*two_sides)
    assert c.target == "fast" and c.baseline == "slow"
    pts = c.points
    assert set(pts["metric"]) == {"ttft_ms", "tpot_ms", "e2e_ms", "prefill_tok_s", "decode_tok_s", "output_tok_s"}
    # 2 models x 3 batches matched, 6 metrics each
    assert len(pts) == 2 * 3 * 6
    np.testing.assert_allclose(pts["ratio"], 0.5)
    np.testing.assert_allclose(pts["ratio_lo"], 0.5)
    np.testing.assert_allclose(pts["ratio_hi"], 0.5)
    assert (pts["verdict"] == BETTER).all()
    # the values themselves are the sides' medians / throughputs
    r = pts[(pts.model == "tiny-llama2-13b") & (pts.batch == 2) & (pts.metric == "ttft_ms")].iloc[0]
    assert r["target"] == pytest.approx(10.0) and r["baseline"] == pytest.approx(20.0)
    r = pts[(pts.model == "tiny-llama2-13b") & (pts.batch == 2) & (pts.metric == "prefill_tok_s")].iloc[0]
    assert r["target"] == pytest.approx(2 * 32 / 0.010) and r["baseline"] == pytest.approx(2 * 32 / 0.020)


def test_study_level_max_throughput_with_batches(two_sides):
    c = compare(*two_sides)
    st = c.study
    assert set(st["metric"]) == {"ttft_ms", "max_prefill_tok_s", "single_user_tok_s", "tpot_ms", "max_output_tok_s"}
    np.testing.assert_allclose(st["ratio"], 0.5)
    mo = st[(st.metric == "max_output_tok_s") & (st.model == "tiny-mistral-7b")].iloc[0]
    # output tok/s = B·8 / e2e with e2e = 10B + 7(5+B) ms at scale 1: B=2 -> 16/0.069, B=4 -> 32/0.103 (the max)
    assert mo["baseline_batch"] == 4 and mo["target_batch"] == 4
    assert mo["baseline"] == pytest.approx(32 / 0.103)
    assert mo["target"] == pytest.approx(32 / 0.0515)
    # the extra points (I=64 only on target, I=16 only on baseline) are not in the study tables
    assert set(st["input_len"]) == {32}


def test_max_at_different_batches(tmp_path):
    # Baseline peaks at B=2 (B=4 is slower); target peaks at B=4: the study ratio compares the two maxima.
    base = [make_row("b", "tiny-llama2-13b", 32, 8, 1, [10] * 3, [80] * 3),
            make_row("b", "tiny-llama2-13b", 32, 8, 2, [20] * 3, [100] * 3),    # 160 tok/s
            make_row("b", "tiny-llama2-13b", 32, 8, 4, [40] * 3, [400] * 3)]    # 80 tok/s
    targ = [make_row("t", "tiny-llama2-13b", 32, 8, 1, [10] * 3, [80] * 3),
            make_row("t", "tiny-llama2-13b", 32, 8, 2, [20] * 3, [100] * 3),    # 160 tok/s
            make_row("t", "tiny-llama2-13b", 32, 8, 4, [40] * 3, [100] * 3)]    # 320 tok/s
    c = compare(write_rows(tmp_path / "t", targ), write_rows(tmp_path / "b", base))
    mo = c.study[c.study.metric == "max_output_tok_s"].iloc[0]
    assert (mo["target_batch"], mo["baseline_batch"]) == (4, 2)
    assert mo["ratio"] == pytest.approx(160 / 320)
    assert mo["verdict"] == BETTER
    # same B=1 on both sides: single-user throughput identical, ratio exactly 1, within noise
    su = c.study[c.study.metric == "single_user_tok_s"].iloc[0]
    assert su["ratio"] == pytest.approx(1.0) and su["verdict"] == NOISE


def test_noise_gives_interval_containing_one_and_is_seeded(tmp_path):
    t = write_rows(tmp_path / "t", [make_row("t", "tiny-llama2-13b", 32, 8, 1, [10, 20, 30], [100, 110, 120])])
    b = write_rows(tmp_path / "b", [make_row("b", "tiny-llama2-13b", 32, 8, 1, [15, 20, 25], [100, 110, 120])])
    c1 = compare(t, b, seed=0)
    r = c1.points[c1.points.metric == "ttft_ms"].iloc[0]
    assert r["ratio"] == pytest.approx(1.0)
    assert r["ratio_lo"] < 1 < r["ratio_hi"] and r["verdict"] == NOISE
    # reproducible: the same seed gives the same interval, a different seed may not
    c2 = compare(t, b, seed=0)
    pd.testing.assert_frame_equal(c1.points, c2.points)
    pd.testing.assert_frame_equal(c1.study, c2.study)


def test_worse_target_is_worse(tmp_path):
    t = write_rows(tmp_path / "t", [make_row("t", "tiny-llama2-13b", 32, 8, 1, [30, 31, 32], [100, 101, 102])])
    b = write_rows(tmp_path / "b", [make_row("b", "tiny-llama2-13b", 32, 8, 1, [10, 11, 12], [100, 101, 102])])
    r = compare(t, b).points.set_index("metric")
    assert r.loc["ttft_ms", "ratio"] == pytest.approx(31 / 11)
    assert r.loc["ttft_ms", "verdict"] == WORSE
    assert r.loc["prefill_tok_s", "ratio"] == pytest.approx(31 / 11)  # throughput ratio = latency ratio
    assert r.loc["prefill_tok_s", "verdict"] == WORSE


def test_one_sided_points_are_listed(two_sides):
    c = compare(*two_sides)
    cols = ["model", "input_len", "output_len", "batch"]
    assert c.only_target[cols].values.tolist() == [["tiny-llama2-13b", 64, 8, 1]]
    assert c.only_baseline[cols].values.tolist() == [["tiny-mistral-7b", 16, 8, 1]]


def test_oom_on_one_side_is_listed_not_compared(tmp_path):
    t = write_rows(tmp_path / "t", study_rows("t", 0.5, models=("tiny-llama2-13b",)) +
                   [make_row("t", "tiny-llama2-13b", 32, 8, 8, [], [], status="oom")])
    b = write_rows(tmp_path / "b", study_rows("b", 1.0, models=("tiny-llama2-13b",)) +
                   [make_row("b", "tiny-llama2-13b", 32, 8, 8, [80] * 3, [200] * 3)])
    c = compare(t, b)
    assert c.not_ok[["batch", "target_status", "baseline_status"]].values.tolist() == [[8, "oom", "ok"]]
    assert 8 not in set(c.points["batch"])


def test_mismatch_error_names_what_differs(tmp_path):
    t = write_rows(tmp_path / "t", study_rows("t", 1.0, models=("tiny-llama2-13b",)))
    b = write_rows(tmp_path / "b", study_rows("b", 1.0, models=("tiny-mistral-7b",)))
    with pytest.raises(UsageError, match="share no models") as e:
        compare(t, b)
    assert "tiny-llama2-13b" in str(e.value) and "tiny-mistral-7b" in str(e.value)
    b2 = write_rows(tmp_path / "b2", study_rows("b", 1.0, models=("tiny-llama2-13b",), i=64, batches=(8,)))
    with pytest.raises(UsageError, match="share no input lengths, no batches"):
        compare(t, b2)


def test_system_labels_select_from_one_directory(tmp_path):
    d = write_rows(tmp_path / "both", study_rows("fast", 0.5) + study_rows("slow", 1.0))
    with pytest.raises(UsageError, match="several systems"):
        load_side(d)
    with pytest.raises(UsageError, match="'nope' is not in its results"):
        compare(d, d, "nope", "slow")
    c = compare(d, d, "fast", "slow")
    np.testing.assert_allclose(c.study["ratio"], 0.5)
    assert c.systems.set_index("side").loc["target", "system"] == "fast"


def test_prompt_phase_pools_output_lengths_like_summarize(tmp_path):
    import perfkit

    # ttft at (I=32, B=1) measured at O=4 and O=8: the study ttft pools both, as the report's table does.
    t = write_rows(tmp_path / "t", [make_row("t", "tiny-llama2-13b", 32, 4, 1, [10, 12, 14], [30] * 3),
                                    make_row("t", "tiny-llama2-13b", 32, 8, 1, [16, 18, 20], [60] * 3)])
    b = write_rows(tmp_path / "b", [make_row("b", "tiny-llama2-13b", 32, 4, 1, [20] * 3, [30] * 3),
                                    make_row("b", "tiny-llama2-13b", 32, 8, 1, [20] * 3, [60] * 3)])
    c = compare(t, b)
    tt = c.study[c.study.metric == "ttft_ms"].iloc[0]
    assert tt["target"] == pytest.approx(15.0)  # median of 10,12,14,16,18,20
    assert tt["ratio"] == pytest.approx(15 / 20)
    from perfkit.results import load_results

    s = perfkit.summarize(load_results(t))["ttft"]
    assert s["ttft_ms"].iloc[0] == pytest.approx(tt["target"])


def test_compare_and_report_modules_import_no_plotting_or_notebook_machinery():
    assert modules_loaded_by("perfkit.compare, perfkit.report.tables", (
        "matplotlib", "papermill", "nbformat", "nbconvert", "IPython", "jupyter_client")) == []


def test_cli_compare_prints_study_ratios_and_writes_csv(two_sides, tmp_path, capsys):
    from perfkit.cli import main

    out = tmp_path / "csv"
    assert main(["compare", *two_sides, "--points", "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fast vs slow: of 10 study figures, target better in 10" in text
    # each side's max with the batch it came from; every ratio 0.5 with a zero-width interval
    mo = [ln for ln in text.splitlines() if "tiny-mistral-7b" in ln and "max_output_tok_s" in ln]
    assert len(mo) == 1 and mo[0].count("@B=4") == 2
    assert "0.500 [0.500, 0.500] target better" in mo[0]
    assert "point ratios" in text
    # workloads on one side only are listed, not dropped
    assert "1 workload(s) measured on the target only" in text and "1 workload(s) measured on the baseline only" in text
    c = compare(*two_sides)
    study = pd.read_csv(out / "study.csv")
    points = pd.read_csv(out / "points.csv")
    assert len(study) == len(c.study) == 10 and len(points) == len(c.points)
    np.testing.assert_allclose(study["ratio"], c.study["ratio"])
    assert list(study["verdict"].unique()) == [BETTER]


def test_cli_compare_selects_systems_with_dir_colon_label(tmp_path, capsys):
    from perfkit.cli import main

    d = str(write_rows(tmp_path / "both", study_rows("fast", 0.5) + study_rows("slow", 1.0)))
    assert main(["compare", f"{d}:slow", f"{d}:fast"]) == 0  # the other way round: the target is slower
    text = capsys.readouterr().out
    assert "slow vs fast: of 10 study figures, target better in 0, worse in 10" in text
    assert "2.000 [2.000, 2.000] target worse" in text


def test_one_system_on_two_machines_is_told_apart_by_side(tmp_path):
    """The usual comparison: one label on both sides (one system on two machines, or before and after an
    upgrade). Every table, plot and line that names the two sides names them by side as well."""
    pytest.importorskip("matplotlib")  # the report extra (a core-only install has none)
    from helpers import call_cli

    from perfkit.report import service_level, tables
    from perfkit.slo import DEFAULT_SLOS, compare_slo, frontier_ratios

    t = write_rows(tmp_path / "after", study_rows("same", 0.5))
    b = write_rows(tmp_path / "before", study_rows("same", 1.0))
    c = compare(t, b, "same", "same", n_boot=200)
    units = {"ttft_ms": "ms", "tpot_ms": "ms"}
    for metric in c.study["metric"].unique():  # a Styler refuses columns of one name
        page = tables.study_comparison(c, metric).to_html()
        unit = units.get(metric, "tok/s")
        assert f"same (target) ({unit})" in page and f"same (baseline) ({unit})" in page, metric
    at_slo = compare_slo(t, b, DEFAULT_SLOS, "same", "same", n_boot=200)
    page = service_level.slo_comparison_table(at_slo, c.target, c.baseline, c.confidence).to_html()
    assert "same (target) (tok/s)" in page and "same (baseline) (tok/s)" in page
    page = service_level.frontier_comparison_table(frontier_ratios(t, b, "same", "same"), c.target,
                                                   c.baseline).to_html()
    assert "same (target) (tok/s)" in page and "same (baseline) (tok/s)" in page
    # a Pareto plot whose series are the sides, not the (shared) label: one series each
    sides = pd.concat([load_side(t, "same").assign(side="target"), load_side(b, "same").assign(side="baseline")])
    (_, fig), *_ = service_level.pareto_figures(sides, DEFAULT_SLOS, hue="side")
    assert sorted(x.get_text() for x in fig.axes[0].get_legend().get_texts()) == ["baseline", "target"]
    r = call_cli("compare", f"{t}:same", f"{b}:same", "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    assert "same (target) vs same (baseline): of 10 study figures, target better in 10" in r.stdout


@pytest.mark.parametrize("extra,message", [
    ([], "target results hold several systems (fast, slow): name the target system"),
    (["--confidence", "95"], "--confidence must be between 0 and 1"),
    (["--n-boot", "5"], "--n-boot must be from 100 to 100,000"),
    (["--n-boot", "100000000"], "--n-boot must be from 100 to 100,000"),
    (["--seed", "-1"], "--seed must be an integer from 0"),
    (["--csv", "FILE"], "is a file, expected a directory for study.csv"),
    (["--csv", "FILE/sub"], "lies under the file"),
    (["--target-system", "slow"], "the target system is named twice, 'fast'"),
])
def test_cli_compare_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    from perfkit.cli import main

    d = str(write_rows(tmp_path / "both", study_rows("fast", 0.5) + study_rows("slow", 1.0)))
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    extra = [x.replace("FILE", str(a_file)) for x in extra]
    sides = [d, f"{d}:slow"] if not extra else [f"{d}:fast", f"{d}:slow"]
    assert main(["compare", *sides, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err
    assert a_file.read_text() == "keep me"


def test_cli_compare_refuses_a_file_for_a_results_directory(tmp_path, capsys):
    from perfkit.cli import main

    d = str(write_rows(tmp_path / "d", study_rows("fast", 0.5)))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert main(["compare", str(a_file), d]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, expected a results directory" in err


def test_sides_split_where_the_directory_exists(tmp_path, monkeypatch):
    from perfkit.compare import parse_side

    monkeypatch.chdir(tmp_path)
    (tmp_path / "res").mkdir()
    (tmp_path / "a:b").mkdir()
    assert parse_side("res") == ("res", None)
    assert parse_side("res:gpu:static") == ("res", "gpu:static")  # a label may hold a colon
    assert parse_side("a:b") == ("a:b", None)  # a directory may too
    assert parse_side("a:b:fast") == ("a:b", "fast")
    assert parse_side("res:") == ("res", None)
    assert parse_side("nope:x") == ("nope", "x")  # loading it then says 'nope' does not exist


def test_a_row_without_samples_does_not_shift_the_batch_of_the_max(tmp_path):
    # B=2's e2e samples were lost: the max over B = 4, 8 must name the batch it came from (8), not its
    # position in the list of rows that had samples.
    rows_t = study_rows("t", 0.5, models=("tiny-llama2-13b",), batches=(1, 2, 4, 8))
    rows_t[1]["e2e_ms_samples"] = [float("nan")] * 3
    rows_b = study_rows("b", 1.0, models=("tiny-llama2-13b",), batches=(1, 2, 4, 8))
    c = compare(write_rows(tmp_path / "t", rows_t), write_rows(tmp_path / "b", rows_b))
    mo = c.study[c.study.metric == "max_output_tok_s"].iloc[0]
    assert mo["target_batch"] == 8 and mo["baseline_batch"] == 8
    assert mo["target"] == pytest.approx(8 * 8 / ((80 + 7 * 13) * 0.5 / 1e3))
    # a row whose ttft and e2e samples do not pair up has no tpot samples, rather than a crash
    rows_t[0]["e2e_ms_samples"] = []
    c = compare(write_rows(tmp_path / "t2", rows_t), write_rows(tmp_path / "b2", rows_b))
    assert "tpot_ms" not in set(c.study[c.study.input_len == 32]["metric"])


def test_one_repeat_gives_a_ratio_but_no_interval_and_no_verdict(tmp_path):
    """A single repeat resamples to itself: a zero-width interval would read as certainty."""
    t = write_rows(tmp_path / "t", [make_row("one", "tiny-llama2-13b", 32, 8, b, [5.0 * b], [40.0 * b])
                                    for b in (1, 2)])
    b = write_rows(tmp_path / "b", [make_row("two", "tiny-llama2-13b", 32, 8, b, [10.0 * b], [80.0 * b])
                                    for b in (1, 2)])
    c = compare(t, b)
    assert set(c.study["verdict"]) == {"too few repeats"}
    assert c.study["ratio"].notna().all() and c.study["ratio_lo"].isna().all()
