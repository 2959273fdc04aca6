"""Throughput at a service level: the interactivity/throughput frontier and the best throughput within an SLO.

The domain layer only (numpy, pandas and perfkit's core modules): no command line, no plots. Only measured
points count, never an interpolated batch, and a bound applies to a point's medians over its repeats (MLPerf
applies the same limits to p99 over requests). Ratios follow perfkit.compare (< 1: the target is better).
See docs/service-levels.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from perfkit import metrics
from perfkit.bootstrap import boot_indices, rng_for
from perfkit.compare import MIN_REPEATS_FOR_VERDICT, NOISE, TOO_FEW, load_side, ratio, samples_ms, verdict
from perfkit.errors import UsageError, did_you_mean, shown
from perfkit.summary import latest_per_point

GROUP = ["system", "model", "input_len", "output_len"]
WORKLOAD = ["model", "input_len", "output_len"]

POINT_COLUMNS = GROUP + ["batch", "ttft_ms", "tpot_ms", "interactivity_tok_s", "output_tok_s", "decode_tok_s"]
FRONTIER_COLUMNS = GROUP + ["batch", "interactivity_tok_s", "output_tok_s"]
OOM_COLUMNS = GROUP + ["batch"]
BOUNDED_COLUMNS = GROUP + ["slo", "ttft_ms_max", "tpot_ms_max", "batch", "output_tok_s"]
COMPARE_COLUMNS = WORKLOAD + ["slo", "ttft_ms_max", "tpot_ms_max", "target_output_tok_s", "target_batch",
                              "baseline_output_tok_s", "baseline_batch", "ratio", "ratio_lo", "ratio_hi",
                              "met_fraction", "verdict"]
FRONTIER_RATIO_COLUMNS = WORKLOAD + ["baseline_batch", "interactivity_tok_s", "baseline_output_tok_s",
                                     "target_output_tok_s", "target_batch", "ratio"]

NONE_MEETS = "none meets it"


# ---- SLOs ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SLO:
    """A service level: a point meets it when its median ttft and median tpot are both within the bounds."""

    name: str
    ttft_ms_max: float
    tpot_ms_max: float


# MLPerf Inference, Llama-3.1-8B: the Server and Interactive scenarios' ttft / tpot limits (there, p99).
DEFAULT_SLOS = (SLO("server", 2000.0, 100.0), SLO("interactive", 500.0, 30.0))

SLO_FORM = "NAME:TTFT_MS:TPOT_MS"
SLO_PARAMS_KEYS = ("name", "ttft_ms", "tpot_ms")


def _slo_problem(text: str, what: str) -> UsageError:
    return UsageError(f"SLO {shown(text)}: {what}, expected {SLO_FORM} with milliseconds > 0 (e.g. server:2000:100)")


def _name_problem(name: str) -> str | None:
    """What keeps `name` from being an SLO's name, or None. A name labels table rows, plot legends, CSV cells
    and terminal lines: one word of printable characters, no ':' (the command-line separator)."""
    if not name:
        return "is empty"
    if any("\udc80" <= ch <= "\udcff" for ch in name):  # how Python passes on bytes that are not UTF-8
        return "is not UTF-8 text"
    if any(ch.isspace() for ch in name):
        return "holds white space"
    if not name.isprintable():
        return "holds a character that is not printable (a control or format character)"
    return "holds ':'" if ":" in name else None


def _bound_problem(ms: float) -> str | None:
    """What keeps a number from being a latency bound (finite, > 0), or None."""
    if not math.isfinite(ms):
        return "is not finite"
    return "is not positive" if ms <= 0 else None


def parse_slo(text: str) -> SLO:
    """An SLO from its command-line form NAME:TTFT_MS:TPOT_MS (e.g. `interactive:500:30`).

    Raises UsageError, one line naming what is wrong and the expected form.
    """
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 3:
        fields = SLO_FORM.split(":")
        what = (f"missing {', '.join(fields[len(parts):])}" if len(parts) < 3
                else f"has {len(parts)} parts separated by ':', not 3")
        raise _slo_problem(text, what)
    name, *numbers = parts
    if not name:
        raise _slo_problem(text, "NAME is empty")
    problem = _name_problem(name)
    if problem:
        raise _slo_problem(text, f"NAME {shown(name)} {problem}")
    values = []
    for field, part in zip(("TTFT_MS", "TPOT_MS"), numbers):
        if not part:
            raise _slo_problem(text, f"{field} is empty")
        try:
            value = float(part)
        except ValueError:
            raise _slo_problem(text, f"{field} {shown(part)} is not a number") from None
        problem = _bound_problem(value)
        if problem:
            raise _slo_problem(text, f"{field} {shown(part)} {problem}")
        values.append(value)
    return SLO(name, *values)


def _check_unique(slos: Sequence[SLO], where) -> tuple[SLO, ...]:
    seen = {}
    for i, slo in enumerate(slos):
        if slo.name in seen:
            raise UsageError(where(i, slo, seen[slo.name]))
        seen[slo.name] = i
    return tuple(slos)


def parse_slos(texts: Iterable[str]) -> tuple[SLO, ...]:
    """Several command-line SLOs (e.g. the values of a repeated flag), each name once, at least one."""
    texts = list(texts or [])
    if not texts:
        raise UsageError(f"no SLO given, expected at least one {SLO_FORM} (e.g. server:2000:100)")
    slos = [parse_slo(t) for t in texts]
    return _check_unique(slos, lambda i, slo, first: (
        f"SLO {shown(texts[i])}: the name {shown(slo.name)} is already used by {shown(texts[first])}, "
        "expected each name once"))


def _params_number(value, source: str, key: str) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    problem = _bound_problem(value) if number else "is not a number"
    if problem:
        raise UsageError(f"{source}: {key}: {shown(value)} {problem}, expected a finite number of milliseconds > 0")
    return float(value)


def slo_entries(value, source: str = "params", key: str = "slos", max_entries: int | None = None):
    """The shape of a params file's SLO list: yields (`key[i]`, mapping) for each entry, once the list is
    known to be a non-empty list (of at most `max_entries`) and each entry, as it is reached, a mapping.
    Raises UsageError("<source>: <key>[i]: <what is wrong>, expected <what>"); values shown bounded."""
    form = "{name, ttft_ms, tpot_ms}"
    if not isinstance(value, list) or not value:
        what = "is empty" if value in ([], None) else f"{shown(value)} is not a list"
        raise UsageError(f"{source}: {key}: {what}, expected a non-empty list of {form} mappings")
    if max_entries is not None and len(value) > max_entries:
        raise UsageError(f"{source}: {key}: has {len(value):,} entries, expected at most {max_entries:,} {form} "
                         "mappings")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise UsageError(f"{source}: {key}[{i}]: {shown(item)} is not a mapping, expected {form}")
        yield f"{key}[{i}]", item


def parse_slo_params(value, source: str = "params", key: str = "slos") -> tuple[SLO, ...]:
    """SLOs from a params file's list of {name, ttft_ms, tpot_ms} mappings (as read from YAML).

    Raises UsageError("<source>: <key>[i].<field>: <what is wrong>, expected <what>"), as perfkit.params does.
    """
    slos = []
    for at, item in slo_entries(value, source, key):
        for k in item:
            if k not in SLO_PARAMS_KEYS:
                raise UsageError(f"{source}: {at}.{k}: unknown key{did_you_mean(str(k), SLO_PARAMS_KEYS)}, "
                                 f"expected one of {', '.join(SLO_PARAMS_KEYS)}")
        for k in SLO_PARAMS_KEYS:
            if k not in item:
                raise UsageError(f"{source}: {at}.{k}: missing, expected a value")
        name = item["name"]
        problem = _name_problem(name) if isinstance(name, str) else "is not a string"
        if problem:
            raise UsageError(f"{source}: {at}.name: {shown(name)} is not a plain name ({problem}), expected a "
                             "non-empty string of printable characters without white space or ':'")
        slos.append(SLO(name, _params_number(item["ttft_ms"], source, f"{at}.ttft_ms"),
                        _params_number(item["tpot_ms"], source, f"{at}.tpot_ms")))
    return _check_unique(slos, lambda i, slo, first: (
        f"{source}: {key}[{i}].name: {shown(slo.name)} is already used by {key}[{first}], expected each name once"))


# ---- one side: points, frontier, bounded max ------------------------------------------------------------

def _frame(df) -> pd.DataFrame:
    """A results DataFrame, or a results directory read into one (as perfkit.summarize accepts)."""
    if isinstance(df, (str, os.PathLike)):
        from perfkit.results import load_results

        return load_results(df)
    return df


def _ok_points(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows (newest row per point wins), with interactivity_tok_s; derived rows included.

    The study tables leave rows derived from a longer output length out only where they pool ttft samples
    over output lengths (perfkit.summary.prompt_phase_rows); nothing here pools, each point is judged on
    its own medians (a derived row's ttft is its longer run's, the same prompt phase).
    """
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c.endswith(("_ms", "_tok_s")) else object)
                             for c in POINT_COLUMNS})
    ok = latest_per_point(df)
    ok = ok[ok["status"] == "ok"].copy()
    for col in ("ttft_ms", "tpot_ms", "output_tok_s", "decode_tok_s"):
        ok[col] = ok[col].astype(float) if col in ok else np.nan
    tpot_ms = ok["tpot_ms"].to_numpy(dtype=float)
    # 1000 / tpot: NaN where there is no decode step (O = 1) or no positive tpot
    ok["interactivity_tok_s"] = metrics.rate(1.0, tpot_ms) if len(ok) else np.array([])
    return ok.sort_values(GROUP + ["batch"], kind="stable")


