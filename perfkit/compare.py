"""Target vs baseline: ratios with bootstrap intervals and a verdict, at the point and the study level.

Ratio_Latency = L_target / L_baseline and Ratio_Throughput = T_baseline / T_target, so that every ratio
reads the same way: **< 1 means the target is better**. The intervals resample each side's raw repeats
(perfkit.bootstrap), seeded, so a rebuilt report shows the same intervals; where both sides' repeats were
interleaved (perfkit.sweep.interleave), they resample the pairs (repeat i of each side) together. numpy and
pandas only (no plotting), so it runs wherever results are read. See docs/comparisons.md.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

from perfkit import metrics
from perfkit.bootstrap import boot_indices, boot_medians, rng_for
from perfkit.errors import UsageError
from perfkit.summary import latest_per_point, prompt_phase_rows

WORKLOAD = ["model", "input_len", "output_len", "batch"]

BETTER, WORSE, NOISE = "target better", "target worse", "within noise"

# Point-level metrics: column, kind, unit, and which raw samples the bootstrap resamples.
POINT_METRICS = {
    "ttft_ms": ("latency", "ms", "ttft"),
    "tpot_ms": ("latency", "ms", "tpot"),
    "e2e_ms": ("latency", "ms", "e2e"),
    "prefill_tok_s": ("throughput", "tok/s", "ttft"),
    "decode_tok_s": ("throughput", "tok/s", "tpot"),
    "output_tok_s": ("throughput", "tok/s", "e2e"),
}

# Study-level metrics: (name, kind, unit, keys, sample kind, batch rule)
STUDY_METRICS = [
    ("ttft_ms", "latency", "ms", ["model", "input_len"], "ttft", "b1"),
    ("max_prefill_tok_s", "throughput", "tok/s", ["model", "input_len"], "ttft", "max"),
    ("single_user_tok_s", "throughput", "tok/s", ["model", "input_len", "output_len"], "e2e", "b1"),
    ("tpot_ms", "latency", "ms", ["model", "input_len", "output_len"], "tpot", "b1"),
    ("max_output_tok_s", "throughput", "tok/s", ["model", "input_len", "output_len"], "e2e", "max"),
]

STUDY_TITLES = {
    "ttft_ms": "Time to first token, batch 1 (ms)",
    "max_prefill_tok_s": "Max prefill throughput over batch > 1 (tok/s)",
    "single_user_tok_s": "Single-user throughput, batch 1 (tok/s)",
    "tpot_ms": "Time per output token, batch 1 (ms)",
    "max_output_tok_s": "Multi-user total max throughput over batch > 1 (tok/s)",
}


@dataclasses.dataclass
class Comparison:
    """Everything a comparison report shows; every table is a plain DataFrame."""

    target: str  # labels of the two systems
    baseline: str
    points: pd.DataFrame  # one row per (workload, metric): target, baseline, ratio, ratio_lo, ratio_hi, verdict
    study: pd.DataFrame  # one row per (model, I[, O], metric), with the batch each side's max came from
    only_target: pd.DataFrame  # workloads measured on one side only (never silently dropped)
    only_baseline: pd.DataFrame
    not_ok: pd.DataFrame  # matched workloads where either side has no timings (oom/error) and their status
    systems: pd.DataFrame  # side, system, device_name, dtype, backend, attn_implementation, ...
    confidence: float
    n_boot: int
    seed: int
    # a comparison of load levels alone: a side's directory holds levels but no batch point of its system (a
    # serving benchmark's run imported by perfkit.imports); `loads` then holds the level ratios
    loads_only: bool = False
    loads: pd.DataFrame | None = None


# ---- loading one side ----------------------------------------------------------------------------

CLIENT_BOUND = "client-bound"


def load_side(source, system: str | None = None, side: str = "target") -> pd.DataFrame:
    """One side's rows: `source` is a results directory (or a DataFrame), `system` a label to select.

    A directory holding several systems needs `system`. Where the same workload was measured more than
    once (`perfkit run` appends), the latest measurement is used.
    """
    from perfkit.results import open_results, select_system

    if isinstance(source, pd.DataFrame):
        df = source.copy()
        if df.empty:
            raise UsageError(f"{side}: no results in the table")
    else:
        df = open_results(source, f"{side} results directory", system, "its results", side)
    df = select_system(df, system, "its results", side)
    labels = sorted(df["system"].dropna().unique())
    if not system and len(labels) > 1:
        raise UsageError(f"{side} results hold several systems ({', '.join(labels)}): name the {side} system")
    df = latest_per_point(df, WORKLOAD)
    if "client_bound" in df:
        # A served point whose client fell behind (perfkit.serving.point.CLIENT_LAG_P99_MS) may show the
        # client's limit, not the server's: it takes no part in a ratio, and is listed as such.
        bound = (df["status"] == "ok") & (df["client_bound"].astype("boolean").fillna(False)).astype(bool)
        if bound.any():
            df = df.copy()
            df.loc[bound, "status"] = CLIENT_BOUND
    # The loader's notes (skipped files, already said) would be deep-copied by pandas into every slice of
    # the thousands a comparison takes: the side's rows travel without them.
    df.attrs = {}
    return df.sort_values(WORKLOAD, kind="stable").reset_index(drop=True)


# ---- samples and bootstrap -------------------------------------------------------------------------

def samples_ms(row, kind: str) -> np.ndarray:
    """Raw per-repeat samples (ms) of one row: ttft, e2e, or tpot = (e2e − ttft)/(O − 1)."""
    ttft = np.asarray(row["ttft_ms_samples"] if row["ttft_ms_samples"] is not None else [], dtype=float)
    if kind == "ttft":
        return ttft
    e2e = np.asarray(row["e2e_ms_samples"] if row["e2e_ms_samples"] is not None else [], dtype=float)
    if kind == "e2e":
        return e2e
    if kind == "tpot":
        if ttft.size != e2e.size:  # repeats must pair up; a row that lost one side has no tpot samples
            return np.array([])
        return metrics.tpot(ttft, e2e, int(row["output_len"]))
    raise ValueError(kind)


# The study's throughput figures are results columns read at a chosen batch.
_STUDY_COLUMN = {"max_prefill_tok_s": "prefill_tok_s", "single_user_tok_s": "output_tok_s",
                 "max_output_tok_s": "output_tok_s"}


def _work(row, metric: str) -> float:
    """Tokens per unit of latency for a throughput metric (perfkit.metrics.THROUGHPUTS)."""
    _, tokens = metrics.THROUGHPUTS[_STUDY_COLUMN.get(metric, metric)]
    return tokens(int(row["batch"]), int(row["input_len"]), int(row["output_len"]))


def _side_value(rows: list, metric: str, kind: str, sample: str, draw):
    """(value, batch, bootstrap draws) of one side: a median latency, a throughput, or a max throughput.
    `draw(row, x)`: the bootstrap medians of a row's samples x."""
    values, batches, draws = [], [], []
    for row in rows:
        x = samples_ms(row, sample)
        if x.size == 0 or not np.all(np.isfinite(x)):
            continue  # a row without usable samples has no figure (and no say in the max)
        med, boot = float(np.median(x)), draw(row, x)
        if kind == "throughput":
            w = _work(row, metric)
            med, boot = w / (med / 1e3), w / (boot / 1e3)
        values.append(med)
        batches.append(int(row["batch"]))
        draws.append(boot)
    if not values:
        return np.nan, None, None
    best = int(np.argmax(values))
    return values[best], batches[best], np.max(np.vstack(draws), axis=0)


