"""The study's metrics, computed from raw per-repeat samples. Every formula lives here, once.

Per repeat a point yields `ttft_s` (start → first token of every sequence) and `e2e_s` (start → last
token); every other figure derives from them and the workload (batch B, input_len I, output_len O). A
throughput is work over the median latency, not the median of per-repeat throughputs, so that it and its
latency describe the same repeats; with O = 1 there is no decode step, so tpot_ms and decode_tok_s are NaN.
See docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# torch.utils.benchmark's rule of thumb: a spread this large relative to the median deserves a warning.
NOISY_IQR_FRACTION = 0.1


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    """median, IQR, p10, p90 and n of raw samples."""
    a = np.asarray(values_ms, dtype=float)
    if a.size == 0:
        nan = float("nan")
        return {"median": nan, "iqr": nan, "p10": nan, "p90": nan, "n": 0}
    q10, q25, q50, q75, q90 = np.percentile(a, [10, 25, 50, 75, 90])
    return {"median": float(q50), "iqr": float(q75 - q25), "p10": float(q10), "p90": float(q90), "n": int(a.size)}


def is_noisy(values: Sequence[float]) -> bool:
    s = summary(values)
    return s["n"] > 1 and s["median"] > 0 and s["iqr"] / s["median"] > NOISY_IQR_FRACTION


# Each throughput column: the latency it is measured over, and the tokens that latency produces.
THROUGHPUTS = {
    "prefill_tok_s": ("ttft", lambda batch, input_len, output_len: batch * input_len),
    "output_tok_s": ("e2e", lambda batch, input_len, output_len: batch * output_len),
    "decode_tok_s": ("tpot", lambda batch, input_len, output_len: batch),
    "total_tok_s": ("e2e", lambda batch, input_len, output_len: batch * (input_len + output_len)),
}


def tpot(ttft, e2e, output_len: int) -> np.ndarray:
    """Per-repeat time per output token after the first, in the unit of its inputs; empty when O = 1."""
    ttft, e2e = np.asarray(ttft, dtype=float), np.asarray(e2e, dtype=float)
    return (e2e - ttft) / (output_len - 1) if output_len > 1 else np.array([])


def rate(tokens: float, ms):
    """Tokens per second over a latency in ms (scalar or array); NaN where the latency is not positive."""
    ms = np.asarray(ms, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ms > 0, tokens / (ms / 1e3), np.nan)
    return float(out) if out.ndim == 0 else out


def point_metrics(batch: int, input_len: int, output_len: int, ttft_s: Sequence[float], e2e_s: Sequence[float]) -> dict:
    """Every derived column of a results row, from the raw per-repeat ttft and e2e (seconds)."""
    ttft = np.asarray(ttft_s, dtype=float)
    e2e = np.asarray(e2e_s, dtype=float)
    medians = {"ttft": summary(ttft * 1e3), "e2e": summary(e2e * 1e3),
               "tpot": summary(tpot(ttft, e2e, output_len) * 1e3)}
    ttft_ms, e2e_ms, tpot_ms = medians["ttft"], medians["e2e"], medians["tpot"]

    return {
        "ttft_ms": ttft_ms["median"],
        "ttft_iqr_ms": ttft_ms["iqr"],
        "ttft_p10_ms": ttft_ms["p10"],
        "ttft_p90_ms": ttft_ms["p90"],
        "e2e_ms": e2e_ms["median"],
        "e2e_iqr_ms": e2e_ms["iqr"],
        "e2e_p10_ms": e2e_ms["p10"],
        "e2e_p90_ms": e2e_ms["p90"],
        "tpot_ms": tpot_ms["median"],
        "tpot_iqr_ms": tpot_ms["iqr"],
        "tpot_p10_ms": tpot_ms["p10"],
        "tpot_p90_ms": tpot_ms["p90"],
        **{column: rate(tokens(batch, input_len, output_len), medians[latency]["median"])
           for column, (latency, tokens) in THROUGHPUTS.items()},
        "repeats": ttft_ms["n"],
        "noisy": bool(is_noisy(ttft) or is_noisy(e2e) or (output_len > 1 and is_noisy(e2e - ttft))),
    }


def truncate_e2e_s(ttft_s: Sequence[float], step_s: Sequence[Sequence[float]], output_len: int) -> list[float]:
    """e2e of a shorter generation read off a longer one: ttft + the first output_len − 1 decode steps.

    Valid because greedy decoding of the first output_len tokens does the same work whatever comes after.
    """
    out = []
    for ttft, steps in zip(ttft_s, step_s):
        if len(steps) < output_len - 1:
            raise ValueError(f"a run of {len(steps) + 1} tokens cannot give output_len {output_len}")
        out.append(float(ttft) + float(sum(steps[: output_len - 1])))
    return out


def energy_columns(energy_j: list, power_w: list, generated_tokens: int) -> dict:
    """Row columns: medians over repeats of joules and watts, and joules per generated token.

    None (null) when the counter was unavailable for any repeat; the raw samples are then an empty list
    (not null, so that a results directory mixing CPU and GPU rows keeps one list column type).
    """
    if not energy_j or any(e is None for e in energy_j):
        return {"energy_j": None, "avg_power_w": None, "j_per_token": None, "energy_j_samples": []}
    joules = float(np.median(energy_j))
    watts = [w for w in power_w if w is not None]
    return {
        "energy_j": joules,
        "avg_power_w": float(np.median(watts)) if watts else None,
        "j_per_token": joules / generated_tokens if generated_tokens > 0 else None,
        "energy_j_samples": [float(e) for e in energy_j],
    }


def geometric_mean(ratios) -> float:
    """The mean of ratios on a log scale (a ratio of 2 and one of 1/2 average to 1); NaN for none."""
    values = np.asarray(list(ratios), dtype=float)
    return float(np.exp(np.log(values).mean())) if len(values) else float("nan")
