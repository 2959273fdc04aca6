"""What the command line prints: plain-text renderings of rows, tables, plans and comparisons.

Everything here returns a string (or prints JSON); the commands in perfkit.cli decide where it goes.
No argparse here, and no measuring: a renderer takes what the core computed.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd

from perfkit.errors import printable
from perfkit.metrics import geometric_mean

# ---- JSON ------------------------------------------------------------------------------------------

def _clean(value):
    """NaN and infinities are not JSON: emit null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def print_json(obj) -> None:
    print(json.dumps(_clean(obj), default=str))


# ---- numbers and tables ----------------------------------------------------------------------------

def format_number(value: float) -> str:
    """A figure for a terminal table: thousands separated from 1,000 up, 4 significant digits below, "-" if NaN."""
    if pd.isna(value) or not np.isfinite(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _map_text(table: pd.DataFrame, f) -> pd.DataFrame:
    """A copy of `table` with `f` applied to its headers and to every cell of its text columns."""
    out = table.rename(columns=f)
    for i, dtype in enumerate(out.dtypes):
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)):
            out.isetitem(i, out.iloc[:, i].map(f))
    return out


def _text(value):
    return printable(value) if isinstance(value, str) else value


def _aligned(table: pd.DataFrame) -> str:
    """`table` as aligned text (no index), every label, name and message in it made printable."""
    return _map_text(table, _text).to_string(index=False)


def _lines(lines) -> str:
    """Lines for a terminal, each made printable (perfkit.errors.printable): a value from a file or the
    command line neither breaks its line nor sends the terminal a control sequence."""
    return "\n".join(printable(line) for line in lines)




def table_text(table: pd.DataFrame) -> str:
    """A table for a terminal: fractions as %, memory in GiB, other floats via format_number."""
    if table.empty:
        return "(none)"
    shown = table.copy()
    for col in shown.columns:
        if col.startswith(("mfu", "mbu")):
            shown[col] = shown[col].map(lambda v: "unknown" if pd.isna(v) else f"{v:.1%}")
        elif col == "peak_mem_bytes":
            shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{v / 2**30:.2f} GiB")
        elif shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(format_number)
    return _aligned(shown.rename(columns={"peak_mem_bytes": "peak_mem"}))


# ---- CSV files (perfkit summary / compare --csv) ----------------------------------------------------

