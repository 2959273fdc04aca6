"""The study's headline tables from a results DataFrame: `perfkit.summarize(df)` (defined here).

The command line prints them with `perfkit summary DIR`; the reports render them. The newest row of a point
wins, and a prompt phase's ttft samples are pooled over the output lengths measured there (rows derived from
a longer run left out, so that no sample counts twice). See docs/metrics.md (the figures) and docs/results.md.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from perfkit.metrics import rate

IDENTITY = ["system", "model", "input_len", "output_len", "batch"]
CONFIG = ["system", "model", "input_len"]


def latest_per_point(df: pd.DataFrame, keys: list[str] = IDENTITY) -> pd.DataFrame:
    """One row per point: where a point was measured more than once (a `perfkit run` appends, a changed
    params file measures under a new key), the newest row."""
    if "created_utc" in df:
        df = df.sort_values("created_utc", kind="stable")
    return df.drop_duplicates(keys, keep="last")


def _pooled_ms(group: pd.DataFrame, samples: str, median: str) -> np.ndarray:
    if samples in group:
        values = [v for lst in group[samples] if lst is not None for v in lst]
        if values:
            return np.asarray(values, dtype=float)
    return group[median].astype(float).to_numpy()


def not_derived(df: pd.DataFrame) -> pd.Series:
    """Rows measured directly, not read off a longer run (those repeat its prompt-phase samples)."""
    if "derived_from_output_len" not in df:
        return pd.Series(True, index=df.index)
    return df["derived_from_output_len"].isna()


def prompt_phase_rows(df: pd.DataFrame) -> pd.Series:
    """The rows whose ttft samples are pooled into one prompt-phase figure per (system, model, I, B).

    The prompt forward does the same work whatever O follows, so every directly measured O counts, except
    for the static backend: its cache, and so the keys the prompt attends over, is sized for I + O, so
    only its shortest O (the least extra work) stands for the prompt phase.
    """
    keep = not_derived(df)
    if "untimed" in df:  # an imported row whose tool timed no first token has no prompt phase to pool
        keep &= df["untimed"].isna()
    if "backend" in df and (df["backend"] == "static").any():
        group = [c for c in ("system", "model", "input_len", "batch") if c in df]
        shortest = df.groupby(group)["output_len"].transform("min")
        keep &= (df["backend"] != "static") | (df["output_len"] == shortest)
    return keep


def _ttft(ok: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (system, model, i_len), g in ok[(ok["batch"] == 1) & prompt_phase_rows(ok)].groupby(CONFIG, sort=True):
        ms = _pooled_ms(g, "ttft_ms_samples", "ttft_ms")
        q25, q50, q75 = np.percentile(ms, [25, 50, 75])
        rows.append({"system": system, "model": model, "input_len": i_len, "ttft_ms": q50, "ttft_iqr_ms": q75 - q25,
                     "prefill_tok_s": rate(i_len, q50), "n_samples": len(ms)})
    return pd.DataFrame(rows, columns=["system", "model", "input_len", "ttft_ms", "ttft_iqr_ms", "prefill_tok_s",
                                       "n_samples"])


def _prefill_max(ok: pd.DataFrame) -> pd.DataFrame:
    per_batch = []
    for (system, model, i_len, batch), g in ok[(ok["batch"] > 1) & prompt_phase_rows(ok)].groupby(
            CONFIG + ["batch"], sort=True):
        ttft_ms = float(np.median(_pooled_ms(g, "ttft_ms_samples", "ttft_ms")))
        per_batch.append({"system": system, "model": model, "input_len": i_len, "batch": batch, "ttft_ms": ttft_ms,
                          "max_prefill_tok_s": rate(batch * i_len, ttft_ms)})
    columns = ["system", "model", "input_len", "max_prefill_tok_s", "batch", "ttft_ms"]
    if not per_batch:
        return pd.DataFrame(columns=columns)
    pb = pd.DataFrame(per_batch)
    best = pb.loc[pb.groupby(CONFIG, sort=True)["max_prefill_tok_s"].idxmax()]
    return best[columns].reset_index(drop=True)


def _single_user(ok: pd.DataFrame) -> pd.DataFrame:
    columns = ["system", "model", "input_len", "output_len", "output_tok_s", "e2e_ms", "tpot_ms", "decode_tok_s",
               "ttft_ms", "derived_from_output_len"]
    su = ok[ok["batch"] == 1].copy()
    if "derived_from_output_len" not in su:
        su["derived_from_output_len"] = np.nan
    return su.sort_values(IDENTITY)[columns].reset_index(drop=True)


# How a finished search ends (perfkit.sweep.search.BatchSearch); any other last row means it did not finish.
SEARCH_ENDS = ("plateau", "grid_end", "grid_end_noisy")


def _multi_user_max(df: pd.DataFrame) -> pd.DataFrame:
    """The best multi-user throughput over B > 1 per (system, model, I, O), and why its search stopped, over
    every group at once: `oom` where a batch ran out of memory; `not searched` where no row says (rows from
    `perfkit run`); else the last batch's search_stop where it ended the search, and `incomplete` where it did
    not (a time budget, a crash or an error stopped the sweep before it could decide: calling that grid_end
    would claim batches were tried that never were)."""
    columns = ["system", "model", "input_len", "output_len", "max_output_tok_s", "batch", "stop_reason", "e2e_ms",
               "derived_from_output_len"]
    keys = CONFIG + ["output_len"]
    d = df.loc[df["batch"] > 1, [c for c in keys + ["batch", "status", "output_tok_s", "e2e_ms", "search_stop",
                                                    "derived_from_output_len"] if c in df]]
    if d.empty:
        return pd.DataFrame(columns=columns).astype({"batch": "Int64"})
    if "search_stop" not in d:
        d = d.assign(search_stop=None)
    by = [d[k] for k in keys]
    groups = pd.DataFrame({"oom": (d["status"] == "oom").groupby(by, sort=True).any(),
                           "searched": d["search_stop"].notna().groupby(by, sort=True).any()})
    last = d.sort_values("batch", kind="stable").groupby(keys, sort=True).tail(1).set_index(keys)["search_stop"]
    groups["last"] = last.reindex(groups.index)
    groups["stop_reason"] = np.where(groups["oom"], "oom", np.where(
        ~groups["searched"], "not searched",
        np.where(groups["last"].isin(SEARCH_ENDS), groups["last"], "incomplete")))
    ok = d[d["status"] == "ok"]
    # the best row: the largest throughput, the first of equals in the rows' order (as idxmax gives it)
    best = ok.sort_values("output_tok_s", ascending=False, kind="stable").drop_duplicates(keys, keep="first")
    best = best.set_index(keys).reindex(groups.index)
    out = groups.reset_index()[keys]
    out["max_output_tok_s"] = best["output_tok_s"].to_numpy(dtype=float)
    out["batch"] = pd.array(best["batch"].to_numpy(), dtype="Int64")
    out["stop_reason"] = groups["stop_reason"].to_numpy()
    out["e2e_ms"] = best["e2e_ms"].to_numpy(dtype=float)
    out["derived_from_output_len"] = (best["derived_from_output_len"].to_numpy(dtype=float)
                                      if "derived_from_output_len" in best else np.nan)
    return out[columns]


def _oom(df: pd.DataFrame) -> pd.DataFrame:
    columns = ["system", "model", "input_len", "output_len", "batch"]
    oom = df[df["status"] == "oom"]
    if not len(oom):
        return pd.DataFrame(columns=columns)
    return oom.groupby(CONFIG + ["output_len"], sort=True, as_index=False)["batch"].min()[columns]


def summarize(df) -> dict[str, pd.DataFrame]:
    """The headline tables of a results DataFrame (or a results path), one DataFrame each:

        ttft            system, model, input_len, ttft_ms, ttft_iqr_ms, ...          (batch 1)
        prefill_max     system, model, input_len, max_prefill_tok_s, batch, ...      (best over B > 1)
        single_user     system, model, input_len, output_len, output_tok_s, e2e_ms, tpot_ms, ...  (B = 1)
        multi_user_max  system, model, input_len, output_len, max_output_tok_s, batch, stop_reason, ...
        oom             system, model, input_len, output_len, batch                  (first batch out of memory)

    `stop_reason`: why the batch search ended (oom, plateau, grid_end, grid_end_noisy), "incomplete" where
    it has not, "not searched" for rows not from a sweep (docs/sweeps.md).
    """
    if isinstance(df, (str, os.PathLike)):
        from perfkit.results import load_results

        df = load_results(df)
    if len(df):
        df = latest_per_point(df)
    ok = df[df["status"] == "ok"] if len(df) else df
    return {
        "ttft": _ttft(ok),
        "prefill_max": _prefill_max(ok),
        "single_user": _single_user(ok),
        "multi_user_max": _multi_user_max(df),
        "oom": _oom(df),
    }


# ---- for `perfkit summary` and the reports --------------------------------------------------------

TABLE_TITLES = {
    "ttft": "Time to first token at batch 1",
    "prefill_max": "Max prefill throughput over batch > 1",
    "single_user": "Single-user throughput at batch 1 (prompt phase included)",
    "multi_user_max": "Multi-user total max throughput over batch > 1, and why the batch search stopped",
    "oom": "First batch out of memory",
    "speed_of_light": "Speed of light: achieved fraction of the prefill (MFU) and decode (MBU) bounds",
}
POINT_COLUMNS = ["system", "model", "input_len", "output_len", "batch", "status", "backend_mode", "ttft_ms",
                 "tpot_ms", "output_tok_s", "peak_mem_bytes", "noisy"]
SPEED_OF_LIGHT_TABLE_COLUMNS = ["system", "model", "input_len", "output_len", "batch", "ttft_ms", "prefill_tflop_s",
                                "mfu_spec", "mfu_probed", "tpot_ms", "decode_gb_s", "mbu_spec", "mbu_probed"]


def speed_of_light_table(df: pd.DataFrame, probe=None) -> pd.DataFrame:
    """Every measured point's achieved fractions (perfkit.roofline); NaN where a peak is unknown."""
    from perfkit.roofline import add_speed_of_light

    ok = latest_per_point(df[df["status"] == "ok"]) if len(df) else df
    if ok.empty:
        return pd.DataFrame(columns=SPEED_OF_LIGHT_TABLE_COLUMNS)
    sol = add_speed_of_light(ok, probe=probe)
    return sol[SPEED_OF_LIGHT_TABLE_COLUMNS].sort_values(IDENTITY).reset_index(drop=True)
