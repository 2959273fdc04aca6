"""Ray sweep speed-up: the same small sweep serially and with --ray, interleaved, on this machine's CPUs.

One local Ray instance (one CPU per worker, one thread per worker; the serial sweep runs one thread too) is
started once, and its workers warmed by one sweep that is not counted: on a cluster Ray is already running.
Then pairs (serial, Ray), the order alternating pair by pair so that drift in the machine's load hits both
alike, each into a fresh results directory. It prints:

  - the wall-time ratio serial / Ray per pair, their median and IQR (goal >= 1.6 on 2 workers);
  - Ray's added cost per point, two ways: on zero-cost points (measuring and building replaced by stand-ins
    that return at once, so what remains is the bookkeeping: tasks, events, the driver's writes), the Ray
    sweep's wall time less the serial one's, per point (goal <= 50 ms); and on the real sweep, the Ray wall
    time less a perfect split of the serial one (serial / workers), per point: everything Ray and running
    side by side add, contention for the machine included;
  - the one-time costs: starting Ray, and the first sweep (workers importing torch).

    python benchmarks/ray_speedup.py [--pairs 5] [--workers 2] [--models tiny-llama2-13b,tiny-mistral-7b]
                                     [--input-lens 64,128] [--batch-sizes 1,2,4] [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one thread here, and in the workers Ray starts

import argparse
import logging
import shutil
import statistics
import tempfile
import time

import yaml


def zero_cost_measure(model, system, point, warmup, repeats, seed):
    """A point that costs nothing: fixed timings, no model (the bookkeeping is all that is left)."""
    import torch

    from perfkit.measure import PointMeasurement

    ttft, step = 0.001, 0.001
    e2e = ttft + (point.output_len - 1) * step
    return PointMeasurement(point, system, [ttft] * repeats, [e2e] * repeats,
                            [[step] * (point.output_len - 1)] * repeats, 0.0, 0.0, None, "none",
                            torch.zeros((point.batch, point.output_len), dtype=torch.long))


def zero_cost_build(*args, **kwargs):
    return object()


def write_params(path: str, models: list[str], repeats: int, input_lens=(64, 128), batch_sizes=(1, 2, 4)) -> str:
    """Two systems that differ in attention (two builds, so two units per model), a small grid, no plateau
    stop: every run measures the same points."""
    cpu = {"backend": "hf-loop", "dtype": "float32", "device": "cpu"}
    params = {"name": "ray-speedup", "models": models,
              "systems": [{"label": "sdpa", **cpu, "attn_implementation": "sdpa"},
                          {"label": "eager", **cpu, "attn_implementation": "eager"}],
              "grid": {"input_lens": list(input_lens), "output_lens": [16], "batch_sizes": list(batch_sizes)},
              "warmup": 1, "repeats": repeats, "seed": 0, "search": {"min_gain": None}}
    with open(path, "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)
    return path


def timed_sweep(params: str, root: str, ray: str | None) -> tuple[float, int]:
    from perfkit.sweep import run_sweep

    out = tempfile.mkdtemp(dir=root)
    t = time.perf_counter()
    outcome = run_sweep(params, out_dir=out, progress=False, ray=ray)
    wall = time.perf_counter() - t
    shutil.rmtree(out)
    assert not outcome.failures and not outcome.lost, (outcome.failures, outcome.lost)
    return wall, outcome.measured


def pairs(params: str, root: str, n: int) -> list[tuple[float, float, int]]:
    """n (serial, Ray) wall-time pairs, the order alternating."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            serial, points = timed_sweep(params, root, None)
            ray, _ = timed_sweep(params, root, "local")
        else:
            ray, points = timed_sweep(params, root, "local")
            serial, _ = timed_sweep(params, root, None)
        out.append((serial, ray, points))
        print(f"  pair {i + 1}: serial {serial:7.2f} s, Ray {ray:6.2f} s, ratio {serial / ray:.2f} ({points} points)",
              flush=True)
    return out


def iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[2] - q[0]


def main() -> int:
    from perfkit.cli import restore_interrupt

    restore_interrupt()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="Ray's CPUs (default: this machine's)")
    ap.add_argument("--models", default="tiny-llama2-13b,tiny-mistral-7b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--input-lens", default="64,128")
    ap.add_argument("--batch-sizes", default="1,2,4")
    args = ap.parse_args()
    input_lens = [int(x) for x in args.input_lens.split(",")]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]

    import ray
    import torch

    import perfkit.sweep.units as sweep_units

    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="perfkit-ray-speedup-")
    try:
        params = write_params(os.path.join(root, "p.yaml"), args.models.split(","), args.repeats, input_lens,
                              batch_sizes)
        t = time.perf_counter()
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        started = time.perf_counter() - t
        first, _ = timed_sweep(params, root, "local")  # the workers import torch and perfkit: not counted
        print(f"machine: {os.cpu_count()} CPUs ({_cpu()}), Ray {ray.__version__} with {args.workers} CPU workers, "
              f"one thread each; starting Ray took {started:.1f} s, the first (uncounted) Ray sweep {first:.1f} s",
              flush=True)

        print(f"real sweep ({args.models}; sdpa and eager; I {args.input_lens}; O 16; B {args.batch_sizes}; "
              f"warm-up 1, {args.repeats} repeats):", flush=True)
        real = pairs(params, root, args.pairs)
        ratios = [s / r for s, r, _ in real]
        added_real = [(r - s / args.workers) / n for s, r, n in real]

        print("zero-cost points (measuring and building replaced by stand-ins that return at once):", flush=True)
        real_measure, real_build = sweep_units.measure_point, sweep_units.build_model
        sweep_units.measure_point, sweep_units.build_model = zero_cost_measure, zero_cost_build
        try:
            fake = pairs(params, root, args.pairs)
        finally:
            sweep_units.measure_point, sweep_units.build_model = real_measure, real_build
        added_fake = [(r - s) / n for s, r, n in fake]

        print(f"serial / Ray wall time: median {statistics.median(ratios):.2f} (IQR {iqr(ratios):.2f}, "
              f"{min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} pairs); goal >= 1.6")
        print(f"Ray's added cost per point, zero-cost points: median {1e3 * statistics.median(added_fake):.1f} ms "
              f"(IQR {1e3 * iqr(added_fake):.1f} ms); goal <= 50 ms")
        print(f"Ray's added cost per point, real sweep (Ray wall - serial wall / {args.workers}, per point; "
              f"contention included): median {1e3 * statistics.median(added_real):.1f} ms "
              f"(IQR {1e3 * iqr(added_real):.1f} ms)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        ray.shutdown()
    return 0


def _cpu() -> str:
    from perfkit.provenance import cpu_model

    return cpu_model()


if __name__ == "__main__":
    raise SystemExit(main())
