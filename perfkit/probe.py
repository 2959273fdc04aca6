"""`perfkit probe`: what this device actually achieves, as opposed to what its datasheet promises.

Two figures, with the same definitions on a GPU and on a CPU so that MBU and MFU against the probed peaks
mean the same everywhere: copy bandwidth (STREAM's "Copy", 2·N / t, N beyond the caches) and dense matmul
FLOP/s per dtype (2·n³ / t). The best repeat is the achievable peak, the median is kept beside it.
See docs/fast-path.md (the probe).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from perfkit.models import dtype_name, parse_dtype
from perfkit.timing import on_device

GPU_COPY_BYTES = 1 << 30
CPU_COPY_BYTES = 256 << 20


def _timer(device: torch.device):
    """A function timing `fn()` once on `device`, in seconds."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def time_cuda(fn) -> float:
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return time_cuda

    def time_cpu(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return time_cpu


def _repeat(device, fn, repeats: int, budget_s: float) -> list[float]:
    timer = _timer(device)
    timer(fn)  # warm-up: first-call allocation, kernel selection, page faults
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() < t_end):
        times.append(timer(fn))
    return times


def copy_bandwidth(device: torch.device, n_bytes: int | None = None, repeats: int = 20, budget_s: float = 5.0) -> dict:
    if n_bytes is None:
        n_bytes = GPU_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            n_bytes = min(n_bytes, free // 4)
    n = n_bytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = _repeat(device, lambda: dst.copy_(src), repeats, budget_s)
    moved = 2 * n * 4
    return {
        "copy_bandwidth_bytes_s": moved / min(times),
        "copy_bandwidth_median_bytes_s": moved / statistics.median(times),
        "copy_bytes": n * 4,
        "copy_repeats": len(times),
    }


def matmul_throughput(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 20,
                      budget_s: float = 5.0) -> dict:
    if n is None:
        if device.type == "cuda":
            n = 4096 if dtype == torch.float32 else 8192
        else:
            n = 1024
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=gen, device=device).to(dtype)
    b = torch.randn((n, n), generator=gen, device=device).to(dtype)
    out = torch.empty((n, n), dtype=dtype, device=device)
    times = _repeat(device, lambda: torch.matmul(a, b, out=out), repeats, budget_s)
    flops = 2.0 * n**3
    return {"flops": flops / min(times), "median_flops": flops / statistics.median(times), "n": n,
            "repeats": len(times)}


def probe(device: str | torch.device, dtypes=("bfloat16", "float16", "float32"), budget_s: float = 5.0) -> dict:
    """Measure this device's copy bandwidth and matrix throughput; returns the probe record."""
    from perfkit.provenance import environment, new_run_id, utc_now

    dev = torch.device(device)
    names = [dtype_name(parse_dtype(d)) for d in dtypes]
    t0 = time.perf_counter()
    with on_device(dev), torch.inference_mode():
        record = copy_bandwidth(dev, budget_s=budget_s)
        mm = {name: matmul_throughput(dev, parse_dtype(name), budget_s=budget_s) for name in names}
    env = environment(dev)
    record.update({
        "kind": "probe",
        "run_id": new_run_id(),
        "device": str(dev),
        "device_name": env["device_name"],
        "matmul_flops": {k: v["flops"] for k, v in mm.items()},
        "matmul_median_flops": {k: v["median_flops"] for k, v in mm.items()},
        "matmul_n": {k: v["n"] for k, v in mm.items()},
        "matmul_repeats": {k: v["repeats"] for k, v in mm.items()},
        "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if dev.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t0,
        "created_utc": utc_now(),
        "env": env,
    })
    return record


def write_probe(out: str, record: dict) -> str:
    """Write the record atomically: to `out` if it ends in .json, else to out/probes/<run_id>.json."""
    import json

    from perfkit.results import atomic_write

    path = out if out.endswith(".json") else os.path.join(out, "probes", f"{record['run_id']}.json")
    blob = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
    atomic_write(path, lambda f: f.write(blob))
    return path
