"""How long a sweep job will take, estimated from what the sweep has already measured, and the budget that
decides what still fits. A job's duration is a measured reference job's, phase by phase, scaled by how
each phase's cost grows (perfkit.roofline's cost model: prefill by FLOPs or weight bytes, a decode step by
the bytes it reads); with no reference there is no estimate and the job runs. See docs/sweeps.md.
"""

from __future__ import annotations

import dataclasses
import math
import time

clock = time.perf_counter  # a serial sweep's clock (a test replaces it to inject timings)


@dataclasses.dataclass(frozen=True)
class MeasuredJob:
    system: str
    model: str
    dtype: str
    batch: int
    input_len: int
    output_len: int
    ttft_s: float  # median
    step_s: float  # median time per decode step (0 where O = 1)
    setup_s: float
    runs: int  # warm-up runs + timed repeats


def measured_job(row: dict) -> MeasuredJob | None:
    """The reference a measured `ok` row gives (None for rows without timings, or derived rows)."""
    if row.get("status") != "ok" or row.get("derived_from_output_len") is not None:
        return None
    ttft_ms, tpot_ms = row.get("ttft_ms"), row.get("tpot_ms")
    if not _finite(ttft_ms):
        return None
    return MeasuredJob(row["system"], row["model"], row.get("dtype") or "float32", int(row["batch"]),
                       int(row["input_len"]), int(row["output_len"]), ttft_ms / 1e3,
                       tpot_ms / 1e3 if _finite(tpot_ms) else 0.0, (row.get("setup_ms") or 0.0) / 1e3,
                       int(row.get("warmup") or 0) + int(row.get("repeats") or 1))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class _Costs:
    """Roofline costs of a job's two phases, as (bytes, flops) or as seconds where the peaks are known."""

    def __init__(self, spec=None):
        self.spec = spec

    def _phases(self, model, dtype, batch, input_len, output_len):
        from perfkit import roofline as rl

        a = rl.arch(model)
        weights = rl.decode_weight_bytes(a, dtype)
        prefill = (float(rl.weight_bytes(a, dtype)), rl.prefill_flops(a, batch, input_len))
        step_bytes = (rl.decode_bytes_per_step(a, dtype, batch, input_len, output_len) if output_len > 1
                      else float(weights))
        step = (step_bytes, 2.0 * a.params * batch)
        return prefill, step

    def ratios(self, ref: MeasuredJob, model: str, batch: int, input_len: int, output_len: int):
        """(prefill ratio, decode-step ratio) of a job over the reference; None where the model's
        architecture cannot be read (the caller then makes no estimate)."""
        try:
            new = self._phases(model, ref.dtype, batch, input_len, output_len)
            old = self._phases(ref.model, ref.dtype, ref.batch, ref.input_len, ref.output_len)
        except Exception:  # noqa: BLE001 - a checkpoint whose config the cost model cannot read: no estimate
            return None
        return tuple(self._ratio(n, o, ref.dtype) for n, o in zip(new, old))

    def _ratio(self, new, old, dtype) -> float:
        if self.spec is not None:
            bw, peak = self.spec.mem_bw_bytes_s, self.spec.matrix_flops(dtype)
            if _finite(bw) and _finite(peak):
                return max(new[0] / bw, new[1] / peak) / max(old[0] / bw, old[1] / peak)
        return max(new[0] / old[0], new[1] / old[1])


class DurationEstimator:
    """Learns measured jobs; estimates the seconds of a job not yet run (0.0 where nothing is known)."""

    def __init__(self, spec=None):
        self.costs = _Costs(spec)
        # (system, model, decodes) -> the last measured job; `decodes`: O > 1. A job with O = 1 has no decode
        # step to scale, so it never stands for one that decodes (nor the other way round).
        self.last: dict[tuple[str, str, bool], MeasuredJob] = {}

    def learn(self, row: dict) -> None:
        job = measured_job(row)
        if job is not None:
            self.last[(job.system, job.model, job.output_len > 1)] = job

    def _from(self, ref: MeasuredJob, model, batch, input_len, output_len, runs) -> float | None:
        ratios = self.costs.ratios(ref, model, batch, input_len, output_len)
        if ratios is None:
            return None
        r_prefill, r_step = ratios
        per_run = ref.ttft_s * r_prefill + (output_len - 1) * ref.step_s * r_step
        return ref.setup_s + runs * per_run

    def estimate(self, system: str, model: str, batch: int, input_len: int, output_len: int, runs: int) -> float:
        decodes = output_len > 1
        same = {k: j for k, j in self.last.items() if k[2] == decodes}
        refs = ([same[(system, model, decodes)]] if (system, model, decodes) in same else
                [j for (s, m, _), j in same.items() if m == model] or
                [j for (s, m, _), j in same.items() if s == system])
        estimates = [e for e in (self._from(r, model, batch, input_len, output_len, runs) for r in refs)
                     if e is not None]
        return max(estimates) if estimates else 0.0


def estimate_build_s(builds: list[dict], model: str, dtype: str) -> float:
    """Seconds to build `model`: its last build (any system); else the largest other build, scaled by weight
    bytes (building is allocating and initialising the weights); 0.0 before any build."""
    from perfkit import roofline as rl

    same = [b["seconds"] for b in builds if b["model"] == model]
    if same:
        return same[-1]
    scaled = []
    for b in builds:
        try:
            scaled.append(b["seconds"] * rl.weight_bytes(model, dtype) / rl.weight_bytes(b["model"], b["dtype"]))
        except Exception:  # noqa: BLE001 - a checkpoint whose config the cost model cannot read: left out
            continue
    return max(scaled, default=0.0)


class Budget:
    """A sweep's time budget as one unit sees it: a deadline on `clock` (None: no budget), a duration
    estimator per device (each with that device's peaks where known), and every model build so far."""

    def __init__(self, params, deadline: float | None, estimators: dict[str, DurationEstimator], clock,
                 builds: list[dict] | None = None):
        self.params, self.deadline, self.estimators, self.clock = params, deadline, estimators, clock
        self.builds = builds if builds is not None else []
        self.device_of = {s.label: s.env_key() for s in params.systems}

    def estimator(self, label: str) -> DurationEstimator | None:
        return self.estimators.get(self.device_of.get(label))

    def learn(self, rows) -> None:
        """Take measured rows as references, oldest first (a resumed sweep budgets its first points too)."""
        for row in sorted(rows, key=lambda r: r.get("created_utc") or ""):
            estimator = self.estimator(row.get("system"))
            if estimator is not None:
                estimator.learn(row)

    def fits(self, seconds: float) -> bool:
        return self.deadline is None or self.clock() + seconds <= self.deadline

    def estimate_job(self, job) -> float:
        """Seconds of one batch search's job (perfkit.sweep.search.BatchRun), 0.0 where nothing is known."""
        u, p = job.spec, self.params
        estimator = self.estimator(u.system.label)
        if estimator is None:
            return 0.0
        return estimator.estimate(u.system.label, u.model, job.batch, u.input_len, u.run_output_len,
                                  p.warmup + p.repeats)

    def estimate_build(self, system, model: str) -> float:
        return estimate_build_s(self.builds, model, system.dtype)