def interactivity_points(df) -> pd.DataFrame:
    """Every ok point with its ttft_ms, tpot_ms, interactivity_tok_s, output_tok_s and decode_tok_s."""
    return _ok_points(_frame(df))[POINT_COLUMNS].reset_index(drop=True)


def _non_dominated(interactivity_tok_s: np.ndarray, output_tok_s: np.ndarray) -> np.ndarray:
    """Mask of the points that no other point beats: >= on both coordinates and > on at least one."""
    x, y = interactivity_tok_s[:, None], output_tok_s[:, None]  # row i: the point; column j: a challenger
    at_least = (x.T >= x) & (y.T >= y)
    strictly = (x.T > x) | (y.T > y)
    return ~(at_least & strictly).any(axis=1)  # identical points never beat each other: ties stay


def frontier(df) -> pd.DataFrame:
    """The Pareto frontier of interactivity_tok_s vs output_tok_s per (system, model, input_len, output_len).

    Columns: system, model, input_len, output_len, batch, interactivity_tok_s, output_tok_s; sorted by
    group, then interactivity_tok_s ascending (then batch). Only measured ok points with a finite
    interactivity_tok_s and output_tok_s (no point with O = 1); see docs/service-levels.md.
    """
    ok = _ok_points(_frame(df))
    ok = ok[np.isfinite(ok["interactivity_tok_s"].astype(float)) & np.isfinite(ok["output_tok_s"].astype(float))]
    parts = []
    for _, g in ok.groupby(GROUP, sort=True):
        keep = _non_dominated(g["interactivity_tok_s"].to_numpy(float), g["output_tok_s"].to_numpy(float))
        parts.append(g[keep])
    if not parts:
        return pd.DataFrame(columns=FRONTIER_COLUMNS)
    out = pd.concat(parts).sort_values(GROUP + ["interactivity_tok_s", "batch"], kind="stable")
    return out[FRONTIER_COLUMNS].reset_index(drop=True)


