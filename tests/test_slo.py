"""perfkit.slo against hand-built results rows whose frontier, bounded max and ratios are known exactly."""

import math

import numpy as np
import pandas as pd
import pytest
from helpers import modules_loaded_by

from perfkit.compare import BETTER, NOISE
from perfkit.errors import UsageError
from perfkit.metrics import point_metrics
from perfkit.slo import (
    DEFAULT_SLOS,
    SLO,
    bounded_max,
    compare_slo,
    frontier,
    frontier_ratios,
    interactivity_points,
    oom_batches,
    parse_slo,
    parse_slo_params,
    parse_slos,
)

O = 11  # ten decode steps per repeat: tpot = (e2e - ttft) / 10 and output_tok_s = B·11 / e2e
INTERACTIVE = SLO("interactive", 500.0, 30.0)


def point(b, ttft_repeats_ms, tpot_repeats_ms, *, system="sys", model="m", i=32, o=O, status="ok", **extra):
    """One results row built the way perfkit builds it, from per-repeat ttft and tpot in ms (a number: 3
    equal repeats); `extra` overrides columns."""
    ttft = [float(t) for t in (ttft_repeats_ms if isinstance(ttft_repeats_ms, list) else [ttft_repeats_ms] * 3)]
    tpot = [float(t) for t in (tpot_repeats_ms if isinstance(tpot_repeats_ms, list)
                               else [tpot_repeats_ms] * len(ttft))]
    e2e = [t + p * (o - 1) for t, p in zip(ttft, tpot)]
    row = {"system": system, "model": model, "input_len": i, "output_len": o, "batch": b, "status": status,
           "derived_from_output_len": None}
    row.update(point_metrics(b, i, o, [t / 1e3 for t in ttft], [e / 1e3 for e in e2e]))
    row.update({"ttft_ms_samples": ttft, "e2e_ms_samples": e2e,
                "decode_step_ms_samples": [[p] * (o - 1) for p in tpot]})
    row.update(extra)
    return row


def failed(b, status="oom", *, system="sys", model="m", i=32, o=O, **extra):
    """A row without timings (out of memory or error), as perfkit writes it."""
    row = {"system": system, "model": model, "input_len": i, "output_len": o, "batch": b, "status": status,
           "derived_from_output_len": None, "ttft_ms": np.nan, "tpot_ms": np.nan, "e2e_ms": np.nan,
           "output_tok_s": np.nan, "decode_tok_s": np.nan, "ttft_ms_samples": None, "e2e_ms_samples": None,
           "decode_step_ms_samples": None}
    row.update(extra)
    return row


def out_tok_s(b, ttft_ms, tpot_ms, o=O):
    return b * o / ((ttft_ms + tpot_ms * (o - 1)) / 1e3)


# (batch, ttft_ms, tpot_ms): interactivity 1000/tpot, output B·11/e2e
GRID = [(1, 100, 10),    # 100 tok/s per user,  55.0 tok/s
        (2, 150, 12),    # 83.3,                81.5
        (3, 400, 15),    # 66.7,                60.0   beaten by B=2 on both
        (4, 300, 20),    # 50.0,                88.0
        (8, 600, 25),    # 40.0,               103.5
        (16, 1200, 60)]  # 16.7,                97.8   beaten by B=8 on both


def grid_rows(**kw):
    return [point(b, t, p, **kw) for b, t, p in GRID]


# ---- frontier ---------------------------------------------------------------------------------------------

def test_frontier_keeps_only_unbeaten_points_sorted_by_interactivity():
    f = frontier(pd.DataFrame(grid_rows()))
    assert list(f.columns) == ["system", "model", "input_len", "output_len", "batch", "interactivity_tok_s",
                               "output_tok_s"]
    assert f["batch"].tolist() == [8, 4, 2, 1]
    np.testing.assert_allclose(f["interactivity_tok_s"], [1000 / 25, 1000 / 20, 1000 / 12, 1000 / 10])
    np.testing.assert_allclose(f["output_tok_s"], [out_tok_s(8, 600, 25), out_tok_s(4, 300, 20),
                                                   out_tok_s(2, 150, 12), out_tok_s(1, 100, 10)])


