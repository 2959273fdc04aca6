"""Report figures (matplotlib). Only notebooks import this module; the measuring core never does.

Every function takes the DataFrames perfkit.summarize / perfkit.compare return and gives back a Figure.
Ratios are drawn on a log axis: 0.5 (twice as good) and 2 (twice as bad) sit at the same distance from 1.
Labels from the results (systems, models) go through _text: drawn literally (a `$` is no mathtext), on one
line, cut to a length that keeps the panel readable. A function with nothing to draw returns None; show()
then says so in a line.
"""

from __future__ import annotations

import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from perfkit.compare import BETTER, NOISE, STUDY_TITLES, WORSE, side_names

VERDICT_BAR_COLOURS = {BETTER: "#2e7d32", WORSE: "#c62828", NOISE: "#9e9e9e"}

# A label in a script the font lacks draws as boxes; the warning would land in the published page.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")


def label_text(value, limit: int = 60) -> str:
    """A label from the results as matplotlib must get it to draw it as typed: one line, at most `limit`
    characters, `$` escaped (no mathtext), and no leading underscore (a legend would hide the entry)."""
    s = " ".join(str(value).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    if s.startswith("_"):
        s = " " + s
    return s.replace("$", r"\$")


def tidy_layout(fig, **kwargs) -> None:
    """tight_layout, quietly: a very long label can leave it no room, and its warning would print into the
    published page; the figure is then drawn as laid out, labels overlapping rather than missing."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(**kwargs)


def _grid(n: int, width: float = 4.2, height: float = 3.2):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _decorate(ax, title: str, xlabel: str, ylabel: str, legend_size: int) -> None:
    """A model's panel: titled, labelled, from zero, light grid, small legend."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def ttft_vs_input(ttft: pd.DataFrame):
    """TTFT (batch 1) against input length, one panel per model, one line per system (perfkit.summarize)."""
    if ttft.empty:
        return None
    models = sorted(ttft["model"].unique())
    fig, axes = _grid(len(models))
    for ax, model in zip(axes, models):
        for system, g in ttft[ttft["model"] == model].groupby("system"):
            g = g.sort_values("input_len")
            ax.errorbar(g["input_len"], g["ttft_ms"], yerr=g["ttft_iqr_ms"] / 2, marker="o", capsize=3,
                        label=label_text(system))
        _decorate(ax, label_text(model, 40), "input length (tokens)", "TTFT, batch 1 (ms)", legend_size=8)
    fig.suptitle("Time to first token vs input length (bars: IQR)")
    tidy_layout(fig)
    return fig


def throughput_vs_batch(df: pd.DataFrame, column: str = "output_tok_s"):
    """Throughput against batch size per model; one line per (system, I, O); out-of-memory batches as ✕.
    None when no point has timings (the report's tables then show the out-of-memory batches and errors)."""
    if not (df["status"] == "ok").any():
        return None
    models = sorted(df["model"].unique())
    fig, axes = _grid(len(models))
    label = {"output_tok_s": "multi-user total throughput (tok/s)", "prefill_tok_s": "prefill throughput (tok/s)"}
    for ax, model in zip(axes, models):
        m = df[df["model"] == model]
        # Prefill does not depend on the output length: one line per input length (the shortest O's rows).
        by = ["system", "input_len"] if column == "prefill_tok_s" else ["system", "input_len", "output_len"]
        if column == "prefill_tok_s":
            m = m.sort_values("output_len", kind="stable").drop_duplicates(["system", "input_len", "batch"])
        for key, g in m.groupby(by):
            ok = g[g["status"] == "ok"].sort_values("batch")
            name = f"{label_text(key[0], 40)} I={key[1]}" + (f" O={key[2]}" if len(key) > 2 else "")
            line, = ax.plot(ok["batch"], ok[column], marker="o", label=name)
            oom = g[g["status"] == "oom"]
            if len(oom):
                y = ok[column].max() if len(ok) else 0
                ax.scatter(oom["batch"], [y] * len(oom), marker="x", s=80, color=line.get_color(), zorder=5)
                for b in oom["batch"]:
                    ax.annotate("OOM", (b, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8,
                                color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(m["batch"].unique()), [str(b) for b in sorted(m["batch"].unique())])
        _decorate(ax, label_text(model, 40), "batch size", label.get(column, column), legend_size=7)
    fig.suptitle("Throughput vs batch size (✕ = out of memory)")
    tidy_layout(fig)
    return fig


def _config_label(r) -> str:
    o = r["output_len"]
    return f"I={r['input_len']}" + ("" if pd.isna(o) else f" O={int(o)}")


def ratio_bars(study: pd.DataFrame, target: str, baseline: str, confidence: float = 0.95):
    """One panel per study metric: a bar per (model, config), the interval drawn, the line at 1.
    `confidence`: the level the intervals were computed at (the comparison's), named in the title."""
    metrics = [m for m in STUDY_TITLES if m in set(study["metric"])]
    if not metrics:
        return None
    fig, axes = _grid(len(metrics), width=5.2, height=3.6)
    for ax, metric in zip(axes, metrics):
        s = study[study["metric"] == metric].reset_index(drop=True)
        x = np.arange(len(s))
        colours = [VERDICT_BAR_COLOURS.get(v, VERDICT_BAR_COLOURS[NOISE]) for v in s["verdict"]]
        ax.bar(x, s["ratio"] - 1, bottom=1, color=colours, alpha=0.85, width=0.7)
        yerr = np.vstack([s["ratio"] - s["ratio_lo"], s["ratio_hi"] - s["ratio"]]).clip(min=0)
        ax.errorbar(x, s["ratio"], yerr=yerr, fmt="none", ecolor="black", capsize=3, lw=1)
        ax.axhline(1, color="black", lw=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[-1] in "2468" or v in (0.5, 1.5)
                                                   else ""))
        ax.tick_params(axis="y", which="both", labelsize=7)
        lo = min(s["ratio_lo"].min(), s["ratio"].min(), 0.9)
        hi = max(s["ratio_hi"].max(), s["ratio"].max(), 1.1)
        ax.set_ylim(lo / 1.15, hi * 1.15)
        ax.set_xticks(x, [f"{label_text(str(r['model']).removeprefix('tiny-'), 30)}\n{_config_label(r)}"
                          for _, r in s.iterrows()],
                      rotation=60, ha="right", fontsize=7)
        ax.set_title(STUDY_TITLES[metric], fontsize=9)
        ax.set_ylabel("ratio (< 1: target better)", fontsize=8)
        ax.grid(axis="y", alpha=0.3, which="both")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in VERDICT_BAR_COLOURS.values()]
    fig.legend(handles, list(VERDICT_BAR_COLOURS), loc="upper right", fontsize=8, ncols=3)
    fig.suptitle(f"{label_text(target, 30)} (target) vs {label_text(baseline, 30)} (baseline): "
                 f"ratios with {confidence:.0%} bootstrap intervals",
                 x=0.02,
                 ha="left")
    tidy_layout(fig, rect=(0, 0, 1, 0.95))
    return fig


