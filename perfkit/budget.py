"""How long a sweep job will take, estimated from what the sweep has already measured.

A job is one point run: set-up, W warm-up runs and R timed repeats, each a prompt pass and O − 1 decode
steps. Its duration is estimated phase by phase from a measured reference job, scaled by how each phase's
cost grows (the cost model of perfkit.roofline):

    prefill  ~ max(weight bytes / bandwidth, prefill FLOPs / matrix peak)    grows with B·I once compute-bound
    a decode step ~ max(weights + B·KV-cache bytes / bandwidth, 2·params·B FLOPs / matrix peak)

    seconds = setup_ref + (W + R) · (ttft_ref · r_prefill + (O − 1) · tpot_ref · r_step)

where r_* is the cost of the new job's phase over the reference's. With the device's peaks known
(perfkit.hardware) the cost is the roofline time; unknown (a CPU), each ratio is the larger of the bytes
ratio and the FLOPs ratio, which never under-estimates whichever bound the phase is under. A batch-1 point
at I = 2048 therefore costs about what one at I = 128 does (decode dominates), not 16 times as much.

References, in order of preference: the last measured job of the same (system, model); any system's jobs
of the same model (the largest estimate); the same system's jobs of other models (scaled across
architectures by the same cost model) — each only among jobs that, like the new one, decode (O > 1) or do
not. No reference: no estimate (0 s): the job runs, and teaches. A model's build is estimated from its
last build, or from another model's scaled by weight bytes.

The ratios are those of the bounds, so a reference far from its bound (launch overhead at batch 1) scales
as if the overhead grew with the work too: estimates err long, which leaves a job for later rather than
overrunning the budget.
"""

from __future__ import annotations

import dataclasses
import math


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
        except Exception:  # a checkpoint whose config the cost model cannot read
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
        except Exception:  # a checkpoint whose config the cost model cannot read
            continue
    return max(scaled, default=0.0)