def test_frontier_is_per_group():
    rows = grid_rows() + grid_rows(system="other") + [point(1, 50, 5, i=64)]
    f = frontier(pd.DataFrame(rows))
    assert f.groupby(["system", "input_len"]).size().to_dict() == {("other", 32): 4, ("sys", 32): 4, ("sys", 64): 1}


def test_frontier_ties_identical_points_both_stay_equal_on_one_axis_loses():
    # Equality is exact on the columns (set here: B·O/e2e computed two ways may differ in the last bit).
    same = {"tpot_ms": 10.0, "output_tok_s": 110.0}
    rows = [point(2, 100, 10, **same),   # 100 tok/s per user, 110 tok/s
            point(4, 300, 10, **same),   # the same two figures: identical, neither beats the other
            point(1, 100, 10, tpot_ms=10.0, output_tok_s=55.0)]  # equal interactivity, less throughput: beaten
    f = frontier(pd.DataFrame(rows))
    assert f["batch"].tolist() == [2, 4]
    np.testing.assert_allclose(f["output_tok_s"], [110.0, 110.0])


def test_frontier_of_a_single_point_is_that_point():
    f = frontier(pd.DataFrame([point(4, 300, 20)]))
    assert f[["batch", "interactivity_tok_s"]].values.tolist() == [[4, 50.0]]


def test_oom_and_error_rows_are_never_on_the_frontier_and_are_listed():
    # An oom row carrying (bogus) finite figures that would beat everything: status alone keeps it off.
    rows = grid_rows() + [failed(32, ttft_ms=1.0, tpot_ms=1.0, output_tok_s=1e6), failed(64),
                          failed(12, status="error", tpot_ms=1.0, output_tok_s=1e6)]
    df = pd.DataFrame(rows)
    assert frontier(df)["batch"].tolist() == [8, 4, 2, 1]
    assert oom_batches(df).values.tolist() == [["sys", "m", 32, O, 32], ["sys", "m", 32, O, 64]]
    assert 32 not in bounded_max(df)["batch"].dropna().tolist()


def test_newest_row_of_a_point_wins():
    old_ok = point(8, 100, 5, created_utc="2024-01-01")  # would beat every other point, but was re-measured
    new_oom = failed(8, created_utc="2024-02-01")
    old_oom = failed(16, created_utc="2024-01-01")
    new_ok = point(16, 600, 25, created_utc="2024-02-01")
    df = pd.DataFrame([new_ok, new_oom, old_ok, old_oom, point(1, 100, 10, created_utc="2024-01-01")])
    assert frontier(df)["batch"].tolist() == [16, 1]
    assert oom_batches(df)["batch"].tolist() == [8]
    assert bounded_max(df, [SLO("loose", 1e9, 1e9)])["batch"].tolist() == [16]


def test_rows_derived_from_a_longer_output_are_points():
    # As the multi-user throughput table does: a row read off a longer run is a legitimate token-phase point.
    rows = [point(1, 100, 10), point(8, 600, 25, derived_from_output_len=2 * O)]
    assert frontier(pd.DataFrame(rows))["batch"].tolist() == [8, 1]
    assert bounded_max(pd.DataFrame(rows), [SLO("server", 2000, 100)])["batch"].tolist() == [8]