# What a spreadsheet runs as a formula: text starting with =, +, - or @, or with a tab or a carriage return
# (which some strip, leaving what follows); a number, negative or not, is not one.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _inert(value):
    """A CSV cell that a spreadsheet shows as typed: text it would run gets a leading ' (its mark of text)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(table: pd.DataFrame) -> str:
    """`table` as CSV text (no index) for every --csv file: labels, SLO, model and checkpoint names come from
    params files and results, so each text cell and header a spreadsheet would run as a formula is made inert
    (_inert); numbers, negative ones included, stay numbers. Lines end in CRLF (RFC 4180), so that a cell
    holding a carriage return is quoted too: unquoted, a reader would start a new row there."""
    return _map_text(table, _inert).to_csv(index=False, lineterminator="\r\n")


# ---- one measured point (perfkit run) --------------------------------------------------------------

def format_row(row: dict) -> str:
    """A short human summary of one results row."""
    head = (f"{row['system']} {row['model']} {row['dtype']} {row['backend']} "
            f"I={row['input_len']} O={row['output_len']} B={row['batch']}")
    if row["status"] != "ok":
        return printable(f"{head}: {row['status']}: {row.get('error')}")
    mem = row.get("peak_mem_bytes")
    lines = [
        head,
        f"  ttft {row['ttft_ms']:.2f} ms (IQR {row['ttft_iqr_ms']:.2f})   prefill {row['prefill_tok_s']:.1f} tok/s",
        f"  tpot {row['tpot_ms']:.2f} ms   decode {row['decode_tok_s']:.1f} tok/s",
        f"  e2e  {row['e2e_ms']:.2f} ms   output {row['output_tok_s']:.1f} tok/s   "
        f"total {row['total_tok_s']:.1f} tok/s",
        f"  peak memory {mem / 2**20:.1f} MiB ({row.get('peak_mem_scope', '')})   repeats {row['repeats']}"
        if mem is not None else f"  repeats {row['repeats']}",
    ]
    if row.get("noisy"):
        lines.append("  warning: IQR/median above 10%: this machine was noisy; consider more repeats")
    return _lines(lines)


# ---- a sweep's plan and outcome --------------------------------------------------------------------

PLAN_LINES = 500  # points a dry run lists; the counts below them cover every point


def plan_text(pl, limit: int = PLAN_LINES) -> str:
    """`perfkit sweep --dry-run`: the plan's points pass by pass (the first `limit`), what is done, and the
    counts per pass, which cover every point whether listed or not."""
    lines = [f"sweep {pl.params.name} ({pl.params.source}) -> {pl.out_dir}",
             f"{'pass':>4}  {'system':<12}{'model':<18}{'I':>6}{'O':>6}{'B':>5}  status"]
    for p in pl.points[:limit]:
        derived = f" (derived from O={p['derived_from_output_len']})" if p["derived_from_output_len"] else ""
        lines.append(f"{p['pass']:>4}  {p['system']:<12}{p['model']:<18}{p['input_len']:>6}{p['output_len']:>6}"
                     f"{p['batch']:>5}  {p['status']}{derived}")
    more = max(len(pl.points) - limit, 0) + getattr(pl, "unlisted", 0)
    if more:
        lines.append(f"... and {more:,} more points")
    counts = pl.pass_counts() if hasattr(pl, "pass_counts") else {}
    for pass_, c in sorted(counts.items()):
        if c:
            lines.append(f"pass {pass_}: {c.get('done', 0):,} done, {c.get('todo', 0):,} to measure"
                         + (f", up to {c['search']:,} more if the batch searches keep gaining"
                            if c.get("search") else ""))
    lines.append(f"already done: {pl.count('done'):,}; to measure: {pl.count('todo'):,}; "
                 f"up to {pl.count('search'):,} more if the batch searches keep gaining")
    if pl.params.interleave:
        lines.append("order: interleaved: each point's repeats alternate between the systems (A B B A ...), each "
                     "system holding its model in its own process")
    if pl.other_points:
        lines.append(f"note: {pl.out_dir} also holds {pl.other_points} points of other systems (not part of this "
                     "plan)")
    if getattr(pl, "stale", 0):
        lines.append(f"note: --discard-stale would move {pl.stale} points of these systems that this params file "
                     f"does not define to {pl.out_dir}/stale/<timestamp>/")
    return _lines(lines)


def outcome_text(out, multi_user_max: pd.DataFrame | None = None) -> tuple[str, str]:
    """What a finished sweep says: (for stdout, for stderr: its failed points, or "")."""
    workers = getattr(out, "workers", 0)
    lines = [f"sweep -> {out.out_dir}: measured {out.measured} points, {out.skipped} already done, "
             f"{len(out.ooms)} out of memory (recorded), {len(out.failures)} failed, {out.wall_s:.1f} s"
             + (f" on {workers} Ray worker{'s' if workers > 1 else ''}" if workers else "")]
    if getattr(out, "interrupted", False):
        lines.append(f"interrupted (Ctrl-C): the {out.measured} points measured before it are stored, "
                     f"{'those' if workers > 1 else 'the one'} in progress {'are' if workers > 1 else 'is'} not; "
                     f"up to {out.left} runs left: run the same command to continue with the rest")
    write_error = getattr(out, "write_error", None)
    if write_error:
        lines.append(f"stopped: a write failed; the {out.measured} points written before it are stored, the one "
                     f"it was writing is not; up to {out.left} runs left: make room and run the same command to "
                     "continue with the rest")
    lost = getattr(out, "lost", [])
    if lost:
        lines.append(f"{len(lost)} units could not be run (their Ray task failed past its retries); up to {out.left} "
                     "runs left: run the same command to continue")
    if out.stopped_early:
        lines.append(f"runs that would not have fit the time budget were left out: up to {out.left} runs left; "
                     "run the same command to continue")
    if getattr(out, "loads", 0):
        lines.append(f"load levels measured: {out.loads} (RESULTS_DIR/loads/; perfkit summary shows them)")
    if multi_user_max is not None and len(multi_user_max):
        lines.append("multi-user max throughput:")
        for r in multi_user_max.itertuples():
            found = (f"{r.max_output_tok_s:.1f} tok/s at B={r.batch}" if r.max_output_tok_s == r.max_output_tok_s
                     else "no batch > 1 measured")
            lines.append(f"  {r.system} {r.model} I={r.input_len} O={r.output_len}: {found} "
                         f"(search stopped: {r.stop_reason})")
    errors = [f"perfkit: error: {write_error}"] if write_error else []
    errors += [f"unit lost: {text}" for text in lost]
    if out.failures:
        errors.append(f"{len(out.failures)} failed points:")
        errors += [f"  {r['system']} {r['model']} I={r['input_len']} O={r['output_len']} "
                   f"{r['load_label'] if 'load_label' in r else 'B=' + str(r['batch'])}: {r['error']}"
                   for r in out.failures]
    return _lines(lines), _lines(errors)


# ---- the study tables (perfkit summary) -------------------------------------------------------------

def results_header(results_dir: str, df: pd.DataFrame) -> str:
    counts = df["status"].value_counts()
    devices = ", ".join(sorted({str(d) for d in df["device_name"].dropna()})) if "device_name" in df else ""
    return printable(f"{results_dir}: {len(df)} points on {devices or 'unknown'} ({counts.get('ok', 0)} ok, "
                     f"{counts.get('oom', 0)} out of memory, {counts.get('error', 0)} failed)")


# ---- a comparison (perfkit compare) ------------------------------------------------------------------

def verdicts_text(c) -> str:
    """The comparison's bottom line for a terminal: per metric, the geometric-mean ratio and the verdicts."""
    from perfkit.compare import BETTER, NOISE, WORSE, summary_line

    lines = [summary_line(c)]
    if not c.study.empty:
        lines.append(f"  {'metric':<22}{'geo-mean ratio':>15}   verdicts (better / worse / within noise)")
        for metric, g in c.study.groupby("metric", sort=False):
            v = g["verdict"].value_counts()
            lines.append(f"  {metric:<22}{geometric_mean(g['ratio']):>15.3g}   "
                         f"{v.get(BETTER, 0)} / {v.get(WORSE, 0)} / {v.get(NOISE, 0)}")
    return _lines(lines)