def oom_batches(df) -> pd.DataFrame:
    """Every batch whose newest row ran out of memory: system, model, input_len, output_len, batch (sorted).

    Unlike the summary's `oom` table (the first batch out of memory), every such batch is listed, so a
    frontier plot can mark each one.
    """
    df = _frame(df)
    if df.empty:
        return pd.DataFrame(columns=OOM_COLUMNS)
    latest = latest_per_point(df)
    oom = latest[latest["status"] == "oom"]
    return oom.sort_values(OOM_COLUMNS)[OOM_COLUMNS].reset_index(drop=True)


def _bounded_best(ttft_ms: np.ndarray, tpot_ms: np.ndarray, output_tok_s: np.ndarray,
                  slo: SLO) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the largest output_tok_s over the rows (batches) that meet `slo`, and that row (-1: none).

    Arrays are (batches, draws); rows in ascending batch order, so a tie goes to the smaller batch.
    NaN latencies compare False: a point without a ttft or tpot never meets a bound.
    """
    meets = (ttft_ms <= slo.ttft_ms_max) & (tpot_ms <= slo.tpot_ms_max) & np.isfinite(output_tok_s)
    if meets.shape[0] == 0:
        return np.full(meets.shape[1], np.nan), np.full(meets.shape[1], -1)
    masked = np.where(meets, output_tok_s, -np.inf)
    best_row = np.argmax(masked, axis=0)
    any_meets = meets.any(axis=0)
    best = np.where(any_meets, masked[best_row, np.arange(masked.shape[1])], np.nan)
    return best, np.where(any_meets, best_row, -1)


def _point_best(rows: pd.DataFrame, slo: SLO) -> tuple[float, object]:
    """(output_tok_s, batch) of the bounded max on the rows' medians; (NaN, <NA>) when none meets it."""
    rows = rows.sort_values("batch", kind="stable")
    col = lambda c: rows[c].to_numpy(dtype=float)[:, None]  # noqa: E731
    best, row = _bounded_best(col("ttft_ms"), col("tpot_ms"), col("output_tok_s"), slo)
    if row[0] < 0:
        return np.nan, pd.NA
    return float(best[0]), int(rows["batch"].iloc[row[0]])