def test_points_without_a_decode_step_have_no_interactivity():
    rows = [point(1, 100, 10), point(1, 100, 0.0, o=1), point(4, 100, 0.0, o=1)]
    p = interactivity_points(pd.DataFrame(rows))
    assert p["interactivity_tok_s"].isna().tolist() == [True, True, False]  # sorted by O: the two O=1 rows first
    assert p["decode_tok_s"].iloc[2] == pytest.approx(100.0)  # B / tpot = 1 / 10 ms
    assert frontier(pd.DataFrame(rows))["output_len"].tolist() == [O]
    b = bounded_max(pd.DataFrame(rows), [SLO("loose", 1e9, 1e9)])
    assert b.set_index("output_len")["batch"].isna().to_dict() == {1: True, O: False}


def test_empty_results_give_empty_tables_with_their_columns():
    empty = pd.DataFrame()
    assert frontier(empty).empty and list(frontier(empty).columns)[-2:] == ["interactivity_tok_s", "output_tok_s"]
    assert bounded_max(empty).empty and "slo" in bounded_max(empty).columns
    assert oom_batches(empty).empty and interactivity_points(empty).empty


# ---- bounded max --------------------------------------------------------------------------------------------

def test_bounded_max_hand_computed():
    b = bounded_max(pd.DataFrame(grid_rows()),
                    list(DEFAULT_SLOS) + [SLO("tight", 120, 11), SLO("impossible", 50, 5)])
    assert list(b.columns) == ["system", "model", "input_len", "output_len", "slo", "ttft_ms_max", "tpot_ms_max",
                               "batch", "output_tok_s"]
    b = b.set_index("slo")
    # server (2000, 100): every point meets it, B=8 has the most throughput (B=16 is slower)
    assert b.loc["server", "batch"] == 8 and b.loc["server", "output_tok_s"] == pytest.approx(out_tok_s(8, 600, 25))
    # interactive (500, 30): B=8 and B=16 miss on ttft; of B <= 4, B=4 is the fastest
    assert b.loc["interactive", "batch"] == 4
    assert b.loc["interactive", "output_tok_s"] == pytest.approx(88.0)
    assert (b.loc["interactive", "ttft_ms_max"], b.loc["interactive", "tpot_ms_max"]) == (500.0, 30.0)
    assert b.loc["tight", "batch"] == 1 and b.loc["tight", "output_tok_s"] == pytest.approx(55.0)
    assert pd.isna(b.loc["impossible", "batch"]) and math.isnan(b.loc["impossible", "output_tok_s"])
    assert str(b["batch"].dtype) == "Int64"


def test_bound_is_inclusive():
    exact = point(4, 400, 20, ttft_ms=500.0, tpot_ms=30.0, output_tok_s=99.0)  # medians exactly on the bound
    over = point(8, 400, 20, ttft_ms=500.0, tpot_ms=30.000001, output_tok_s=200.0)
    b = bounded_max(pd.DataFrame([exact, over]), [INTERACTIVE])
    assert b["batch"].tolist() == [4] and b["output_tok_s"].tolist() == [99.0]


def test_every_point_failing_the_bound_gives_none():
    b = bounded_max(pd.DataFrame([point(8, 600, 25), point(16, 1200, 60)]), [INTERACTIVE])
    assert len(b) == 1 and pd.isna(b["batch"].iloc[0]) and math.isnan(b["output_tok_s"].iloc[0])


def test_a_group_out_of_memory_everywhere_has_a_row_that_none_meets():
    b = bounded_max(pd.DataFrame(grid_rows() + [failed(1, i=64), failed(2, i=64)]), [INTERACTIVE])
    assert b["input_len"].tolist() == [32, 64]
    assert b["batch"].isna().tolist() == [False, True]


def test_bounded_max_tie_goes_to_the_smaller_batch():
    b = bounded_max(pd.DataFrame([point(4, 300, 10, output_tok_s=110.0), point(2, 100, 10, output_tok_s=110.0)]),
                    [SLO("s", 1000, 50)])
    assert b["batch"].tolist() == [2] and b["output_tok_s"].iloc[0] == pytest.approx(110.0)


