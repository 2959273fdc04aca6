"""The tables of a report and of a comparison, as pandas DataFrames and Stylers (pandas only: no plotting).

The notebooks display what these functions return; the numbers come from perfkit.summary (one system's
study tables) and perfkit.compare (target vs baseline ratios), never recomputed here.

Every text that comes from results, params files or the environment (labels, model and device names, the
commit, error messages, paths) is shown as text, never as markup: Stylers escape cells and headers as HTML
(pandas does not by default), and values put into Markdown go through md_escape.
"""

from __future__ import annotations

import functools
import html
import math
import re

import pandas as pd

from perfkit.compare import (
    BETTER,
    NOISE,
    POINT_METRICS,
    STUDY_TITLES,
    WORSE,
    Comparison,
    measured_by,
    side_names,
)
from perfkit.metrics import geometric_mean

MIB = 2**20

# One sentence per metric: the card at the top of every report.
METRIC_CARD = [
    ("TTFT (ms)", "Time to first token: from the prompt's token ids on the host to the first generated token of "
                  "every sequence, median over repeats (lower is better)."),
    ("Prefill throughput (tok/s)", "Prompt tokens processed per second in the prompt phase, B·I / TTFT."),
    ("Max prefill throughput (tok/s)", "The largest prefill throughput over batch sizes B > 1 at a given model and "
                                       "input length, with the batch that gave it."),
    ("Single-user throughput (tok/s)", "Generated tokens per second for one user, O / e2e at B = 1, prompt phase "
                                       "included."),
    ("Multi-user total max throughput (tok/s)", "The largest B·O / e2e over batch sizes B > 1 at a given "
                                                "(model, I, O), with the batch that gave it; the batch search stops "
                                                "at out-of-memory, a plateau, or the grid's end."),
    ("TPOT (ms)", "Time per output token after the first, (e2e − TTFT) / (O − 1), median over repeats."),
    ("Decode throughput (tok/s)", "Tokens per second of the token phase alone, B / TPOT."),
    ("e2e (ms)", "Start of the prompt to the last of O generated tokens, median over repeats."),
    ("Peak memory (MiB)", "Peak device memory during the point (process RSS on a CPU)."),
    ("Ratio", "Latency: target / baseline; throughput: baseline / target. Both below 1 mean the target is "
              "better; the interval is a seeded bootstrap over the raw repeats, and a verdict is only given when "
              "it excludes 1."),
]

_NICE = {
    "system": "system", "model": "model", "input_len": "I", "output_len": "O", "batch": "B",
    "ttft_ms": "TTFT ms", "ttft_iqr_ms": "TTFT IQR ms", "prefill_tok_s": "prefill tok/s",
    "max_prefill_tok_s": "max prefill tok/s", "output_tok_s": "output tok/s", "e2e_ms": "e2e ms",
    "tpot_ms": "TPOT ms", "decode_tok_s": "decode tok/s", "max_output_tok_s": "max output tok/s",
    "stop_reason": "search stopped", "peak_mem_mib": "peak MiB", "n_samples": "samples",
}


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$:])")


def md_escape(value) -> str:
    """`value` as literal text inside Markdown (IPython's Markdown, like nbconvert's, passes raw HTML through):
    line breaks and control characters become spaces, Markdown's punctuation is backslash-escaped (no
    emphasis, link, heading, list or math) and &, <, >, " and ' become HTML entities."""
    text = re.sub(r"[\x00-\x1f\x7f\u2028\u2029]+", " ", str(value))
    return html.escape(_MD_SPECIAL.sub(r"\\\1", text), quote=True)


def escaped(styler):
    """`styler` with its row and column headers escaped as HTML: column names are built from labels."""
    return styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)


def metric_card() -> pd.DataFrame:
    return pd.DataFrame(METRIC_CARD, columns=["metric", "definition"])


def text_table(df: pd.DataFrame):
    """A Styler of a text table: left-aligned, no index, every cell and header escaped."""
    return escaped(df.style.format(escape="html", na_rep="—")).hide(axis="index") \
        .set_properties(**{"text-align": "left"}) \
        .set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])


