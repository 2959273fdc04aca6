"""Verdicts that do not flip: the demo's comparison measured three times in sequential order and three times
interleaved (ABBA), with a background load on one core for all six runs.

The demo compares float16 (target) against float32 (baseline) on the three tiny stand-ins: 48 study figures.
A sequential sweep measures one system's whole grid, then the other's, so whatever the background load does
in between lands in the ratios; an interleaved sweep alternates the two systems' repeats point by point, each
system in its own process, and its comparison resamples the repeats in pairs. The background load is a busy
loop in a process of its own, pinned to one core where the machine allows, that this script starts before
the first run and stops after the last (and that stops by itself after --load-max-s in any case); steady by
default, or (--period-s) on and off in turn, a load that comes and goes within a run. The runs
alternate (sequential, interleaved, sequential, ...) so a slow change of the machine falls on both orders.

Printed: per order, the verdict agreement (the share of the figures whose verdict is the same in all
runs), the median relative width of the 95 % intervals ((hi - lo) / ratio) and each run's verdict counts.
Goal: interleaved agreement >= 95 %, and well above the sequential figure.

    python benchmarks/interleave.py [--runs 3] [--params params/demo.yaml] [--no-load | --period-s S] [--keep DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

GOAL_AGREEMENT = 0.95
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _busy(stop_at: float, period_s: float) -> None:
    """The background load: a busy loop, on core 1 where affinity can be set, until `stop_at` at the latest;
    with a period, busy for `period_s` and idle for as long, in turn (a load that comes and goes)."""
    try:
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass
    x = 0
    while time.monotonic() < stop_at:
        phase_end = time.monotonic() + (period_s or 3600)
        while time.monotonic() < min(phase_end, stop_at):
            for _ in range(100_000):
                x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        if period_s:
            time.sleep(max(0.0, min(period_s, stop_at - time.monotonic())))


def _cpu_model() -> str:
    from perfkit.provenance import cpu_model

    return cpu_model() or platform.processor() or "unknown CPU"


def _sweep(params: str, out: str, interleave: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as make demo runs it
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "perfkit", "sweep", params, "--out", out, "--no-progress",
           "--interleave" if interleave else "--no-interleave"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _study(out: str, target: str, baseline: str):
    from perfkit.compare import compare

    c = compare(out, out, target, baseline)
    s = c.study.copy()
    s["key"] = list(zip(s["model"], s["input_len"], s["output_len"].astype(str), s["metric"]))
    return s.set_index("key")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per order (default 3)")
    ap.add_argument("--params", default="params/demo.yaml")
    ap.add_argument("--target", default="cpu-fp16")
    ap.add_argument("--baseline", default="cpu-fp32")
    ap.add_argument("--no-load", action="store_true", help="no background load")
    ap.add_argument("--period-s", type=float, default=0.0,
                    help="a load that comes and goes: busy this many seconds, then idle as long (default: steady)")
    ap.add_argument("--load-max-s", type=float, default=3600, help="the load stops by itself after this long")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the six results directories under DIR")
    args = ap.parse_args()
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        ap.error(f"--keep {args.keep}: not empty (a sweep into an old results directory would resume and measure "
                 "nothing), expected a new or empty directory")

    load = None
    if not args.no_load:
        load = mp.get_context("spawn").Process(target=_busy, args=(time.monotonic() + args.load_max_s, args.period_s),
                                               daemon=True)
        load.start()
    studies: dict[str, list] = {"sequential": [], "interleaved": []}
    walls: dict[str, list] = {"sequential": [], "interleaved": []}
    try:
        with tempfile.TemporaryDirectory(prefix="perfkit-interleave-") as scratch:
            tmp = args.keep or scratch
            for i in range(args.runs):
                for order in ("sequential", "interleaved"):
                    out = os.path.join(tmp, f"{order}-{i}")
                    wall = _sweep(args.params, out, order == "interleaved")
                    walls[order].append(wall)
                    studies[order].append(_study(out, args.target, args.baseline))
                    print(f"run {i + 1}/{args.runs} {order}: {wall:.0f} s", flush=True)
    finally:
        if load is not None:
            load.terminate()
            load.join()

    print(f"\n{_cpu_model()}, {os.cpu_count()} cores; {args.params}: {args.target} (target) vs {args.baseline} "
          f"(baseline); background load: {'none' if args.no_load else 'a busy loop on one core'}"
          + (f", on and off every {args.period_s:g} s" if args.period_s and not args.no_load else ""))
    for order, runs in studies.items():
        keys = sorted(set.intersection(*(set(s.index) for s in runs)), key=str)
        verdicts = np.array([[s.loc[[k], "verdict"].iloc[0] for k in keys] for s in runs])
        agree = float(np.mean(np.all(verdicts == verdicts[0], axis=0)))
        widths = [float(((s["ratio_hi"] - s["ratio_lo"]) / s["ratio"]).median()) for s in runs]
        counts = ["/".join(str(int((s["verdict"] == v).sum())) for v in ("target better", "target worse",
                                                                          "within noise")) for s in runs]
        paired = [int((s["bootstrap"] == "paired").sum()) for s in runs]
        by_metric = {m: float(np.mean(np.all(verdicts == verdicts[0], axis=0)[[k[3] == m for k in keys]]))
                     for m in dict.fromkeys(k[3] for k in keys)}
        print(f"{order:>11}: agreement per metric " + ", ".join(f"{m} {a:.0%}" for m, a in by_metric.items()))
        print(f"{order:>11}: verdict agreement {agree:.1%} of {len(keys)} figures; median relative interval width "
              f"{np.median(widths):.3f} (per run {', '.join(f'{w:.3f}' for w in widths)}); verdicts "
              f"better/worse/noise per run {', '.join(counts)}; paired intervals {paired}; "
              f"wall {', '.join(f'{w:.0f}' for w in walls[order])} s")
    inter = studies["interleaved"]
    keys = sorted(set.intersection(*(set(s.index) for s in inter)), key=str)
    v = np.array([[s.loc[[k], "verdict"].iloc[0] for k in keys] for s in inter])
    agree = float(np.mean(np.all(v == v[0], axis=0)))
    print(f"goal: interleaved agreement >= {GOAL_AGREEMENT:.0%}: {'met' if agree >= GOAL_AGREEMENT else 'missed'}")


if __name__ == "__main__":
    main()