def test_single_point_bounded_max():
    df = pd.DataFrame([point(4, 300, 20)])
    assert bounded_max(df, [INTERACTIVE])["batch"].tolist() == [4]
    assert bounded_max(df, [SLO("s", 299, 20)])["batch"].isna().all()


def test_noisy_points_are_judged_on_their_medians():
    rows = [
        # one wild repeat: mean tpot 73.7 ms and max ttft 3 s would fail, the medians (11 ms, 100 ms) meet
        point(8, [100, 100, 3000], [10, 11, 200]),
        # one lucky repeat: its min tpot (5 ms) would meet, the median (40 ms) does not
        point(16, [100, 100, 100], [5, 40, 41]),
        point(1, 100, 10),
    ]
    b = bounded_max(pd.DataFrame(rows), [INTERACTIVE])
    assert b["batch"].tolist() == [8]
    e2e_median = np.median([100 + 100, 100 + 110, 3000 + 2000])  # e2e = ttft + 10·tpot per repeat
    assert b["output_tok_s"].iloc[0] == pytest.approx(8 * O / (e2e_median / 1e3))


# ---- comparison at a service level --------------------------------------------------------------------------

def baseline_rows():
    # deterministic: the same value in every repeat. Interactive max = B=4: 4·11/0.4 = 110 tok/s
    return [point(1, 100, 10, system="base"), point(4, 200, 20, system="base")]


def flipping_rows(with_safe_batch=True):
    # B=8's tpot repeats 25, 29, 35: median 29 meets tpot <= 30, but a resample whose median is 35 does not
    # (2 or 3 of its 3 repeats are the 35: 7/27 of draws). B=1 always meets it (55 tok/s).
    rows = [point(8, 200, [25, 29, 35], system="targ")]
    return rows + ([point(1, 100, 10, system="targ")] if with_safe_batch else [])


def test_bootstrap_flips_a_batch_across_the_bound():
    c = compare_slo(pd.DataFrame(flipping_rows()), pd.DataFrame(baseline_rows()), [INTERACTIVE])
    assert len(c) == 1
    r = c.iloc[0]
    b8 = {tpot: out_tok_s(8, 200, tpot) for tpot in (25, 29)}  # target B=8 when its median tpot is 25 or 29
    # the point estimate uses the full medians: B=8 meets the bound (median tpot 29)
    assert r["target_batch"] == 8 and r["target_output_tok_s"] == pytest.approx(b8[29])
    assert r["baseline_batch"] == 4 and r["baseline_output_tok_s"] == pytest.approx(110.0)
    assert r["ratio"] == pytest.approx(110.0 / b8[29])
    # the interval spans both outcomes: draws where B=8 meets (ratio < 1, lowest at median tpot 25) and
    # draws where it does not and the target's max falls back to B=1 (ratio 110/55 = 2)
    assert r["ratio_lo"] == pytest.approx(110.0 / b8[25])
    assert r["ratio_hi"] == pytest.approx(110.0 / 55.0)
    assert r["met_fraction"] == 1.0 and r["verdict"] == NOISE


def test_draws_without_a_batch_in_the_bound_count_against_that_side():
    # Without the safe B=1, 7/27 of the target's draws have no batch within the bound: there the baseline,
    # which always meets it, is better (ratio +inf). The interval covers those draws too, so it reaches
    # infinity and the 95% verdict is "within noise"; 20/27 of the draws have both sides within the bound.
    t, b = pd.DataFrame(flipping_rows(with_safe_batch=False)), pd.DataFrame(baseline_rows())
    r = compare_slo(t, b, [INTERACTIVE]).iloc[0]
    b8 = {tpot: out_tok_s(8, 200, tpot) for tpot in (25, 29)}
    assert r["ratio"] == pytest.approx(110.0 / b8[29])
    assert r["ratio_lo"] == pytest.approx(110.0 / b8[25]) and r["ratio_hi"] == math.inf
    assert r["met_fraction"] == pytest.approx(20 / 27, abs=0.04)
    assert r["verdict"] == NOISE
    # at a confidence whose interval stops short of the failing draws (30th to 70th percentile), it speaks
    r40 = compare_slo(t, b, [INTERACTIVE], confidence=0.4).iloc[0]
    assert r40["ratio_hi"] < 1 and r40["verdict"] == BETTER
    # swapped sides: the draws where the baseline meets nothing count for the baseline's being worse
    swapped = compare_slo(b.assign(system="t"), t.assign(system="b"), [INTERACTIVE]).iloc[0]
    assert swapped["ratio_lo"] == 0.0 and swapped["verdict"] == NOISE