def bounded_max(df, slos: Sequence[SLO] = DEFAULT_SLOS) -> pd.DataFrame:
    """The largest output_tok_s within each SLO per (system, model, input_len, output_len).

    Columns: system, model, input_len, output_len, slo, ttft_ms_max, tpot_ms_max, batch (Int64, <NA> when
    none meets it), output_tok_s (NaN when none meets it). Every group of the results has a row per SLO,
    including a group whose rows all ran out of memory (none meets it there). A tie goes to the smaller
    batch. Computed over every group at once (a results directory may hold 100,000 points).
    """
    df = _frame(df)
    if df.empty:
        return pd.DataFrame(columns=BOUNDED_COLUMNS).astype({"batch": "Int64"})
    ok = _ok_points(df)[GROUP + ["batch", "ttft_ms", "tpot_ms", "output_tok_s"]]
    keys = latest_per_point(df)[GROUP].drop_duplicates().sort_values(GROUP, kind="stable")
    # the best row first: largest throughput, then smallest batch; NaN latencies never meet a bound
    ranked = ok.sort_values(["output_tok_s", "batch"], ascending=[False, True], kind="stable")
    tables = []
    for slo in slos:
        meets = ((ranked["ttft_ms"] <= slo.ttft_ms_max) & (ranked["tpot_ms"] <= slo.tpot_ms_max)
                 & np.isfinite(ranked["output_tok_s"]))
        best = ranked[meets].drop_duplicates(GROUP, keep="first")[GROUP + ["batch", "output_tok_s"]]
        t = keys.merge(best, on=GROUP, how="left")
        t.insert(len(GROUP), "slo", slo.name)
        t.insert(len(GROUP) + 1, "ttft_ms_max", slo.ttft_ms_max)
        t.insert(len(GROUP) + 2, "tpot_ms_max", slo.tpot_ms_max)
        t["order"] = range(len(t))
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    # as before: group by group (in GROUP order), each group's SLOs in the order given
    table["slo_order"] = np.repeat(np.arange(len(slos)), len(keys))
    table = table.sort_values(["order", "slo_order"], kind="stable")[BOUNDED_COLUMNS].reset_index(drop=True)
    table["batch"] = table["batch"].astype("Int64")
    table["output_tok_s"] = table["output_tok_s"].astype(float)
    return table


