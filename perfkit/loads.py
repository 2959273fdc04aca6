"""Load levels of served systems (perfkit.serving.load): stored, read, tabled, set against SLOs, compared.

A level's row lives in RESULTS_DIR/loads/<key>.parquet, apart from the batch points: its figures come from
a window of steady traffic, not from B requests sent at once, so no point table may read it as a batch.
A latency bound (perfkit.slo.SLO) applies to a level's p99 over its measured requests (MLPerf's server
rule); comparisons resample requests. See docs/endpoints.md.
"""

from __future__ import annotations

import glob
import math
import os
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from perfkit.bootstrap import boot_indices, rng_for
from perfkit.errors import printable

LOADS = "loads"
_F, _I, _S, _B, _L = pa.float64(), pa.int64(), pa.string(), pa.bool_(), pa.list_(pa.float64())
LOAD_SCHEMA = pa.schema([
    ("run_id", _S), ("load_key", _S), ("system", _S), ("model", _S), ("device_name", _S), ("dtype", _S),
    ("backend", _S), ("input_len", _I), ("output_len", _I), ("load_kind", _S), ("load_value", _F),
    ("load_label", _S), ("requests", _I), ("warmup_requests", _I), ("duration_s", _F),
    ("stopped_by_duration", _B), ("status", _S), ("error", _S), ("window_s", _F), ("request_rate_s", _F),
    ("output_tok_s", _F), ("total_tok_s", _F), ("interactivity_tok_s", _F),
    ("ttft_p50_ms", _F), ("ttft_p90_ms", _F), ("ttft_p99_ms", _F), ("tpot_p50_ms", _F), ("tpot_p90_ms", _F),
    ("tpot_p99_ms", _F), ("itl_p50_ms", _F), ("itl_p99_ms", _F), ("e2e_p50_ms", _F), ("e2e_p99_ms", _F),
    ("ttft_ms_samples", _L), ("tpot_ms_samples", _L), ("e2e_ms_samples", _L),
    ("client_lag_p99_ms", _F), ("client_lag_max_ms", _F), ("client_bound", _B),
    ("endpoint_api", _S), ("served_model", _S), ("server_url", _S), ("server_version", _S),
    ("requests_json", _S), ("seed", _I), ("sweep_name", _S), ("git_commit", _S), ("host", _S), ("created_utc", _S),
    # levels imported from another benchmarking tool (perfkit.imports, docs/import.md), as in rows.SCHEMA
    ("source_tool", _S), ("source_version", _S), ("source_command", _S), ("source_file", _S),
    ("source_settings", _S), ("source_note", _S),
])


def load_path(out_dir: str, key: str) -> str:
    return os.path.join(out_dir, LOADS, f"{key}.parquet")


def write_load(out_dir: str, row: dict) -> str:
    """One level's row, atomically under its key (as perfkit.results.write_point)."""
    from perfkit.results import atomic_write

    table = pa.Table.from_pylist([{c: row.get(c) for c in LOAD_SCHEMA.names}], schema=LOAD_SCHEMA)
    path = load_path(out_dir, row["load_key"])
    atomic_write(path, lambda f: pq.write_table(table, f, write_page_checksum=True))
    return path


def _problem(row: dict, key: str) -> str | None:
    """Why a stored level cannot be used, or None."""
    if row.get("load_key") != key:
        return "its load_key differs from its file name"
    if row.get("status") not in ("ok", "error"):
        return f"status {row.get('status')!r}, expected ok or error"
    if row["status"] == "ok":
        n, window = row.get("requests"), row.get("window_s")
        if not isinstance(n, int) or n < 1 or not window or window <= 0:
            return "an ok level without measured requests or a window"
        for name in ("ttft_ms_samples", "e2e_ms_samples"):
            values = row.get(name) or []
            if len(values) != n or any(v is None or not math.isfinite(v) or v < 0 for v in values):
                return f"{name} does not hold {n} finite times"
        expected = n * row["output_len"] / window
        if not math.isclose(row.get("output_tok_s") or 0.0, expected, rel_tol=1e-6):
            return "output_tok_s does not follow from its requests and window"
    return None


