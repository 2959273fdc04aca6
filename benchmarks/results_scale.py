"""How reading results scales: `perfkit summary`, `perfkit compare` and `perfkit publish report` on results
directories of 1,000, 10,000 and 100,000 points, with their wall time and peak memory.

    .venv/bin/python benchmarks/results_scale.py [--points 1000,10000,100000] [--keep DIR]

Each directory is written with the kit's own writers (perfkit.rows.with_provenance, perfkit.results.
write_point, one atomic file per point, as a sweep writes them): two systems, `target` and `baseline`, each
half the points, over a grid of the three tiny models, input and output lengths and batch sizes, 5 repeats
of made-up timings (the target 10 % faster, with noise). Every command runs as a user runs it, in its own
process; peak memory is the largest resident set of the command's whole process tree (publish runs a
Jupyter kernel), sampled every 50 ms. A figure, not a pass/fail test. Goals on 2 cores at 10,000 points:
summary <= 5 s, compare <= 10 s, publish report <= 60 s and <= 1 GB; at 100,000 points summary <= 30 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from perfkit.paths import PROJECT_ROOT

MODELS = ("tiny-llama3-8b", "tiny-llama2-13b", "tiny-mistral-7b")
REPEATS = 5


def grid(n: int):
    """n points per system: models x input lengths x output lengths x batches, enough distinct values."""
    import itertools

    per_model = -(-n // len(MODELS))
    side = max(1, round(per_model ** (1 / 3)))
    inputs = [16 * (k + 1) for k in range(side)]
    outputs = [4 + 4 * k for k in range(side)]
    batches = [1 + k for k in range(-(-per_model // (side * side)))]
    points = itertools.product(MODELS, inputs, outputs, batches)
    return list(itertools.islice(points, n))


def build(out_dir: str, n_points: int) -> float:
    """Write n_points (half per system) with perfkit's writers; returns the seconds it took."""
    import numpy as np

    from perfkit.metrics import point_metrics
    from perfkit.results import write_point, write_run
    from perfkit.rows import point_fields, with_provenance
    from perfkit.workload import System

    env = {"device": "cpu", "device_name": "benchmark CPU", "torch_version": "2.13.0",
           "transformers_version": "5.17.0", "git_commit": "benchmark"}
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for label, scale in (("target", 0.9), ("baseline", 1.0)):
        system = System(label, "hf-loop", "float32", "cpu", "sdpa")
        run_id = f"run-{label}"
        write_run(out_dir, run_id, {**env, "run_id": run_id})
        for model, i, o, b in grid(n_points // 2):
            step_ms = scale * (1 + b / 8) * (1 + 0.02 * rng.standard_normal((REPEATS, o - 1)))
            ttft_ms = scale * 0.02 * b * i * (1 + 0.02 * rng.standard_normal(REPEATS))
            e2e_ms = ttft_ms + step_ms.sum(axis=1)
            row = {"system": label, "model": model, "dtype": "float32", "backend": "hf-loop",
                   "attn_implementation": "sdpa", "input_len": i, "output_len": o, "batch": b, "status": "ok",
                   "error": None, **point_metrics(b, i, o, list(ttft_ms / 1e3), list(e2e_ms / 1e3)),
                   "peak_mem_bytes": (10 + b) << 20, "peak_mem_scope": "process-rss",
                   "ttft_ms_samples": ttft_ms.tolist(), "e2e_ms_samples": e2e_ms.tolist(),
                   "decode_step_ms_samples": step_ms.tolist(), "sweep_name": "scale", "warmup": 1, "seed": 0}
            key = point_fields(system, model, i, o, b, 1, REPEATS, 0)
            write_point(out_dir, with_provenance(row, run_id, env, key))
    return time.perf_counter() - t


def timed(argv: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak resident bytes of the process tree, exit code) of `python -m perfkit ARGV`."""
    import psutil

    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", *argv], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = [0], threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root] + root.children(recursive=True)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode:
        print(f"    perfkit {' '.join(argv[:2])} exited {proc.returncode}: {err.decode()[-300:]}", flush=True)
    return wall, peak[0], proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="1000,10000,100000", help="comma-separated sizes")
    ap.add_argument("--keep", default=None, help="build the directories under DIR and keep them (reused if there)")
    ap.add_argument("--no-publish", action="store_true", help="leave out publish report (needs the report extra)")
    args = ap.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="perfkit-results-scale-")
    print(f"machine: {os.cpu_count()} CPUs, {_cpu()}; Python {sys.version.split()[0]}", flush=True)
    try:
        for n in (int(x) for x in args.points.split(",")):
            out = os.path.join(root, f"points-{n}")
            if not os.path.isdir(os.path.join(out, "points")):
                print(f"{n:,} points: writing ...", flush=True)
                print(f"{n:,} points: written in {build(out, n):.1f} s", flush=True)
            reports = os.path.join(root, f"reports-{n}")
            runs = [("summary", ["summary", out]),
                    ("compare", ["compare", f"{out}:target", f"{out}:baseline"])]
            if not args.no_publish:
                runs.append(("publish report", ["publish", "report", out, "--system", "target", "--reports", reports]))
            for name, argv in runs:
                wall, peak, _ = timed(argv)
                print(f"{n:>8,} points  {name:<15} {wall:8.2f} s  peak {peak / 2**20:8.0f} MiB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