def ratio_table_text(table: pd.DataFrame, confidence: float) -> str:
    """A study or point ratio table as aligned text: each side's figure (and batch, for a max), the ratio,
    its interval and verdict."""
    if table.empty:
        return "(none)"
    out = pd.DataFrame({k: table[k] for k in ("model", "input_len", "output_len", "batch") if k in table})
    out["output_len"] = out["output_len"].map(lambda v: "-" if pd.isna(v) else int(v))
    out["metric"] = table["metric"]
    for side in ("target", "baseline"):
        at = table.get(f"{side}_batch")
        out[side] = [format_number(v) + (f" @B={int(b)}" if at is not None and "max" in m and pd.notna(b) else "")
                     for v, m, b in zip(table[side], table["metric"], at if at is not None else [None] * len(table))]
    out["ratio"] = table["ratio"].map(lambda r: f"{r:.3f}")
    out[f"{confidence:.0%} interval"] = [f"[{lo:.3f}, {hi:.3f}]"
                                         for lo, hi in zip(table["ratio_lo"], table["ratio_hi"])]
    out["verdict"] = table["verdict"]
    return _aligned(out)


def side_text(c, side: str) -> str:
    info = c.systems.set_index("side").loc[side]
    # where a side's rows came from another tool (perfkit.imports), the line says which
    by = f"; measured by {info['measured by']}" if "measured by" in info else ""
    if info["backend"] == "served":  # the engine's software is the server's, timed from outside (HTTP included)
        return printable(f"{info['device_name']}, {info['dtype']}, served over the {info.get('endpoint_api')} API "
                         f"(server version {info.get('server_version')}; its ttft includes HTTP and queueing){by}")
    return printable(f"{info['device_name']}, {info['dtype']}, backend {info['backend']}, "
                     f"torch {info['torch_version']}, transformers {info['transformers_version']}{by}")