def read_loads(out_dir: str) -> pd.DataFrame:
    """Every stored level of a results directory (a damaged file is named on stderr and left out)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, LOADS, "*.parquet"))):
        key = os.path.basename(path)[: -len(".parquet")]
        try:
            row = pq.read_table(path).to_pylist()[0]
            problem = _problem(row, key)
        except Exception as exc:  # noqa: BLE001 - whatever pyarrow raises on a damaged file, it is damage
            problem = f"not readable ({type(exc).__name__})"
        if problem:
            print(printable(f"perfkit: warning: skipped {path}: {problem}"), file=sys.stderr, flush=True)
            continue
        rows.append(row)
    return pd.DataFrame(rows, columns=LOAD_SCHEMA.names)


def loads_of(results: str, system: str | None = None) -> pd.DataFrame:
    """The stored levels of a results directory (of one system, where given); empty where there are none."""
    if not os.path.isdir(os.path.join(results, LOADS)):
        return pd.DataFrame(columns=LOAD_SCHEMA.names)
    df = read_loads(results)
    return df[df["system"] == system].reset_index(drop=True) if system else df


def loads_only(results, system: str | None = None) -> bool:
    """Whether results directory `results` holds load levels (of `system`, where given) but no batch point of
    it: a system known only under steady load, such as one imported from a serving benchmark (perfkit.imports).
    Summary, compare and the reports then show its levels alone, where they would otherwise refuse a directory
    (or a label) without points."""
    if not isinstance(results, (str, os.PathLike)) or not os.path.isdir(os.path.join(results, LOADS)):
        return False
    if loads_of(results, system).empty:
        return False
    if not glob.glob(os.path.join(results, "points", "*.parquet")):
        return True
    from perfkit.results import load_results

    points = load_results(results)
    return points.empty or (system is not None and system not in set(points["system"]))


def stored_keys(out_dir: str) -> set[str]:
    return set(read_loads(out_dir)["load_key"]) if os.path.isdir(os.path.join(out_dir, LOADS)) else set()


WORKLOAD = ["model", "input_len", "output_len"]
LEVEL = ["load_kind", "load_value"]


def load_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per system and level: what it sustained and at what latency."""
    cols = ["system", *WORKLOAD, "load_label", "requests", "request_rate_s", "output_tok_s",
            "interactivity_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "client_bound",
            "status"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    return df.sort_values(["system", *WORKLOAD, *LEVEL])[cols].reset_index(drop=True)


def best_within(df: pd.DataFrame, slos) -> pd.DataFrame:
    """Per system, workload and SLO: the level of largest output throughput whose p99 TTFT and p99 TPOT are
    within the bound (none: the row says so)."""
    out = []
    ok = df[df["status"] == "ok"]
    for (system, *workload), rows in ok.groupby(["system", *WORKLOAD], sort=True):
        for slo in slos:
            meets = rows[(rows["ttft_p99_ms"] <= slo.ttft_ms_max) & (rows["tpot_p99_ms"] <= slo.tpot_ms_max)]
            best = meets.sort_values(["output_tok_s", "load_value"], ascending=[False, True]).head(1)
            out.append({"system": system, **dict(zip(WORKLOAD, workload)), "slo": slo.name,
                        "level": best["load_label"].iloc[0] if len(best) else "none meets it",
                        "output_tok_s": float(best["output_tok_s"].iloc[0]) if len(best) else np.nan})
    return pd.DataFrame(out, columns=["system", *WORKLOAD, "slo", "level", "output_tok_s"])


def _median_draws(samples, rng, n_boot: int) -> np.ndarray:
    x = np.asarray(samples, dtype=float)
    return np.median(x[boot_indices(x.size, rng, n_boot)], axis=1)


def client_bound_levels(target: pd.DataFrame, baseline: pd.DataFrame) -> list[str]:
    """The levels both sides ran that compare_loads leaves out because a side was client-bound."""
    keys = WORKLOAD + LEVEL
    both = target.merge(baseline, on=keys, suffixes=("_t", "_b"))
    bound = both[both["client_bound_t"].eq(True) | both["client_bound_b"].eq(True)]
    return [f"{r.model} I={r.input_len} O={r.output_len} {r.load_label_t}" for r in bound.itertuples()]


# How far a closed loop's requests in flight (the sum of their e2e over the window) may fall short of its N
# users before Little's law, which gives a users level's throughput interval, no longer holds for it
USERS_HELD_TOLERANCE = 0.1


def _users_held(t, b, users: float) -> str | None:
    """Why a closed loop's throughput ratio gets no interval: a side whose client did not keep its N users'
    requests in flight (another tool's client that fell behind, say) breaks throughput = N·O / mean e2e, so
    resampling e2e would give an interval that need not hold its own ratio. None where both sides held N."""
    if not users:
        return None
    for side, row in (("target", t), ("baseline", b)):
        e2e, window = row.get("e2e_ms_samples"), row.get("window_s")
        if e2e is None or not len(e2e) or not window or not window > 0:
            continue
        held = float(np.sum(np.asarray(e2e, dtype=float))) / 1e3 / float(window)
        if abs(held - users) > USERS_HELD_TOLERANCE * users:
            return f"no interval (the {side} held {held:.2g} of {users:g} users' requests in flight on average)"
    return None


def compare_loads(target: pd.DataFrame, baseline: pd.DataFrame, seed: int = 0, n_boot: int = 2000,
                  alpha: float = 0.05) -> pd.DataFrame:
    """At each level both sides ran: median TTFT, TPOT and e2e over requests as Ratio_Latency (target /
    baseline) with a bootstrap over requests, and the window throughput as Ratio_Throughput (baseline /
    target). A closed loop's throughput is N·O/mean(e2e) by Little's law, so its interval comes from
    resampling requests' e2e; an arrival rate fixes the throughput it offers, so a rate level's throughput
    ratio carries no interval (its latency ratios carry the verdict). < 1: the target is better."""
    from perfkit.compare import ratio, verdict

    keys = WORKLOAD + LEVEL
    # a client-bound level (the client fell behind) may show the client's limit: no part in any ratio
    t_ok, b_ok = (d[(d["status"] == "ok") & ~d["client_bound"].eq(True)].set_index(keys) for d in (target, baseline))
    out = []
    for key in sorted(set(t_ok.index) & set(b_ok.index)):
        t, b = t_ok.loc[key], b_ok.loc[key]
        if isinstance(t, pd.DataFrame) or isinstance(b, pd.DataFrame):  # two levels under one key: not one level
            continue
        base = dict(zip(keys, key))
        base["load_label"] = t["load_label"]
        for metric, sample in (("ttft_ms", "ttft_ms_samples"), ("tpot_ms", "tpot_ms_samples"),
                               ("e2e_ms", "e2e_ms_samples")):
            ts, bs = list(t[sample] or []), list(b[sample] or [])
            if not ts or not bs:
                continue
            tv, bv = float(np.median(ts)), float(np.median(bs))
            if not (tv > 0 and bv > 0):  # every token of most requests read at once: no latency to set apart
                out.append({**base, "metric": metric, "target": tv, "baseline": bv, "ratio": np.nan,
                            "ratio_lo": np.nan, "ratio_hi": np.nan, "verdict": "no ratio (a median of 0 ms)"})
                continue
            td = _median_draws(ts, rng_for(seed, "target", "load", metric, key), n_boot)
            bd = _median_draws(bs, rng_for(seed, "baseline", "load", metric, key), n_boot)
            with np.errstate(divide="ignore", invalid="ignore"):  # a draw's median of 0: an infinite ratio
                lo, hi = (float(q) for q in np.quantile(td / bd, [alpha / 2, 1 - alpha / 2]))
            out.append({**base, "metric": metric, "target": tv, "baseline": bv, "ratio": ratio("latency", tv, bv),
                        "ratio_lo": lo, "ratio_hi": hi, "verdict": verdict(lo, hi)})
        tv, bv = float(t["output_tok_s"]), float(b["output_tok_s"])
        lo = hi = np.nan
        users_level = key[keys.index("load_kind")] == "users"
        # another tool's client has no lag monitor (perfkit's own rows say client_bound instead): where it held
        # fewer requests in flight than its users, the server saw a lighter load than the other side's
        imported = any(isinstance(r.get("source_tool"), str) for r in (t, b))
        held = _users_held(t, b, float(key[keys.index("load_value")])) if users_level and imported else None
        if held is not None:
            out.append({**base, "metric": "output_tok_s", "target": tv, "baseline": bv,
                        "ratio": ratio("throughput", tv, bv), "ratio_lo": lo, "ratio_hi": hi, "verdict": held})
            continue
        if users_level:
            te = np.asarray(t["e2e_ms_samples"], dtype=float)
            be = np.asarray(b["e2e_ms_samples"], dtype=float)
            td = te[boot_indices(te.size, rng_for(seed, "target", "load", "tput", key), n_boot)].mean(axis=1)
            bd = be[boot_indices(be.size, rng_for(seed, "baseline", "load", "tput", key), n_boot)].mean(axis=1)
            # throughput = L·O / mean e2e with L requests in flight on average (Little's law): baseline/target
            # throughput = (L_b / L_t)·(target / baseline mean e2e). L is each side's own, read off its window
            # throughput (a closed loop's warm-up and drain keep it below N), so the draws centre on the ratio.
            held_ratio = ratio("throughput", tv, bv) / (float(te.mean()) / float(be.mean()))
            lo, hi = (float(q) * held_ratio for q in np.quantile(td / bd, [alpha / 2, 1 - alpha / 2]))
        out.append({**base, "metric": "output_tok_s", "target": tv, "baseline": bv,
                    "ratio": ratio("throughput", tv, bv), "ratio_lo": lo, "ratio_hi": hi,
                    "verdict": verdict(lo, hi) if not np.isnan(lo) else "no interval (offered rate)"})
    return pd.DataFrame(out, columns=[*keys, "load_label", "metric", "target", "baseline", "ratio", "ratio_lo",
                                      "ratio_hi", "verdict"])


def compare_systems(target, baseline, target_system: str | None = None, baseline_system: str | None = None,
                    n_boot: int = 2000, confidence: float = 0.95, seed: int = 0):
    """perfkit.compare.compare, or, where a side's directory holds load levels but no batch point of its
    system (loads_only: an imported serving benchmark), the two systems' levels side by side: a Comparison
    with `loads_only` set, its ratios in `loads` (compare_loads) and no point or study figure."""
    from perfkit.compare import compare

    if not (loads_only(target, target_system) or loads_only(baseline, baseline_system)):
        return compare(target, baseline, target_system, baseline_system, n_boot=n_boot, confidence=confidence,
                       seed=seed)
    return _levels_comparison(target, baseline, target_system, baseline_system, n_boot, confidence, seed)


def _side_levels(source, system: str | None, side: str) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """(label, levels, the rows that describe the system: its points where it has any, else its levels)."""
    from perfkit.errors import UsageError
    from perfkit.results import load_results

    if not os.path.isdir(source):
        raise UsageError(f"{side} results directory {source!r} does not exist: expected the --out of a sweep, run "
                         "or import")
    levels = loads_of(source, system)
    labels = sorted(levels["system"].dropna().unique())
    if levels.empty:
        raise UsageError(f"nothing to compare: the {side} ({source}{':' + system if system else ''}) has no load "
                         "level and the other side has load levels only: expected both at the same load levels")
    if len(labels) > 1:
        raise UsageError(f"{side} results hold several systems ({', '.join(labels)}): name the {side} system")
    points = load_results(source) if glob.glob(os.path.join(source, "points", "*.parquet")) else pd.DataFrame()
    points = points[points["system"] == labels[0]] if len(points) else points
    return labels[0], levels, points if len(points) else levels


def _levels_comparison(target, baseline, target_system, baseline_system, n_boot: int, confidence: float,
                       seed: int):
    from perfkit.compare import WORKLOAD as POINT_WORKLOAD
    from perfkit.compare import Comparison, side_systems
    from perfkit.errors import UsageError

    t_label, t_levels, t_rows = _side_levels(target, target_system, "target")
    b_label, b_levels, b_rows = _side_levels(baseline, baseline_system, "baseline")
    ratios = compare_loads(t_levels, b_levels, seed=seed, n_boot=n_boot, alpha=1 - confidence)
    if ratios.empty:
        raise UsageError(f"nothing to compare: {t_label} and {b_label} share no load level (the same model, "
                         "input and output length, and users or rate): expected both measured at the same levels")
    point_cols = POINT_WORKLOAD + ["metric", "kind", "unit", "target", "baseline", "ratio", "ratio_lo", "ratio_hi",
                                   "verdict", "bootstrap"]
    study_cols = ["model", "input_len", "output_len", "metric", "kind", "unit", "target", "target_batch", "baseline",
                  "baseline_batch", "ratio", "ratio_lo", "ratio_hi", "verdict", "bootstrap"]
    one_sided = pd.DataFrame(columns=POINT_WORKLOAD + ["status"])
    return Comparison(t_label, b_label, pd.DataFrame(columns=point_cols), pd.DataFrame(columns=study_cols),
                      one_sided, one_sided.copy(),
                      pd.DataFrame(columns=POINT_WORKLOAD + ["target_status", "baseline_status"]),
                      side_systems(t_rows, b_rows), confidence, n_boot, seed, loads_only=True, loads=ratios)