def ratio(kind: str, target: float, baseline: float) -> float:
    """The kit's ratio convention: < 1 means the target is better."""
    return target / baseline if kind == "latency" else baseline / target


# Below this many repeats a point's bootstrap says nothing: one sample resamples to itself (an interval
# of zero width would read as certainty).
MIN_REPEATS_FOR_VERDICT = 2
TOO_FEW = "too few repeats"


def verdict(lo: float, hi: float) -> str:
    """Better or worse when the interval excludes 1 (an end may be infinite: a side that meets a bound
    nowhere, perfkit.slo); within noise when it holds 1 or is unknown."""
    if np.isnan(lo) or np.isnan(hi):
        return NOISE
    if hi < 1:
        return BETTER
    if lo > 1:
        return WORSE
    return NOISE


PAIRED, INDEPENDENT = "paired", "independent"


def _interleaved_with(tr, br, sample: str) -> bool:
    """Whether repeat i of row `tr` and repeat i of row `br` were taken side by side: both rows come from
    one interleaved job (perfkit.sweep.interleave: the same interleave_id) with as many samples each."""
    if tr.get("repeat_order") != "interleaved" or br.get("repeat_order") != "interleaved":
        return False
    ids = tr.get("interleave_id")
    if ids is None or not isinstance(ids, (str, tuple)) or ids != br.get("interleave_id"):
        return False
    return samples_ms(tr, sample).size == samples_ms(br, sample).size