def ratio_heatmap(study: pd.DataFrame, target: str, baseline: str):
    """Models × (metric, config): the ratio in each cell, coloured on a log scale centred at 1."""
    if study.empty or not np.isfinite(study["ratio"].to_numpy(dtype=float)).any():
        return None
    s = study.copy()
    s["config"] = [f"{m.replace('_tok_s', '').replace('_ms', '')}\n{_config_label(r)}"
                   for m, (_, r) in zip(s["metric"], s.iterrows())]
    order = list(dict.fromkeys(s.sort_values(["metric", "input_len", "output_len"])["config"]))
    grid = s.pivot_table(index="model", columns="config", values="ratio", aggfunc="first")[order]
    verdicts = s.pivot_table(index="model", columns="config", values="verdict", aggfunc="first")[order]
    logs = np.log2(grid.to_numpy(dtype=float))
    lim = max(np.nanmax(np.abs(logs)) if np.isfinite(logs).any() else 1.0, 0.1)
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(order) + 2), 0.6 * len(grid) + 2.2))
    im = ax.imshow(logs, cmap="RdYlGn_r", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid.iat[i, j]
            if np.isfinite(v):
                # Parentheses, not a "~" prefix: at this size a tilde reads as a minus sign.
                text = f"({v:.2f})" if verdicts.iat[i, j] == NOISE else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(grid)), [label_text(m, 40) for m in grid.index], fontsize=8)
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("log2 ratio (green: target better)")
    target, baseline = side_names(target, baseline)
    ax.set_title(f"{label_text(target, 40)} vs {label_text(baseline, 40)}: ratio per model and configuration "
                 "((x) = within noise)", fontsize=10)
    tidy_layout(fig)
    return fig


def show(fig, empty: str = "no point with timings: nothing to plot") -> None:
    """Display a figure once in a notebook (embedded as PNG in the HTML) and free it; for None (nothing to
    draw), the line `empty` in italics."""
    from IPython.display import Markdown, display

    if fig is None:
        display(Markdown(f"_{empty}_"))
        return
    display(fig)
    plt.close(fig)