def test_resampling_keeps_repeats_whole_and_batches_apart():
    b = pd.DataFrame(baseline_rows())
    # Repeats (ttft, tpot): (600, 10) misses on ttft, (100, 40) misses on tpot, (100, 10) meets. A draw
    # misses when 2 of its 3 repeats miss the same way (7/27 each way); drawn whole, a repeat cannot miss
    # both ways at once, so 13/27 of draws meet. Drawing ttft and tpot apart would give (20/27)² ≈ 0.55.
    t = pd.DataFrame([point(8, [600, 100, 100], [10, 40, 10], system="targ")])
    r = compare_slo(t, b, [INTERACTIVE]).iloc[0]
    assert r["target_batch"] == 8  # medians 100 ms and 10 ms meet the bound
    assert r["met_fraction"] == pytest.approx(13 / 27, abs=0.03)
    # Two batches with the same flipping repeats are resampled independently: a draw fails only when both
    # fail, 1 - (7/27)² ≈ 0.93 meet (the same draws for both would give 20/27 ≈ 0.74).
    t2 = pd.DataFrame(flipping_rows(with_safe_batch=False) + [point(9, 200, [25, 29, 35], system="targ")])
    assert compare_slo(t2, b, [INTERACTIVE])["met_fraction"].iloc[0] == pytest.approx(1 - (7 / 27) ** 2, abs=0.03)


def test_compare_is_deterministic_for_a_seed():
    t, b = pd.DataFrame(flipping_rows(with_safe_batch=False)), pd.DataFrame(baseline_rows())
    c0 = compare_slo(t, b, [INTERACTIVE], seed=0, n_boot=500)
    pd.testing.assert_frame_equal(c0, compare_slo(t, b, [INTERACTIVE], seed=0, n_boot=500))
    # the rows' order in the table does not change the draws (each batch has its own generator)
    pd.testing.assert_frame_equal(c0, compare_slo(t.iloc[::-1], b.iloc[::-1], [INTERACTIVE], seed=0, n_boot=500))
    c1 = compare_slo(t, b, [INTERACTIVE], seed=1, n_boot=500)
    assert c1["met_fraction"].iloc[0] != c0["met_fraction"].iloc[0]


def test_none_meets_it_on_one_side_gives_no_ratio():
    t = pd.DataFrame([point(8, 200, 35, system="targ")])  # tpot 35 > 30 in every repeat
    c = compare_slo(t, pd.DataFrame(baseline_rows()), DEFAULT_SLOS).set_index("slo")
    it = c.loc["interactive"]
    assert it["verdict"] == "none meets it (target)"
    assert math.isnan(it["ratio"]) and math.isnan(it["ratio_lo"]) and math.isnan(it["ratio_hi"])
    assert pd.isna(it["target_batch"]) and it["baseline_batch"] == 4
    # server (2000, 100) is met on both sides: target B=8 (8·11/0.55 = 160 tok/s) vs baseline B=4 (110)
    sv = c.loc["server"]
    assert sv["ratio"] == pytest.approx(110.0 / 160.0) and sv["verdict"] == BETTER
    both = compare_slo(t, t.assign(system="base"), [INTERACTIVE]).iloc[0]
    assert both["verdict"] == "none meets it (both)"
    oom_target = pd.DataFrame([failed(1, system="targ"), failed(2, system="targ")])
    assert compare_slo(oom_target, pd.DataFrame(baseline_rows()), [INTERACTIVE])["verdict"].tolist() == [
        "none meets it (target)"]