def stand_in_note(df: pd.DataFrame) -> str | None:
    """A plain warning when the results are tiny stand-in models or were measured on a CPU, else None."""
    if df.empty:
        return None
    models = sorted(df["model"].dropna().unique())
    tiny = [m for m in models if str(m).startswith("tiny-")]
    devices = {str(d) for d in df.get("device", pd.Series(dtype=str)).dropna().unique()}
    cpu = bool(devices) and all(d.startswith("cpu") for d in devices)
    parts = []
    if tiny:
        parts.append(f"the models ({', '.join(tiny)}) are tiny scaled-down stand-ins (4 layers, hidden size 128) "
                     "for the study's architectures, with random weights")
    if cpu:
        parts.append("they were measured on a CPU, not an accelerator")
    if not parts:
        return None
    return ("Read with care: " + "; ".join(parts) + ". These numbers show how the kit works and how systems "
            "differ on this machine; they say nothing about full-size models on a GPU.")


def _values(g: pd.DataFrame, col: str, absent_on_cpu: bool = False) -> str:
    """The distinct values of `col` in one system's rows `g`, joined."""
    if col in g:
        v = sorted({str(x) for x in g[col].dropna().unique()})
        if v:
            return ", ".join(v)
    # A CPU run has no CUDA and no GPU driver: say so rather than "unknown".
    on_cpu = "device" in g and set(g["device"].dropna()) == {"cpu"}
    return "none (CPU)" if absent_on_cpu and on_cpu else "unknown"


def provenance(df: pd.DataFrame, runs: list[dict] | None = None) -> pd.DataFrame:
    """Where each system's numbers came from: one row per system."""
    rows = []
    for system, g in df.groupby("system", sort=True):
        vals = functools.partial(_values, g)
        run_ids = sorted(g["run_id"].dropna().unique()) if "run_id" in g else []
        threads = sorted({str(r.get("torch_threads")) for r in (runs or []) if r.get("run_id") in run_ids
                          and r.get("torch_threads") is not None})
        created = g["created_utc"].dropna() if "created_utc" in g else pd.Series(dtype=str)
        rows.append({
            "system": system, "device": vals("device_name"), "dtype": vals("dtype"), "backend": vals("backend"),
            "attention": vals("attn_implementation"), "torch": vals("torch_version"),
            "transformers": vals("transformers_version"), "CUDA": vals("cuda_version", absent_on_cpu=True),
            "driver": vals("driver_version", absent_on_cpu=True), "commit": vals("git_commit"),
            "CPU threads": ", ".join(threads) or "unknown",
            "measured (UTC)": f"{created.min()} … {created.max()}" if len(created) else "unknown",
            "points": int(len(g)), "runs": len(run_ids),
        })
        if set(g["backend"].dropna()) == {"served"}:  # timed from outside: what answered is the server
            rows[-1].update({"server version": vals("server_version"), "API": vals("endpoint_api"),
                             "served model": vals("served_model"),
                             "timing": "client-side: ttft includes HTTP, tokenization and queueing",
                             "client-bound points": int(g["client_bound"].eq(True).sum())
                             if "client_bound" in g else 0})
        if "source_tool" in g and g["source_tool"].notna().any():  # imported from another tool (perfkit.imports)
            rows[-1].update(measured_by(g))
            rows[-1]["what the tool's figures mean"] = vals("source_note")
    # One column per system, one row per property: commits and dates stay readable.
    return pd.DataFrame(rows).set_index("system").T.rename_axis("property").reset_index()


def _fmt(df: pd.DataFrame, precision: dict | None = None):
    """A Styler with readable headers, no index and sensible number formats."""
    out = df.rename(columns=_NICE)
    fmt = {}
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            fmt[col] = "{:,.1f}" if "tok/s" in col else "{:,.2f}"
    fmt.update(precision or {})
    return escaped(out.style.format(fmt, na_rep="—", escape="html")).hide(axis="index")


def _of_model(t: pd.DataFrame, model) -> pd.DataFrame:
    return t[t["model"] == model].drop(columns="model").reset_index(drop=True)


OOM_TITLE = "Out-of-memory boundary (first batch that did not fit)"
EMPTY = {OOM_TITLE: "_none: every batch measured fit in memory_",
         "Max prefill throughput (batch > 1)": "_none: no batch above 1 was measured_",
         "Multi-user total max throughput (batch > 1)": "_none: no batch above 1 was measured_"}


