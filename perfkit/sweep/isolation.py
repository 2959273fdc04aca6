"""`perfkit sweep --ray --isolation-check`: how much a busy node slows one point, measured on one GPU (or
CPU worker) alone and with every other one of its node running the same point. See docs/scaling.md.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time

import ray

import perfkit.sweep.units as units
from perfkit.errors import UsageError, printable
from perfkit.sweep.planning import as_params, select
from perfkit.sweep.ray_runner import (
    PROBE_TIMEOUT_S,
    RESOURCE,
    Connection,
    alive_nodes,
    kind_of,
    worker_env,
    worker_setup,
)
from perfkit.sweep.search import search_specs
from perfkit.workload import Point

ISOLATION_MIN_REPEATS = 10  # timed repeats per worker and round, at least
ISOLATION_ROUNDS = 3  # alone, then all busy, this many times over: a drift in the background hits both


class _Barrier:
    """Lines up the busy phase's workers, all on one node: all start their timed repeats together, and each
    keeps its device busy after them until every worker has finished its own. Files in a folder of the
    node's temporary directory, not an actor: a worker that waits asks the file system (a system call), so
    its waiting loads no other process while the others are timed."""

    def __init__(self, token: str, n: int):
        import tempfile

        self.folder, self.n = os.path.join(tempfile.gettempdir(), f"perfkit-isolation-{token}"), n
        os.makedirs(self.folder, exist_ok=True)

    def _count(self, what: str) -> int:
        return sum(name.startswith(what) for name in os.listdir(self.folder))

    def mark(self, what: str, i: int) -> None:
        open(os.path.join(self.folder, f"{what}-{i}"), "w").close()

    def arrived(self) -> bool:
        return self._count("arrived") >= self.n

    def finished(self) -> bool:
        return self._count("finished") >= self.n

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


class _Worker:
    """One GPU (or CPU worker) of the isolation check: builds the point's model once and warms it up, then
    times the point on request, alone or lined up with the others (`barrier`)."""

    def __init__(self, params, system, point, kind, measure, build):
        from perfkit.models import parse_dtype

        worker_setup(kind)
        self.kind, self.point, self.seed, self.measure = kind, point, params.seed, measure
        device = "cuda" if kind == "cuda" else system.device
        self.system = dataclasses.replace(system, device=device)
        self.model = build(point.model, parse_dtype(system.dtype), device, system.attn_implementation,
                           seed=params.seed)
        self.env = worker_env(kind, system.device)
        self.run(max(params.warmup, 1))  # warm-up

    def run(self, repeats: int):
        return self.measure(self.model, self.system, self.point, warmup=0, repeats=repeats, seed=self.seed)

    def where(self) -> dict:
        return {"host": self.env["hostname"], "gpu_index": self.env["gpu_index"],
                "device_name": self.env["device_name"]}

    def timed(self, repeats: int, lineup: tuple | None = None) -> dict:
        """`repeats` timed repeats; with `lineup` (token, workers, this worker's number), lined up with the
        other workers of the round (_Barrier)."""
        barrier = None
        if lineup is not None:
            token, n, i = lineup
            barrier = _Barrier(token, n)
            barrier.mark("arrived", i)
            while not barrier.arrived():
                time.sleep(0.001)
        m = self.run(repeats)
        if barrier is not None:
            barrier.mark("finished", i)
            while not barrier.finished():  # the load stays until every timed repeat is done
                self.run(1)
        return {"ttft_s": list(m.ttft_s), "e2e_s": list(m.e2e_s)}

    def remove(self, token: str) -> None:
        _Barrier(token, 0).remove()


_worker_gpu = ray.remote(num_gpus=1, num_cpus=0)(_Worker)
_worker_cpu = ray.remote(num_cpus=1)(_Worker)


def isolation_check(params_or_path, systems: list[str] | None = None, address: str | None = "local",
                    n_boot: int = 2000, seed: int = 0) -> dict:
    """How much a busy node slows a point: the plan's first point (first system, model, I, O; first batch)
    timed on one GPU (or CPU worker) of the node with the most, alone, then while every other GPU of that
    node runs the same point, ISOLATION_ROUNDS times over. Returns the samples, the busy/alone ratio of the
    median e2e and ttft on that one device with a bootstrap interval, the other devices' busy medians, and
    a verdict. Writes nothing."""
    import numpy as np
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from perfkit.bootstrap import boot_medians

    params = as_params(params_or_path)
    chosen = select(params, systems)
    specs = search_specs(params, chosen)
    if not specs:
        raise UsageError(f"{params.source}: no point to measure (every length beyond its model's context)")
    spec = specs[0]
    point = Point(spec.model, spec.input_len, spec.run_output_len, params.batch_sizes[0])
    kind = kind_of(spec.system.device)
    repeats = max(params.repeats, ISOLATION_MIN_REPEATS)
    with Connection(address) as c:
        nodes = [n for n in alive_nodes() if n["Resources"].get(RESOURCE[kind], 0) >= 1]
        if not nodes:
            raise UsageError(f"system {spec.system.label!r} runs on {spec.system.device}, but {c.where} has no "
                             f"{RESOURCE[kind]}: expected a node with {RESOURCE[kind]}s")
        node = max(nodes, key=lambda n: n["Resources"].get(RESOURCE[kind], 0))
        n = int(node["Resources"][RESOURCE[kind]])
        if n < 2:
            raise UsageError(f"the isolation check needs a node with 2 {RESOURCE[kind]}s or more; the largest of "
                             f"{c.where} has {n}")
        c.say_started()
        pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        workers = [(_worker_gpu if kind == "cuda" else _worker_cpu).options(scheduling_strategy=pin).remote(
            params, spec.system, point, kind, units.measure_point, units.build_model) for _ in range(n)]
        try:
            where = ray.get([w.where.remote() for w in workers], timeout=PROBE_TIMEOUT_S)
            alone, busy = [], [[] for _ in workers]
            for _ in range(ISOLATION_ROUNDS):
                alone.append(ray.get(workers[0].timed.remote(repeats)))
                token = secrets.token_hex(6)
                for i, r in enumerate(ray.get([w.timed.remote(repeats, (token, n, i)) for i, w in enumerate(workers)])):
                    busy[i].append(r)
                ray.get(workers[0].remove.remote(token))
        except ray.exceptions.GetTimeoutError:
            raise UsageError(f"{c.where}: the isolation check's {n} workers did not start within "
                             f"{PROBE_TIMEOUT_S:.0f} s: expected {n} free {RESOURCE[kind]}s on "
                             f"{node['NodeManagerAddress']}") from None
        finally:
            for w in workers:
                ray.kill(w)
    rng = np.random.default_rng(seed)
    out = {"system": spec.system.label, "model": point.model, "input_len": point.input_len,
           "output_len": point.output_len, "batch": point.batch, "repeats": repeats, "rounds": ISOLATION_ROUNDS,
           "kind": kind, "workers": n, **where[0], "where": where}

    def pooled(runs, metric):
        return np.concatenate([np.array(r[f"{metric}_s"]) for r in runs]) * 1e3

    for metric in ("e2e", "ttft"):
        a, b = pooled(alone, metric), pooled(busy[0], metric)
        draws = boot_medians(b, rng, n_boot) / boot_medians(a, rng, n_boot)
        lo, hi = (float(q) for q in np.quantile(draws, [0.025, 0.975]))
        others = [float(np.median(pooled(runs, metric))) for runs in busy[1:]]
        out[metric] = {"alone_ms": float(np.median(a)), "busy_ms": float(np.median(b)), "alone_iqr": _iqr(a),
                       "busy_iqr": _iqr(b), "ratio": float(np.median(b) / np.median(a)), "lo": lo, "hi": hi,
                       "others_busy_ms": (min(others), max(others)), "alone": a.tolist(), "busy": b.tolist()}
    e2e = out["e2e"]
    out["verdict"] = ("within noise" if e2e["lo"] <= 1 <= e2e["hi"] else
                      "slower when the node is busy" if e2e["lo"] > 1 else "faster when the node is busy")
    return out


def _iqr(x) -> float:
    import numpy as np

    return float(np.subtract(*np.percentile(x, [75, 25])) / np.median(x))


def isolation_text(r: dict) -> str:
    """What `perfkit sweep --ray --isolation-check` prints."""
    unit = "GPUs" if r["kind"] == "cuda" else "CPU workers"
    device = f"GPU {r['gpu_index']}" if r["gpu_index"] is not None else "worker 1"
    lines = [f"isolation check on {r['host']} ({r['workers']} {unit}, {r['device_name']}): {r['system']} "
             f"{r['model']} I={r['input_len']} O={r['output_len']} B={r['batch']}, {r['rounds']} rounds of "
             f"{r['repeats']} timed repeats, on {device} alone and with all {r['workers']} busy"]
    for metric in ("e2e", "ttft"):
        m = r[metric]
        lo, hi = m["others_busy_ms"]
        lines.append(f"  {metric:<5} alone {m['alone_ms']:.3f} ms (IQR {100 * m['alone_iqr']:.1f} %), busy "
                     f"{m['busy_ms']:.3f} ms (IQR {100 * m['busy_iqr']:.1f} %): ratio busy/alone {m['ratio']:.3f} "
                     f"[95 % interval {m['lo']:.3f} to {m['hi']:.3f}]; the other {unit} busy: {lo:.3f} to {hi:.3f} ms")
    e2e = r["e2e"]
    if r["verdict"] == "within noise":
        advice = (f"the parallel figures can be trusted: with every {unit[:-1]} busy, e2e moved by "
                  f"{100 * (e2e['ratio'] - 1):+.1f} %, within this point's noise")
    elif r["verdict"] == "slower when the node is busy":
        advice = (f"a busy node slows this point by {100 * (e2e['ratio'] - 1):.1f} % "
                  f"({100 * (e2e['lo'] - 1):.1f} to {100 * (e2e['hi'] - 1):.1f} %): a parallel sweep's figures are "
                  "that much slower than a serial sweep's; sweep serially, or compare only figures measured the "
                  "same way")
    else:
        advice = (f"a busy node made this point {100 * (1 - e2e['ratio']):.1f} % faster (clocks or caches while "
                  "alone?): repeat the check before trusting either")
    lines.append(f"verdict: {r['verdict']}: {advice}")
    return "\n".join(printable(line) for line in lines)  # a host, label and model from outside