def test_compare_point_values_are_the_bounded_max_tables():
    t, b = pd.DataFrame(grid_rows(system="targ")), pd.DataFrame(baseline_rows())
    c = compare_slo(t, b, DEFAULT_SLOS, n_boot=200).set_index("slo")
    bt, bb = bounded_max(t).set_index("slo"), bounded_max(b).set_index("slo")
    for slo in ("server", "interactive"):
        assert c.loc[slo, "target_output_tok_s"] == bt.loc[slo, "output_tok_s"]
        assert c.loc[slo, "baseline_output_tok_s"] == bb.loc[slo, "output_tok_s"]
        assert c.loc[slo, "ratio"] == pytest.approx(bb.loc[slo, "output_tok_s"] / bt.loc[slo, "output_tok_s"])
        # every repeat identical: a zero-width interval on the point ratio
        assert c.loc[slo, "ratio_lo"] == pytest.approx(c.loc[slo, "ratio"])
        assert c.loc[slo, "ratio_hi"] == pytest.approx(c.loc[slo, "ratio"])


def test_compare_needs_a_shared_workload():
    with pytest.raises(UsageError, match="share no"):
        compare_slo(pd.DataFrame(grid_rows(i=64)), pd.DataFrame(baseline_rows()))


# ---- frontier ratios -------------------------------------------------------------------------------------

def test_frontier_ratios_at_the_baselines_interactivity():
    base = [point(1, 100, 5, system="base"),     # 200 tok/s per user, 11/0.15 = 73.3 tok/s
            point(2, 100, 10, system="base"),    # 100,                110
            point(4, 200, 15, system="base")]    # 66.7,               4·11/0.35 = 125.7
    targ = [point(1, 100, 8, system="targ"),     # 125,                61.1
            point(2, 100, 10, system="targ"),    # 100,                110
            point(8, 200, 25, system="targ")]    # 40,                 195.6 (too slow per user for any)
    f = frontier_ratios(pd.DataFrame(targ), pd.DataFrame(base))
    assert list(f.columns) == ["model", "input_len", "output_len", "baseline_batch", "interactivity_tok_s",
                               "baseline_output_tok_s", "target_output_tok_s", "target_batch", "ratio"]
    assert f["baseline_batch"].tolist() == [4, 2, 1]
    np.testing.assert_allclose(f["interactivity_tok_s"], [1000 / 15, 100.0, 200.0])
    assert f["target_batch"].tolist()[:2] == [2, 2] and pd.isna(f["target_batch"].iloc[2])
    np.testing.assert_allclose(f["target_output_tok_s"], [110.0, 110.0, np.nan])
    np.testing.assert_allclose(f["ratio"], [out_tok_s(4, 200, 15) / 110.0, 1.0, np.nan])


# ---- SLO parsers -----------------------------------------------------------------------------------------

def test_default_slos_are_mlperf_llama31_8b():
    assert DEFAULT_SLOS == (SLO("server", 2000.0, 100.0), SLO("interactive", 500.0, 30.0))


def test_parse_slo_command_line_form():
    assert parse_slo("tight:250:20") == SLO("tight", 250.0, 20.0)
    assert parse_slo(" chat : 1e3 : 12.5 ") == SLO("chat", 1000.0, 12.5)
    assert parse_slos(["a:1:2", "b:3:4"]) == (SLO("a", 1.0, 2.0), SLO("b", 3.0, 4.0))