def model_tables(df: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    """Per model, the study's tables (plain DataFrames), titled. `df` may hold several systems."""
    from perfkit.summary import summarize

    s = summarize(df)
    ok = df[df["status"] == "ok"].copy()
    ok["peak_mem_mib"] = ok["peak_mem_bytes"].astype(float) / MIB
    out = {}
    for model in sorted(df["model"].unique()):
        pick = functools.partial(_of_model, model=model)
        m = ok[ok["model"] == model]
        tables = {
            "Time to first token, batch 1": pick(s["ttft"])[["system", "input_len", "ttft_ms", "ttft_iqr_ms"]],
            "Max prefill throughput (batch > 1)": pick(s["prefill_max"])[["system", "input_len",
                                                                            "max_prefill_tok_s", "batch"]],
            "Single-user throughput, batch 1": pick(s["single_user"])[["system", "input_len", "output_len",
                                                                       "output_tok_s", "e2e_ms", "tpot_ms",
                                                                       "decode_tok_s"]],
            "Multi-user total max throughput (batch > 1)": pick(s["multi_user_max"])[
                ["system", "input_len", "output_len", "max_output_tok_s", "batch", "stop_reason"]],
            "TPOT and peak memory by batch": m[["system", "input_len", "output_len", "batch", "tpot_ms",
                                                "decode_tok_s", "output_tok_s", "peak_mem_mib"]]
            .sort_values(["system", "input_len", "output_len", "batch"]).reset_index(drop=True),
        }
        oom = pick(s["oom"])
        tables[OOM_TITLE] = oom
        out[model] = tables
    return out


def number_table(df: pd.DataFrame):
    """A Styler of a study table: readable headers, whole batch and lengths, figures to 1–2 decimals."""
    return _fmt(df, {"B": "{:.0f}", "I": "{:.0f}", "O": "{:.0f}"})


# ---- comparison tables --------------------------------------------------------------------------

# light cell backgrounds for tables (perfkit.report.plots has the strong colours of bars)
VERDICT_CELL_COLOURS = {BETTER: "#c8e6c9", WORSE: "#ffcdd2", NOISE: "#eeeeee"}


def _interval(lo: float, hi: float) -> str:
    return "—" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{lo:.3f} – {hi:.3f}"


def study_comparison(c: Comparison, metric: str):
    """One study metric, in the study's layout: each side's figure (and batch), ratio, interval, verdict."""
    st = c.study[c.study["metric"] == metric].copy()
    keys = ["model", "input_len"] + ([] if st["output_len"].isna().all() else ["output_len"])
    cols = keys + ["target"] + (["target_batch"] if metric.startswith("max_") else []) + ["baseline"] + \
        (["baseline_batch"] if metric.startswith("max_") else []) + ["ratio", "interval", "verdict"]
    st["interval"] = [_interval(lo, hi) for lo, hi in zip(st["ratio_lo"], st["ratio_hi"])]
    unit = st["unit"].iloc[0] if len(st) else ""
    target, baseline = side_names(c.target, c.baseline)  # distinct column names where the labels are the same
    table = st[cols].rename(columns={
        "target": f"{target} ({unit})", "baseline": f"{baseline} ({unit})", "target_batch": f"B ({target})",
        "baseline_batch": f"B ({baseline})", "interval": f"{c.confidence:.0%} interval",
        **{k: _NICE[k] for k in keys}}).reset_index(drop=True)
    for col in table.columns:
        if col.startswith("B ("):
            table[col] = table[col].astype("Int64")
    if "O" in table:
        table["O"] = table["O"].astype("Int64")
    verdicts = table["verdict"]
    fmt = {f"{target} ({unit})": "{:,.2f}", f"{baseline} ({unit})": "{:,.2f}", "ratio": "{:.3f}"}
    return (escaped(table.style.format(fmt, na_rep="—", escape="html")).hide(axis="index")
            .apply(lambda _: [f"background-color: {VERDICT_CELL_COLOURS.get(v, '')}" for v in verdicts],
                   subset=["ratio", "verdict"], axis=0))


def point_comparison(c: Comparison, model: str):
    """Every matched point of one model: the ratio of each metric with its interval, coloured by verdict."""
    p = c.points[c.points["model"] == model]
    if p.empty:
        return None
    text = p.assign(cell=[f"{r:.3f} [{_interval(lo, hi)}]" for r, lo, hi in zip(p["ratio"], p["ratio_lo"],
                                                                               p["ratio_hi"])])
    idx = ["input_len", "output_len", "batch"]
    order = [m for m in POINT_METRICS if m in set(p["metric"])]
    cells = text.pivot(index=idx, columns="metric", values="cell")[order]
    verdicts = text.pivot(index=idx, columns="metric", values="verdict")[order]
    cells.columns = [f"{m} ratio" for m in order]
    verdicts.columns = cells.columns
    cells = cells.reset_index().rename(columns=_NICE)
    verdicts = verdicts.reset_index(drop=True)
    return (escaped(cells.style.format(escape="html", na_rep="—")).hide(axis="index")
            .apply(lambda _: verdicts.map(lambda v: f"background-color: {VERDICT_CELL_COLOURS.get(v, '')}").to_numpy(),
                   subset=list(verdicts.columns), axis=None))


def verdict_counts(c: Comparison) -> pd.DataFrame:
    """How many ratios fall each way, per study metric."""
    if c.study.empty:
        return pd.DataFrame(columns=["metric", BETTER, NOISE, WORSE, "geometric-mean ratio"])
    g = c.study.groupby("metric", sort=False)
    t = g["verdict"].value_counts().unstack(fill_value=0).reindex(columns=[BETTER, NOISE, WORSE], fill_value=0)
    t["geometric-mean ratio"] = g["ratio"].apply(geometric_mean)
    t.index = [STUDY_TITLES.get(m, m) for m in t.index]
    return t.reset_index(names="metric")


def one_sided(c: Comparison) -> pd.DataFrame:
    """Workloads measured on one side only, and matched workloads where a side has no timings."""
    rows = [dict(r, measured_on=f"{c.target} only (target)") for r in c.only_target.to_dict("records")]
    rows += [dict(r, measured_on=f"{c.baseline} only (baseline)") for r in c.only_baseline.to_dict("records")]
    rows += [dict(r, measured_on="both", status=f"target {r.pop('target_status')}, baseline "
                                                  f"{r.pop('baseline_status')}") for r in c.not_ok.to_dict("records")]
    return pd.DataFrame(rows, columns=["model", "input_len", "output_len", "batch", "status", "measured_on"]) \
        .rename(columns=_NICE)


# ---- blocks of the notebooks --------------------------------------------------------------------

def headline(df: pd.DataFrame) -> str:
    """One sentence: what was measured, where, and how much of it failed."""
    parts = []
    for system, g in df.groupby("system", sort=True):
        ok = g[g["status"] == "ok"]
        dev = (", ".join(sorted({str(d) for d in g.get("device_name", pd.Series(dtype=str)).dropna()}))
               or "unknown device")
        best = ok.loc[ok["output_tok_s"].idxmax()] if len(ok) else None
        s = (f"{system} ({', '.join(sorted(g['dtype'].astype(str).unique()))}, "
             f"{', '.join(sorted(g['backend'].astype(str).unique()))}) on {dev}: {len(g)} points, "
             f"{int((g['status'] == 'oom').sum())} out of memory, {int((g['status'] == 'error').sum())} failed")
        if best is not None:
            s += (f"; highest throughput {best['output_tok_s']:,.0f} output tok/s ({best['model']}, "
                  f"I={best['input_len']}, O={best['output_len']}, B={best['batch']})")
        parts.append(s)
    return ". ".join(parts) + "."


def side_rows(results_dir: str, label: str) -> pd.DataFrame:
    """The rows of one side of a comparison (for its provenance and the stand-in note)."""
    from perfkit.results import load_results

    df = load_results(results_dir)
    out = df[df["system"] == label]  # the label as the comparison resolved it, commas and all
    if out.empty:  # a side known under steady load only (perfkit.compare's loads_only): its levels' rows
        from perfkit.loads import loads_of

        out = loads_of(results_dir, label)
    out.attrs["skipped_files"] = list(df.attrs.get("skipped_files") or [])  # files the loader could not read
    return out


def not_measured(df: pd.DataFrame) -> pd.DataFrame:
    """The points without timings (out of memory, error), with their message: a missing point is a result."""
    bad = df[df["status"] != "ok"]
    cols = ["system", "model", "input_len", "output_len", "batch", "status", "error"]
    t = bad.reindex(columns=cols).sort_values(cols[:5], kind="stable").reset_index(drop=True)
    for col in ("input_len", "output_len", "batch"):
        t[col] = t[col].astype("Int64")
    return t.rename(columns={**_NICE, "error": "message"})


def skipped_files(*frames: pd.DataFrame) -> pd.DataFrame:
    """The files the loader left out of these results, with why (df.attrs["skipped_files"], if it is set)."""
    seen = {}
    for df in frames:
        for entry in df.attrs.get("skipped_files") or []:
            path, reason = (entry, "") if isinstance(entry, str) else (tuple(entry) + ("", ""))[:2]
            seen.setdefault(str(path), str(reason))
    return pd.DataFrame(sorted(seen.items()), columns=["file", "why it was not read"])


def systems_table(c: Comparison):
    t = c.systems.set_index("side").T
    t.index.name = "property"
    return text_table(t.reset_index())


def how_to_read(c: Comparison) -> str:
    return (f"**How to read this.** Every ratio reads the same way: **below 1 means the target "
            f"({md_escape(c.target)}) is better** than the baseline ({md_escape(c.baseline)}). Latency ratio = "
            f"target / baseline, throughput ratio = baseline / target; 0.5 means the target is twice as good, "
            f"2 half as good. Each ratio carries a "
            f"{c.confidence:.0%} bootstrap interval from the raw repeats ({c.n_boot} resamples, seed {c.seed}); "
            f"the verdict is *within noise* when that interval contains 1. Green: target better, red: target worse, "
            f"grey: within noise." + _served_note(c))


def _served_note(c: Comparison) -> str:
    served = [row["system"] for _, row in c.systems.iterrows() if row["backend"] == "served"]
    if not served:
        return ""
    both = len(served) == len(c.systems)
    return (f" **Served systems** ({md_escape(', '.join(served))}) are timed by perfkit's client over HTTP: their "
            "ttft includes HTTP, the server's tokenization and its queueing"
            + (", on both sides alike." if both else ", which an in-process ttft does not: the ttft ratio compares "
               "what a client sees with what the device does.")
            + " Client-bound points (the client fell behind) take no part in any ratio.")


SOL_SHOWN = {"prefill_tflop_s": "prefill TFLOP/s", "mfu_spec": "MFU (spec)", "mfu_probed": "MFU (probed)",
             "decode_gb_s": "decode GB/s", "mbu_spec": "MBU (spec)", "mbu_probed": "MBU (probed)"}


def speed_of_light(df: pd.DataFrame, probe=None):
    """Achieved fraction of the hardware's limits per point (perfkit.roofline), "unknown" where it is.

    probe: what perfkit.roofline.load_probe takes (a results directory holding probes/*.json, ...): with
    it the probed columns are filled for rows of the device the probe ran on.
    """
    from perfkit.roofline import add_speed_of_light

    ok = df[df["status"] == "ok"]
    if ok.empty:
        return text_table(pd.DataFrame({"speed of light": ["no measured points"]}))
    sol = add_speed_of_light(ok, probe=probe)
    cols = [c for c in SOL_SHOWN if c in sol]
    t = sol[["system", "model", "input_len", "output_len", "batch"] + (["hw_name"] if "hw_name" in sol else []) + cols]
    t = t.sort_values(["system", "model", "input_len", "output_len", "batch"]).rename(columns={**_NICE, **SOL_SHOWN,
                                                                                              "hw_name": "peaks from"})
    fmt = {SOL_SHOWN[c]: ("{:.1%}" if c.startswith(("mfu", "mbu")) else "{:,.3f}") for c in cols}
    return escaped(t.style.format(fmt, na_rep="unknown", escape="html")).hide(axis="index")


def bottom_line(c: Comparison) -> str:
    """Markdown bullets, one per study metric: which way it goes, how often, by how much."""
    lines = []
    for metric, title in STUDY_TITLES.items():
        st = c.study[c.study["metric"] == metric]
        if st.empty:
            continue
        n = len(st)
        counts = st["verdict"].value_counts()
        geo = geometric_mean(st["ratio"])
        if counts.get(BETTER, 0) > n / 2:
            call = f"**target better** in {counts[BETTER]} of {n}"
        elif counts.get(WORSE, 0) > n / 2:
            call = f"**target worse** in {counts[WORSE]} of {n}"
        else:
            call = (f"mixed: better in {counts.get(BETTER, 0)}, worse in {counts.get(WORSE, 0)}, within noise in "
                    f"{counts.get(NOISE, 0)} of {n}")
        who = f"the target by {1 / geo:.2f}×" if geo < 1 else f"the baseline by {geo:.2f}×"
        lines.append(f"- {title}: {call} configurations; geometric-mean ratio {geo:.2f}, i.e. in favour of {who}")
    if not lines:
        lines.append("No study figure could be compared: a side has no measured point for the workloads the "
                     "two share (see *Points not compared* and *Points without timings* below).")
    return "**Bottom line**\n\n" + "\n".join(lines)