# ---- a device probe (perfkit probe) ------------------------------------------------------------------

def format_probe(record: dict) -> str:
    lines = [f"{record['device_name']} ({record['device']}), {record['wall_s']:.1f} s",
             f"  copy bandwidth  {record['copy_bandwidth_bytes_s'] / 1e9:9.1f} GB/s   (median "
             f"{record['copy_bandwidth_median_bytes_s'] / 1e9:.1f}, {record['copy_bytes'] / 2**20:.0f} MiB copied)"]
    for k, v in record["matmul_flops"].items():
        lines.append(f"  matmul {k:<9}{v / 1e12:9.2f} TFLOP/s (median {record['matmul_median_flops'][k] / 1e12:.2f},"
                     f" n = {record['matmul_n'][k]})")
    return _lines(lines)


# ---- service levels (perfkit summary / compare --slo) ------------------------------------------------

def slos_text(slos) -> str:
    return printable(", ".join(f"{s.name} (ttft ≤ {s.ttft_ms_max:g} ms, tpot ≤ {s.tpot_ms_max:g} ms)" for s in slos))


def bounded_max_text(bounded: pd.DataFrame) -> str:
    """Per (system, model, I, O) and SLO: the best output throughput whose median ttft and tpot meet it."""
    if bounded.empty:
        return "(none)"
    from perfkit.slo import NONE_MEETS

    shown = bounded[["system", "model", "input_len", "output_len", "slo"]].copy()
    shown["output_tok_s"] = [NONE_MEETS if pd.isna(v) else f"{format_number(v)} @B={int(b)}"
                             for v, b in zip(bounded["output_tok_s"], bounded["batch"])]
    return _aligned(shown)


def slo_ratio_text(table: pd.DataFrame, confidence: float) -> str:
    """Target vs baseline bounded max per SLO: each side's figure and batch, the ratio, interval, verdict."""
    if table.empty:
        return "(none)"
    from perfkit.slo import NONE_MEETS

    def side(v, b):
        return NONE_MEETS if pd.isna(v) else f"{format_number(v)} @B={int(b)}"

    out = table[["model", "input_len", "output_len", "slo"]].copy()
    out["target"] = [side(v, b) for v, b in zip(table["target_output_tok_s"], table["target_batch"])]
    out["baseline"] = [side(v, b) for v, b in zip(table["baseline_output_tok_s"], table["baseline_batch"])]
    out["ratio"] = table["ratio"].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}")
    out[f"{confidence:.0%} interval"] = ["-" if pd.isna(lo) else f"[{lo:.3f}, {hi:.3f}]"
                                         for lo, hi in zip(table["ratio_lo"], table["ratio_hi"])]
    out["both meet"] = table["met_fraction"].map(lambda f: "-" if pd.isna(f) else f"{f:.0%} of draws")
    out["verdict"] = table["verdict"]
    return _aligned(out)


def frontier_ratio_text(table: pd.DataFrame) -> str:
    """At each baseline frontier point's interactivity: the target's best throughput there or better."""
    if table.empty:
        return "(none)"
    out = table[["model", "input_len", "output_len"]].copy()
    out["tok/s per user ≥"] = table["interactivity_tok_s"].map(format_number)
    out["baseline"] = [f"{format_number(v)} @B={int(b)}" for v, b in zip(table["baseline_output_tok_s"],
                                                                        table["baseline_batch"])]
    out["target"] = ["-" if pd.isna(v) else f"{format_number(v)} @B={int(b)}"
                     for v, b in zip(table["target_output_tok_s"], table["target_batch"])]
    out["ratio"] = table["ratio"].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}")
    return _aligned(out)