@pytest.mark.parametrize("text,problem", [
    ("server:2000", "missing TPOT_MS"),
    ("server", "missing TTFT_MS, TPOT_MS"),
    ("a:b:1:2", "has 4 parts"),
    (":2000:100", "NAME is empty"),
    ("s::100", "TTFT_MS is empty"),
    ("s:fast:100", "TTFT_MS 'fast' is not a number"),
    ("s:2000:nan", "TPOT_MS 'nan' is not finite"),
    ("s:inf:100", "TTFT_MS 'inf' is not finite"),
    ("s:0:100", "TTFT_MS '0' is not positive"),
    ("s:2000:-5", "TPOT_MS '-5' is not positive"),
    ("s:20\n00:5", "TTFT_MS '20\\n00' is not a number"),
    ("fast chat:1:2", "NAME 'fast chat' holds white space"),
])
def test_parse_slo_errors_are_one_line(text, problem):
    with pytest.raises(UsageError) as e:
        parse_slo(text)
    message = str(e.value)
    assert problem in message and "expected NAME:TTFT_MS:TPOT_MS" in message
    assert "\n" not in message


def test_parse_slos_rejects_duplicates_and_nothing():
    with pytest.raises(UsageError, match="'fast' is already used by 'fast:1:2', expected each name once") as e:
        parse_slos(["fast:1:2", "slow:3:4", "fast:5:6"])
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="no SLO given"):
        parse_slos([])


def test_parse_slo_params():
    value = [{"name": "server", "ttft_ms": 2000, "tpot_ms": 100}, {"name": "chat", "ttft_ms": 250.0, "tpot_ms": 20}]
    assert parse_slo_params(value, "p.yaml") == (SLO("server", 2000.0, 100.0), SLO("chat", 250.0, 20.0))


@pytest.mark.parametrize("value,message", [
    ([], "p.yaml: slos: is empty, expected a non-empty list"),
    ({"name": "s"}, "is not a list"),
    (["server:2000:100"], "p.yaml: slos[0]: 'server:2000:100' is not a mapping"),
    ([{"name": "s", "ttft_ms": 1}], "p.yaml: slos[0].tpot_ms: missing"),
    ([{"name": "s", "ttft_ms": 1, "tpot_ms": 2, "tpot": 3}], "slos[0].tpot: unknown key (did you mean 'tpot_ms'?)"),
    ([{"name": "s", "ttft_ms": "2000", "tpot_ms": 2}], "slos[0].ttft_ms: '2000' is not a number"),
    ([{"name": "s", "ttft_ms": True, "tpot_ms": 2}], "slos[0].ttft_ms: True is not a number"),
    ([{"name": "s", "ttft_ms": float("nan"), "tpot_ms": 2}], "slos[0].ttft_ms: nan is not finite"),
    ([{"name": "s", "ttft_ms": 1, "tpot_ms": 0}], "slos[0].tpot_ms: 0 is not positive"),
    ([{"name": "", "ttft_ms": 1, "tpot_ms": 2}], "slos[0].name: '' is not a plain name"),
    ([{"name": "a:b", "ttft_ms": 1, "tpot_ms": 2}], "slos[0].name: 'a:b' is not a plain name"),
    ([{"name": "a b", "ttft_ms": 1, "tpot_ms": 2}], "slos[0].name: 'a b' is not a plain name"),
    ([{"name": "s", "ttft_ms": 1, "tpot_ms": 2}, {"name": "s", "ttft_ms": 3, "tpot_ms": 4}],
     "slos[1].name: 's' is already used by slos[0], expected each name once"),
])
def test_parse_slo_params_errors_are_one_line(value, message):
    with pytest.raises(UsageError) as e:
        parse_slo_params(value, "p.yaml")
    assert message in str(e.value) and ", expected " in str(e.value)
    assert "\n" not in str(e.value)


def test_slo_module_imports_no_cli_plotting_or_torch():
    assert modules_loaded_by("perfkit.slo", ("matplotlib", "torch", "papermill", "nbformat", "IPython",
                                             "perfkit.cli", "perfkit.report")) == []