def _paired(t_rows: list, b_rows: list, sample: str) -> bool:
    """Whether every batch of a figure was interleaved on both sides, so the bootstrap can resample pairs."""
    by_batch = {int(r["batch"]): r for r in b_rows}
    return len(t_rows) == len(by_batch) and all(
        int(tr["batch"]) in by_batch and _interleaved_with(tr, by_batch[int(tr["batch"])], sample) for tr in t_rows)


def _ratio_row(kind, metric, t_rows, b_rows, sample, seed, key, n_boot, alpha):
    paired = _paired(t_rows, b_rows, sample)
    if paired:
        # Repeat i of the target and repeat i of the baseline ran next to each other: resample the pairs (the
        # same indices on both sides), so what drifted between repeats moves both and cancels in the ratio.
        shared: dict[int, np.ndarray] = {}

        def draw(row, x):
            b = int(row["batch"])
            if b not in shared:
                shared[b] = boot_indices(x.size, rng_for(seed, PAIRED, metric, key, b), n_boot)
            return np.median(x[shared[b]], axis=1)

        draw_t = draw_b = draw
    else:
        rng_t, rng_b = rng_for(seed, "target", metric, key), rng_for(seed, "baseline", metric, key)
        def draw_t(row, x):
            return boot_medians(x, rng_t, n_boot)

        def draw_b(row, x):
            return boot_medians(x, rng_b, n_boot)
    t, t_batch, t_draws = _side_value(t_rows, metric, kind, sample, draw_t)
    b, b_batch, b_draws = _side_value(b_rows, metric, kind, sample, draw_b)
    if t_draws is None or b_draws is None:
        return None
    r = ratio(kind, t, b)
    how = PAIRED if paired else INDEPENDENT
    fewest = min(samples_ms(row, sample).size for row in list(t_rows) + list(b_rows)
                 if samples_ms(row, sample).size)
    if fewest < MIN_REPEATS_FOR_VERDICT:
        return {"target": t, "baseline": b, "target_batch": t_batch, "baseline_batch": b_batch,
                "ratio": r, "ratio_lo": np.nan, "ratio_hi": np.nan, "verdict": TOO_FEW, "bootstrap": how}
    boot = ratio(kind, t_draws, b_draws)
    lo, hi = (float(q) for q in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    return {"target": t, "baseline": b, "target_batch": t_batch, "baseline_batch": b_batch,
            "ratio": r, "ratio_lo": lo, "ratio_hi": hi, "verdict": verdict(lo, hi), "bootstrap": how}


# ---- the comparison ---------------------------------------------------------------------------------

def _describe(df: pd.DataFrame) -> str:
    parts = []
    for col, name in (("model", "models"), ("input_len", "input lengths"), ("output_len", "output lengths"),
                      ("batch", "batches")):
        parts.append(f"{name} {', '.join(str(v) for v in sorted(df[col].unique()))}")
    return "; ".join(parts)


def _mismatch_message(t: pd.DataFrame, b: pd.DataFrame) -> str:
    differ = [name for col, name in (("model", "models"), ("input_len", "input lengths"),
                                     ("output_len", "output lengths"), ("batch", "batches"))
              if not set(t[col]) & set(b[col])]
    why = (f"they share no {', no '.join(differ)}" if differ
           else "no combination of model, lengths and batch is on both sides")
    return (f"nothing to compare: {why}. target has {_describe(t)}. baseline has {_describe(b)}. "
            f"Measure both systems on the same params grid.")


def _system_info(df: pd.DataFrame, side: str) -> dict:
    info = {"side": side}
    served = ("server_version", "served_model", "endpoint_api") if (df.get("backend") == "served").any() else ()
    for col in ("system", "device_name", "dtype", "backend", "attn_implementation", "torch_version",
                "transformers_version", "git_commit", *served):
        vals = sorted({str(v) for v in df[col].dropna().unique()}) if col in df else []
        info[col] = ", ".join(vals) if vals else "unknown"
    return info


def compare(target, baseline, target_system: str | None = None, baseline_system: str | None = None,
            n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Compare `target` against `baseline` (results directories or DataFrames, optionally system labels).

    Raises UsageError naming what differs when the two sides share no workload point.
    """
    t = load_side(target, target_system, "target")
    b = load_side(baseline, baseline_system, "baseline")
    alpha = 1 - confidence
    keys_t = set(map(tuple, t[WORKLOAD].itertuples(index=False)))
    keys_b = set(map(tuple, b[WORKLOAD].itertuples(index=False)))
    common = keys_t & keys_b
    if not common:
        raise UsageError(_mismatch_message(t, b))
    in_common = lambda df: df[[tuple(k) in common for k in df[WORKLOAD].itertuples(index=False)]]  # noqa: E731
    only = lambda df, other: df[[tuple(k) not in other for k in df[WORKLOAD].itertuples(index=False)]]  # noqa: E731
    only_cols = WORKLOAD + ["status"]
    only_target = only(t, keys_b)[only_cols].reset_index(drop=True)
    only_baseline = only(b, keys_t)[only_cols].reset_index(drop=True)

    tc, bc = in_common(t).set_index(WORKLOAD), in_common(b).set_index(WORKLOAD)
    bc = bc.loc[tc.index]
    bad = (tc["status"] != "ok") | (bc["status"] != "ok")
    not_ok = pd.DataFrame({"target_status": tc["status"][bad], "baseline_status": bc["status"][bad]}).reset_index()

    points = []
    # rows as dicts, once: a comparison of 10,000 points must not index a frame of raw samples per point
    good = ~bad.to_numpy()
    t_rows = tc[good].reset_index().to_dict("records")
    b_rows = bc[good].reset_index().to_dict("records")
    for tr, br in zip(t_rows, b_rows):
        key = tuple(tr[k] for k in WORKLOAD)
        for metric, (kind, unit, sample) in POINT_METRICS.items():
            res = _ratio_row(kind, metric, [tr], [br], sample, seed, key, n_boot, alpha)
            if res is None:
                continue
            res.pop("target_batch"), res.pop("baseline_batch")
            points.append({**dict(zip(WORKLOAD, key)), "metric": metric, "kind": kind, "unit": unit, **res})
    points = pd.DataFrame(points, columns=WORKLOAD + ["metric", "kind", "unit", "target", "baseline", "ratio",
                                                      "ratio_lo", "ratio_hi", "verdict", "bootstrap"])

    # what the study's figures read, without the rest of each row (pandas copies every column it slices)
    read = [c for c in ("system", "model", "input_len", "output_len", "batch", "backend", "derived_from_output_len",
                        "ttft_ms_samples", "e2e_ms_samples", "repeat_order", "interleave_id")
            if c in t.columns and c in b.columns]
    study = pd.DataFrame(_study_rows(t.loc[t["status"] == "ok", read], b.loc[b["status"] == "ok", read], seed,
                                     n_boot, alpha),
                         columns=["model", "input_len", "output_len", "metric", "kind", "unit", "target",
                                  "target_batch", "baseline", "baseline_batch", "ratio", "ratio_lo", "ratio_hi",
                                  "verdict", "bootstrap"])
    systems = side_systems(t, b)
    return Comparison(_label(t, target_system), _label(b, baseline_system), points, study, only_target,
                      only_baseline, not_ok, systems, confidence, n_boot, seed)


def measured_by(df: pd.DataFrame) -> dict:
    """Who produced a side's rows: perfkit itself, or the tool its rows were imported from (perfkit.imports),
    with the tool's version, command line and file."""
    imported = df[df["source_tool"].notna()] if "source_tool" in df else df.iloc[0:0]
    if imported.empty:
        return {"measured by": "perfkit", "source command": "—", "source file": "—"}
    joined = lambda col: ", ".join(sorted({str(v) for v in imported[col].dropna()})) or "not recorded"  # noqa: E731
    version = joined("source_version")
    by = f"{joined('source_tool')} " + (f"{version}" if version != "not recorded" else "(version not recorded)") + \
        ", imported"
    if len(imported) < len(df):
        by += f"; {len(df) - len(imported)} rows measured by perfkit"
    return {"measured by": by, "source command": joined("source_command"), "source file": joined("source_file")}


def side_systems(t: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The two sides' provenance (Comparison.systems) from their rows (points, or load levels), with who
    measured each where either side's rows came from another tool: a comparison of an imported system says
    which side came from which tool."""
    systems = pd.DataFrame([_system_info(t, "target"), _system_info(b, "baseline")])
    by = [measured_by(t), measured_by(b)]
    if all(x["measured by"] == "perfkit" for x in by):
        return systems
    for col in by[0]:
        systems[col] = [x[col] for x in by]
    return systems


def _label(df, given):
    return given or ", ".join(sorted(df["system"].dropna().unique()))


def side_names(target: str, baseline: str) -> tuple[str, str]:
    """The two sides as a table's columns, a plot's series or a terminal line name them: their labels, each
    followed by its side where the two are the same (one system measured on two machines, or before and
    after an upgrade), so that no two columns or series share a name."""
    if target != baseline:
        return target, baseline
    return f"{target} (target)", f"{baseline} (baseline)"


def _rows_for(sel: pd.DataFrame, keys: list, rule: str) -> list:
    """The rows of one group of a study metric (`sel`: the group's rows), in ascending batch order."""
    sel = sel[sel["batch"] == 1] if rule == "b1" else sel[sel["batch"] > 1]
    if "output_len" in keys:
        return sel.sort_values("batch").to_dict("records")
    # Prompt-phase metrics do not depend on output_len: as perfkit.summarize does, pool the ttft samples of
    # every output length measured at a batch, leaving out rows derived from a longer run (they repeat its
    # samples), so each side's figure is the one its report shows.
    sel = sel[prompt_phase_rows(sel)]  # per (system, model, I, B): the same groups as pooled below
    rows = []
    for batch, g in sel.groupby("batch", sort=True):
        pooled = [v for lst in g["ttft_ms_samples"] if lst is not None for v in lst]
        row = {"batch": int(batch), "input_len": int(g["input_len"].to_numpy()[0]), "output_len": 1,
               "ttft_ms_samples": pooled, "e2e_ms_samples": None}
        # pooled in the sides' common row order (output length, load_side's sort): where every pooled row was
        # interleaved, the i-th pooled repeats of the two sides still ran side by side
        if "repeat_order" in g and (g["repeat_order"] == "interleaved").all():
            row.update({"repeat_order": "interleaved", "interleave_id": tuple(g["interleave_id"])})
        rows.append(row)
    return rows


def _study_rows(t: pd.DataFrame, b: pd.DataFrame, seed: int, n_boot: int, alpha: float) -> list[dict]:
    out = []
    for metric, kind, unit, keys, sample, rule in STUDY_METRICS:
        t_groups, b_groups = dict(iter(t.groupby(keys, sort=False))), dict(iter(b.groupby(keys, sort=False)))
        for key in sorted(set(t_groups) & set(b_groups)):
            t_rows, b_rows = _rows_for(t_groups[key], keys, rule), _rows_for(b_groups[key], keys, rule)
            if not t_rows or not b_rows:
                continue
            res = _ratio_row(kind, metric, t_rows, b_rows, sample, seed, key, n_boot, alpha)
            if res is None:
                continue
            ident = dict(zip(keys, key))
            out.append({"model": ident["model"], "input_len": ident["input_len"],
                        "output_len": ident.get("output_len", pd.NA), "metric": metric, "kind": kind,
                        "unit": unit, **res})
    return out


def summary_line(c: Comparison) -> str:
    """One sentence for the top of a report: how many study ratios favour each side."""
    if c.loads_only:
        return _loads_line(c)
    counts = c.study["verdict"].value_counts() if not c.study.empty else pd.Series(dtype=int)
    n = len(c.study)
    geo = metrics.geometric_mean(c.study["ratio"])
    target, baseline = side_names(c.target, c.baseline)
    line = (f"{target} vs {baseline}: of {n} study figures, target better in {counts.get(BETTER, 0)}, "
            f"worse in {counts.get(WORSE, 0)}, within noise in {counts.get(NOISE, 0)}; "
            f"geometric-mean ratio {geo:.3g} (< 1 favours the target).")
    paired = int((c.study["bootstrap"] == PAIRED).sum()) if "bootstrap" in c.study else 0
    if n and paired == n:
        line += " Every interval resamples pairs of repeats measured side by side (an interleaved sweep)."
    elif paired:
        line += (f" {paired} of the {n} intervals resample pairs of repeats measured side by side (an interleaved "
                 "sweep); the rest resample each side alone.")
    return line


def _loads_line(c: Comparison) -> str:
    counts = c.loads["verdict"].value_counts()
    target, baseline = side_names(c.target, c.baseline)
    levels = c.loads[["model", "input_len", "output_len", "load_kind", "load_value"]].drop_duplicates()
    geo = metrics.geometric_mean(c.loads["ratio"].dropna())
    return (f"{target} vs {baseline}: load levels only (no batch point on a side): of {len(c.loads)} ratios at "
            f"{len(levels)} levels, target better in {counts.get(BETTER, 0)}, worse in {counts.get(WORSE, 0)}, "
            f"within noise or without an interval in {len(c.loads) - counts.get(BETTER, 0) - counts.get(WORSE, 0)}; "
            f"geometric-mean ratio {geo:.3g} (< 1 favours the target).")


# ---- naming a side: DIR[:LABEL] ----------------------------------------------------------------------

def parse_side(arg: str) -> tuple[str, str | None]:
    """DIR or DIR:LABEL (a system of that results directory).

    Either may hold colons: an existing path is taken whole, else the split is at the first colon whose
    left-hand part is an existing directory (so `res:gpu:static` is system `gpu:static` of `res`), else at
    the last colon (and loading then names the directory that does not exist).
    """
    if os.path.exists(arg) or ":" not in arg:
        return arg, None
    cuts = [i for i, ch in enumerate(arg) if ch == ":"]
    at = next((i for i in cuts if os.path.isdir(arg[:i])), cuts[-1])
    return arg[:at], arg[at + 1:] or None


def resolve_side(arg: str, flag_label: str | None, side: str) -> tuple[str, str | None]:
    """A side given as DIR[:LABEL], with --target-system/--baseline-system as another way to name LABEL."""
    path, label = parse_side(arg)
    if label and flag_label and label != flag_label:
        raise UsageError(f"the {side} system is named twice, {label!r} in {arg!r} and {flag_label!r} by "
                         f"--{side}-system: name it once")
    return path, label or flag_label