# ---- target vs baseline ---------------------------------------------------------------------------------

def _usable_samples(row) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ttft, tpot, e2e) per repeat in ms, paired; None when the row cannot be resampled."""
    if int(row["output_len"]) < 2:
        return None  # no decode step: no tpot, the point never meets a bound
    ttft, e2e, tpot_ms = samples_ms(row, "ttft"), samples_ms(row, "e2e"), samples_ms(row, "tpot")
    if ttft.size == 0 or ttft.size != e2e.size or tpot_ms.size != ttft.size:
        return None
    if not (np.all(np.isfinite(ttft)) and np.all(np.isfinite(e2e))):
        return None
    return ttft, tpot_ms, e2e


@dataclasses.dataclass
class _Side:
    """One side's rows of one workload that can be compared, in ascending batch order, and their draws."""

    rows: pd.DataFrame
    ttft_ms: np.ndarray  # (batches, n_boot) resampled medians
    tpot_ms: np.ndarray
    output_tok_s: np.ndarray


def _side_draws(rows: pd.DataFrame, side: str, seed: int, n_boot: int) -> _Side:
    kept, ttft_d, tpot_d, out_d = [], [], [], []
    _, tokens = metrics.THROUGHPUTS["output_tok_s"]
    rows = rows.sort_values("batch", kind="stable")
    for index, row in zip(rows.index, rows.to_dict("records")):
        samples = _usable_samples(row)
        if samples is None:
            continue
        ttft, tpot_ms, e2e = samples
        b, i, o = int(row["batch"]), int(row["input_len"]), int(row["output_len"])
        # One draw picks whole repeats, so ttft, tpot and e2e of a repeat stay together
        idx = boot_indices(ttft.size, rng_for(seed, "slo", side, str(row["model"]), i, o, b), n_boot)
        ttft_d.append(np.median(ttft[idx], axis=1))
        tpot_d.append(np.median(tpot_ms[idx], axis=1))
        out_d.append(metrics.rate(tokens(b, i, o), np.median(e2e[idx], axis=1)))
        kept.append(index)
    stack = lambda a: np.vstack(a) if a else np.empty((0, n_boot))  # noqa: E731
    return _Side(rows.loc[kept], stack(ttft_d), stack(tpot_d), stack(out_d))


