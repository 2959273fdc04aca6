"""Throughput at a service level in a report: Pareto plots, bounded-max tables, speed of light against batch.

The figures come from perfkit.slo (frontiers, bounded maxima, their ratios) and perfkit.roofline (MFU,
MBU); nothing is recomputed here. Plots use seaborn over matplotlib. Only measured points are drawn: the
frontier is a line through measured points, never an interpolated batch.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from perfkit.compare import side_names
from perfkit.report.plots import label_text, tidy_layout
from perfkit.report.tables import VERDICT_CELL_COLOURS, escaped
from perfkit.slo import NONE_MEETS, frontier, interactivity_points, oom_batches

SIDE_PALETTE = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f")


MAX_PANELS = 24  # (I, O) panels per model in a Pareto figure


def _workloads(points: pd.DataFrame) -> list[tuple]:
    return sorted({(m, int(i), int(o)) for m, i, o in zip(points["model"], points["input_len"], points["output_len"])})


def _of_workload(t: pd.DataFrame, model, input_len: int, output_len: int) -> pd.DataFrame:
    return t[(t["model"] == model) & (t["input_len"] == input_len) & (t["output_len"] == output_len)]


def pareto_figures(df: pd.DataFrame, slos, hue: str = "system") -> list[tuple[str, object]]:
    """One figure per model: a panel per (I, O) with interactivity (tok/s per user) on x and total output
    throughput on y; every measured batch labelled, each system's frontier drawn through its measured
    points, the SLOs' tpot limits as vertical lines (1000 / tpot_ms_max), out-of-memory batches listed.

    `hue`: the column that tells the series apart (a system label, or a comparison's side).
    Returns [(model, figure)], empty where no point has a decode step to read interactivity from.
    """
    if hue != "system":  # each series is one value of `hue`, whatever its label (two sides may share one)
        df = df.assign(system=df[hue].astype(str))
        hue = "system"
    points = interactivity_points(df)
    if points.empty:
        return []
    front = frontier(df)
    ooms = oom_batches(df)
    for t in (points, front, ooms):  # legend entries are drawn text: one line, no mathtext
        t[hue] = t[hue].map(lambda v: label_text(v, 120))
    order = sorted(points[hue].astype(str).unique())
    palette = dict(zip(order, SIDE_PALETTE * (len(order) // len(SIDE_PALETTE) + 1)))
    out = []
    for model in sorted(points["model"].unique()):
        every = [k for k in _workloads(points) if k[0] == model]
        # A panel per workload reads up to a few dozen; past that a page of them is unreadable and costs a
        # minute to draw: the first MAX_PANELS are drawn, the bounded-max table lists every workload.
        keys = every[:MAX_PANELS]
        cols = min(len(keys), 3)
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax, (m, i, o) in zip(axes.flat, keys):
            p, f, oom = (_of_workload(t, m, i, o) for t in (points, front, ooms))
            sns.scatterplot(data=p, x="interactivity_tok_s", y="output_tok_s", hue=hue, hue_order=order,
                            palette=palette, ax=ax, s=28, legend=ax is axes.flat[0])
            for label, g in f.groupby(hue):
                g = g.sort_values("interactivity_tok_s")
                ax.plot(g["interactivity_tok_s"], g["output_tok_s"], color=palette[str(label)], lw=1.4)
            for x, y, b in zip(p["interactivity_tok_s"], p["output_tok_s"], p["batch"]):
                ax.annotate(f"B={int(b)}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
            for slo in slos:
                x = 1000.0 / slo.tpot_ms_max
                ax.axvline(x, color="grey", lw=0.8, ls="--")
                ax.annotate(label_text(slo.name), (x, 0), xycoords=("data", "axes fraction"), xytext=(2, 2),
                            textcoords="offset points", fontsize=6, color="grey", rotation=90)
            if len(oom):
                text = "; ".join(f"{s}: B={int(b)}" for s, b in zip(oom[hue], oom["batch"]))
                ax.text(0.02, 0.98, f"out of memory at {text}", transform=ax.transAxes, fontsize=6, va="top",
                        color="#c62828")
            ax.set_title(f"I={i}, O={o}", fontsize=9)
            ax.set_xlabel("interactivity (tok/s per user)", fontsize=8)
            ax.set_ylabel("total output throughput (tok/s)", fontsize=8)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        shown = (f"; the first {len(keys)} of {len(every)} (I, O) workloads, every one in the table below"
                 if len(keys) < len(every) else "")
        fig.suptitle(f"{label_text(model)}: throughput against interactivity (lines: measured frontier; "
                     f"dashed: SLO tpot limits{shown})", x=0.02, ha="left", fontsize=10)
        tidy_layout(fig)
        out.append((model, fig))
    return out


def bounded_max_table(bounded: pd.DataFrame):
    """The best throughput within each SLO (perfkit.slo.bounded_max) as an escaped Styler."""
    t = bounded.copy()
    t["within the bound"] = [NONE_MEETS if pd.isna(v) else f"{v:,.1f} tok/s at B={int(b)}"
                             for v, b in zip(t["output_tok_s"], t["batch"])]
    t["bound"] = [f"ttft ≤ {a:g} ms, tpot ≤ {b:g} ms" for a, b in zip(t["ttft_ms_max"], t["tpot_ms_max"])]
    t = t[["system", "model", "input_len", "output_len", "slo", "bound", "within the bound"]].rename(
        columns={"input_len": "I", "output_len": "O"})
    return escaped(t.style.format(escape="html")).hide(axis="index")


def slo_comparison_table(table: pd.DataFrame, target: str, baseline: str, confidence: float):
    """Bounded-max ratios per SLO (perfkit.slo.compare_slo): each side, ratio, interval, verdict."""
    def side(v, b):
        return NONE_MEETS if pd.isna(v) else f"{v:,.1f} at B={int(b)}"

    target, baseline = side_names(target, baseline)  # distinct column names where the labels are the same
    t = pd.DataFrame({
        "model": table["model"], "I": table["input_len"], "O": table["output_len"], "SLO": table["slo"],
        f"{target} (tok/s)": [side(v, b) for v, b in zip(table["target_output_tok_s"], table["target_batch"])],
        f"{baseline} (tok/s)": [side(v, b) for v, b in zip(table["baseline_output_tok_s"],
                                                           table["baseline_batch"])],
        "ratio": ["—" if pd.isna(r) else f"{r:.3f}" for r in table["ratio"]],
        f"{confidence:.0%} interval": ["—" if pd.isna(lo) else f"{lo:.3f} – {hi:.3f}"
                                       for lo, hi in zip(table["ratio_lo"], table["ratio_hi"])],
        "draws where both meet": [f"{f:.0%}" if pd.notna(f) else "—" for f in table["met_fraction"]],
        "verdict": table["verdict"],
    })
    verdicts = list(t["verdict"])
    return (escaped(t.style.format(escape="html")).hide(axis="index")
            .apply(lambda _: [f"background-color: {VERDICT_CELL_COLOURS.get(v, '')}" for v in verdicts],
                   subset=["ratio", "verdict"], axis=0))


def frontier_comparison_table(table: pd.DataFrame, target: str, baseline: str):
    """At each baseline frontier point's interactivity, the target's best throughput there or better."""
    target, baseline = side_names(target, baseline)  # distinct column names where the labels are the same
    t = pd.DataFrame({
        "model": table["model"], "I": table["input_len"], "O": table["output_len"],
        "tok/s per user ≥": table["interactivity_tok_s"].map(lambda v: f"{v:,.1f}"),
        f"{baseline} (tok/s)": [f"{v:,.1f} at B={int(b)}" for v, b in zip(table["baseline_output_tok_s"],
                                                                         table["baseline_batch"])],
        f"{target} (tok/s)": ["none that interactive" if pd.isna(v) else f"{v:,.1f} at B={int(b)}"
                              for v, b in zip(table["target_output_tok_s"], table["target_batch"])],
        "ratio": ["—" if pd.isna(r) else f"{r:.3f}" for r in table["ratio"]],
    })
    return escaped(t.style.format(escape="html")).hide(axis="index")


def speed_of_light_figure(df: pd.DataFrame, probe=None):
    """MFU of the prompt phase and MBU of decode against batch size, one panel pair per model: where the
    kit leaves the hardware idle. Probed peaks where a probe ran on this device, else the spec sheet's;
    a panel whose peaks are unknown says so instead of drawing a guess. None without ok points, or when
    no peak is known at all."""
    from perfkit.roofline import add_speed_of_light

    ok = df[df["status"] == "ok"]
    if ok.empty:
        return None
    sol = add_speed_of_light(ok, probe=probe)
    long = []
    for kind, phase in (("mfu", "prefill (MFU)"), ("mbu", "decode (MBU)")):
        probed, spec = sol.get(f"{kind}_probed"), sol.get(f"{kind}_spec")
        value = probed.where(probed.notna(), spec) if probed is not None else spec
        long.append(pd.DataFrame({"model": sol["model"], "system": sol["system"], "batch": sol["batch"],
                                  "series": [f"{label_text(s, 40)} I={i} O={o}" for s, i, o in
                                             zip(sol["system"], sol["input_len"], sol["output_len"])],
                                  "phase": phase, "fraction": value}))
    data = pd.concat(long, ignore_index=True)
    if not data["fraction"].notna().any():
        return None  # every peak unknown (a CPU without a probe): the caller says so in words
    models = sorted(data["model"].unique())
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.2 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        for ax, phase in zip(row, ("prefill (MFU)", "decode (MBU)")):
            d = data[(data["model"] == model) & (data["phase"] == phase)]
            ax.set_title(f"{label_text(model)}: {phase}", fontsize=9)
            ax.set_xlabel("batch", fontsize=8)
            ax.set_ylabel("fraction of the bound", fontsize=8)
            if d["fraction"].notna().any():
                sns.lineplot(data=d.dropna(subset=["fraction"]), x="batch", y="fraction", hue="series",
                             marker="o", ax=ax, legend="brief")
                ax.set_xscale("log", base=2)
                ax.set_ylim(0, max(1.05, float(np.nanmax(d["fraction"])) * 1.1))
                ax.axhline(1, color="black", lw=0.8)
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, "unknown: this device's peaks are not known\n(no spec-sheet entry, no probe)",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8, color="grey")
                ax.set_xticks([])
                ax.set_yticks([])
    tidy_layout(fig)
    return fig


def load_pareto_figures(loads: pd.DataFrame, slos, hue: str = "system") -> list[tuple[str, object]]:
    """Served systems under steady load (perfkit.loads): one figure per model, a panel per (I, O), each
    level a point at (interactivity = 1000 / median TPOT over requests, window output throughput), labelled
    with its level and joined per system and kind of load in order of load; the SLOs' tpot limits dashed.
    Returns [] where no ok level has a decode step."""
    ok = loads[(loads["status"] == "ok") & loads["interactivity_tok_s"].notna()].copy()
    if ok.empty:
        return []
    ok[hue] = ok[hue].map(lambda v: label_text(v, 120))
    order = sorted(ok[hue].astype(str).unique())
    palette = dict(zip(order, SIDE_PALETTE * (len(order) // len(SIDE_PALETTE) + 1)))
    out = []
    for model in sorted(ok["model"].unique()):
        keys = sorted({(i, o) for i, o in ok.loc[ok["model"] == model, ["input_len", "output_len"]]
                       .itertuples(index=False)})[:MAX_PANELS]
        cols = min(len(keys), 3)
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax, (i, o) in zip(axes.flat, keys):
            p = ok[(ok["model"] == model) & (ok["input_len"] == i) & (ok["output_len"] == o)]
            sns.scatterplot(data=p, x="interactivity_tok_s", y="output_tok_s", hue=hue, hue_order=order,
                            style="load_kind", palette=palette, ax=ax, s=28, legend=ax is axes.flat[0])
            for (label, _), g in p.groupby([hue, "load_kind"]):
                g = g.sort_values("load_value")
                ax.plot(g["interactivity_tok_s"], g["output_tok_s"], color=palette[str(label)], lw=1.0, alpha=0.7)
            for x, y, text in zip(p["interactivity_tok_s"], p["output_tok_s"], p["load_label"]):
                ax.annotate(label_text(text, 40), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
            for slo in slos:
                x = 1000.0 / slo.tpot_ms_max
                ax.axvline(x, color="grey", lw=0.8, ls="--")
            ax.set_title(f"I={i}, O={o}", fontsize=9)
            ax.set_xlabel("interactivity (tok/s per user, 1000 / median TPOT)", fontsize=8)
            ax.set_ylabel("output throughput over the window (tok/s)", fontsize=8)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{label_text(model)}: under steady load (lines join each system's levels in order of load; "
                     "dashed: SLO tpot limits)", x=0.02, ha="left", fontsize=10)
        tidy_layout(fig)
        out.append((model, fig))
    return out