def _by_workload(df: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """{(model, input_len, output_len): its rows}, grouped once (filtering the whole frame per workload
    costs minutes at 10,000 points)."""
    empty = df.iloc[0:0]
    groups = dict(iter(df.groupby(WORKLOAD, sort=False))) if len(df) else {}
    return _Default(groups, empty)


class _Default(dict):
    def __init__(self, groups: dict, empty: pd.DataFrame):
        super().__init__(groups)
        self.empty = empty

    def __missing__(self, key):
        return self.empty


def _common_workloads(t: pd.DataFrame, b: pd.DataFrame) -> list[tuple]:
    keys = sorted(set(map(tuple, t[WORKLOAD].itertuples(index=False))) &
                  set(map(tuple, b[WORKLOAD].itertuples(index=False))))
    if not keys:
        raise UsageError("nothing to compare at a service level: the sides share no (model, input_len, "
                         "output_len), expected both measured on the same params grid")
    return keys


def _slo_row(key, slo: SLO, t: _Side, b: _Side, alpha: float, confidence: float) -> dict:
    t_value, t_batch = _point_best(t.rows, slo) if len(t.rows) else (np.nan, pd.NA)
    b_value, b_batch = _point_best(b.rows, slo) if len(b.rows) else (np.nan, pd.NA)
    row = {**dict(zip(WORKLOAD, key)), "slo": slo.name, "ttft_ms_max": slo.ttft_ms_max,
           "tpot_ms_max": slo.tpot_ms_max, "target_output_tok_s": t_value, "target_batch": t_batch,
           "baseline_output_tok_s": b_value, "baseline_batch": b_batch, "ratio": np.nan, "ratio_lo": np.nan,
           "ratio_hi": np.nan, "met_fraction": np.nan}
    missing = [side for side, v in (("target", t_value), ("baseline", b_value)) if np.isnan(v)]
    if missing:
        row["verdict"] = f"{NONE_MEETS} ({'both' if len(missing) == 2 else missing[0]})"
        return row
    fewest = min(len(x) for x in list(t.rows["ttft_ms_samples"]) + list(b.rows["ttft_ms_samples"]))
    if fewest < MIN_REPEATS_FOR_VERDICT:  # one repeat resamples to itself: no interval, no verdict
        row.update({"ratio": ratio("throughput", t_value, b_value), "verdict": TOO_FEW})
        return row
    t_draws, _ = _bounded_best(t.ttft_ms, t.tpot_ms, t.output_tok_s, slo)
    b_draws, _ = _bounded_best(b.ttft_ms, b.tpot_ms, b.output_tok_s, slo)
    boot = ratio("throughput", t_draws, b_draws)
    t_none, b_none = np.isnan(t_draws), np.isnan(b_draws)
    # A side that meets the bound at no batch in a draw has the worse bounded max there, whatever the other
    # side's figure: the ratio is +inf where only the target fails and 0 where only the baseline fails.
    # Only a draw in which both fail says nothing (NaN).
    boot = np.where(t_none & ~b_none, np.inf, np.where(b_none & ~t_none, 0.0, boot))
    decided = ~np.isnan(boot)
    met_fraction = float((~t_none & ~b_none).mean())
    # inverted_cdf picks draws rather than interpolating between them: between two infinite draws linear
    # interpolation gives NaN
    lo, hi = ((float(q) for q in np.quantile(boot[decided], [alpha / 2, 1 - alpha / 2], method="inverted_cdf"))
              if decided.any() else (np.nan, np.nan))
    # Draws where neither side meets the bound could go either way: the interval speaks at `confidence`
    # only when at least that share of the draws decides.
    row.update({"ratio": ratio("throughput", t_value, b_value), "ratio_lo": lo, "ratio_hi": hi,
                "met_fraction": met_fraction,
                "verdict": verdict(lo, hi) if decided.mean() >= confidence else NOISE})
    return row


def compare_slo(target, baseline, slos: Sequence[SLO] = DEFAULT_SLOS, target_system: str | None = None,
                baseline_system: str | None = None, n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> pd.DataFrame:
    """Target vs baseline bounded max throughput, per SLO and workload (model, input_len, output_len).

    `target` and `baseline` are results directories or DataFrames (perfkit.compare.load_side: a label
    picks a system, the newest row of a point wins). One row per (workload on both sides, SLO):
    model, input_len, output_len, slo, ttft_ms_max, tpot_ms_max, target_output_tok_s, target_batch,
    baseline_output_tok_s, baseline_batch, ratio (= baseline / target: < 1 the target is better),
    ratio_lo, ratio_hi, met_fraction, verdict. The bootstrap's rules: docs/service-levels.md.
    Raises UsageError when the sides share no workload.
    """
    t = load_side(target, target_system, "target")
    b = load_side(baseline, baseline_system, "baseline")
    alpha = 1 - confidence
    out = []
    groups = {"target": _by_workload(t[t["status"] == "ok"]), "baseline": _by_workload(b[b["status"] == "ok"])}
    for key in _common_workloads(t, b):
        sides = {side: _side_draws(groups[side][key], side, seed, n_boot) for side in ("target", "baseline")}
        for slo in slos:
            out.append(_slo_row(key, slo, sides["target"], sides["baseline"], alpha, confidence))
    table = pd.DataFrame(out, columns=COMPARE_COLUMNS)
    return table.astype({"target_batch": "Int64", "baseline_batch": "Int64"})


def frontier_ratios(target, baseline, target_system: str | None = None,
                    baseline_system: str | None = None) -> pd.DataFrame:
    """At each baseline frontier point's interactivity, the target's best throughput at that interactivity or better.

    One row per baseline frontier point of a workload measured on both sides: model, input_len,
    output_len, baseline_batch, interactivity_tok_s (the baseline point's), baseline_output_tok_s,
    target_output_tok_s (the largest over the target's measured ok points with interactivity_tok_s >= it;
    NaN if none), target_batch (<NA> if none), ratio = baseline / target (< 1: the target is better).
    Among target points with equal throughput the more interactive one, then the smaller batch, is shown.
    """
    t = load_side(target, target_system, "target")
    b = load_side(baseline, baseline_system, "baseline")
    keys = _common_workloads(t, b)
    b_front = frontier(b)
    t_points = interactivity_points(t)
    t_points = t_points[np.isfinite(t_points["interactivity_tok_s"].astype(float)) &
                        np.isfinite(t_points["output_tok_s"].astype(float))]
    out = []
    t_groups, b_groups = _by_workload(t_points), _by_workload(b_front)
    for key in keys:
        candidates = t_groups[key].sort_values(["output_tok_s", "interactivity_tok_s", "batch"],
                                               ascending=[False, False, True], kind="stable")
        for p in b_groups[key].to_dict("records"):
            better = candidates[candidates["interactivity_tok_s"] >= p["interactivity_tok_s"]]
            t_value = float(better["output_tok_s"].iloc[0]) if len(better) else np.nan
            out.append({**dict(zip(WORKLOAD, key)), "baseline_batch": int(p["batch"]),
                        "interactivity_tok_s": float(p["interactivity_tok_s"]),
                        "baseline_output_tok_s": float(p["output_tok_s"]), "target_output_tok_s": t_value,
                        "target_batch": int(better["batch"].iloc[0]) if len(better) else pd.NA,
                        "ratio": ratio("throughput", t_value, float(p["output_tok_s"]))})
    table = pd.DataFrame(out, columns=FRONTIER_RATIO_COLUMNS)
    return table.astype({"baseline_batch": "Int64", "target_batch": "Int64"})


def slos_for(cli_texts: Sequence[str] | None = None, runs: Sequence[dict] = ()) -> tuple[SLO, ...]:
    """The latency bounds a table uses: those given on the command line (`--slo`, replacing the rest);
    else those the params file of the newest sweep run recorded (`slos:`), checked like a params file's;
    else DEFAULT_SLOS (also when the newest sweep recorded none: removing `slos:` takes effect)."""
    if cli_texts:
        return parse_slos(cli_texts)
    sweeps = [r for r in runs if isinstance(r, dict) and isinstance(r.get("sweep"), dict)]
    if not sweeps:
        return DEFAULT_SLOS
    newest = max(sweeps, key=lambda r: str(r.get("created_utc") or r.get("run_id") or ""))
    recorded = newest["sweep"].get("slos")
    if not recorded:
        return DEFAULT_SLOS
    try:  # recorded as {name, ttft_ms_max, tpot_ms_max}: checked as a params file's {name, ttft_ms, tpot_ms}
        return parse_slo_params([{"name": d["name"], "ttft_ms": d["ttft_ms_max"], "tpot_ms": d["tpot_ms_max"]}
                                 for d in recorded], "the newest sweep's recorded slos")
    except (KeyError, TypeError, UsageError):
        return DEFAULT_SLOS  # a run record this version cannot read
