"""The speed of light: how fast a point could possibly run on this hardware, and how close it came.

Every formula lives here, once: decode is bound by memory bandwidth (MBU = decode_bound_ms / tpot_ms),
prefill by matrix throughput (MFU = prefill_bound_ms / ttft_ms), for the Llama/Mistral layout (no biases).
Peaks come from the vendor's dense spec (perfkit.hardware) and from `perfkit probe` on this very device;
where one is unknown the columns are NaN ("unknown"), never a guess. See docs/fast-path.md (speed of light).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import numpy as np

NAN = float("nan")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclasses.dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    sliding_window: int | None = None
    tied: bool = False

    @property
    def layer_params(self) -> int:
        h, d = self.hidden, self.head_dim
        attn = h * self.heads * d + 2 * h * self.kv_heads * d + self.heads * d * h
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        lm_head = 0 if self.tied else embed
        return embed + lm_head + self.layers * self.layer_params + self.hidden


@functools.lru_cache(maxsize=64)
def arch(model: str) -> Arch:
    """Architecture numbers of a registry name or checkpoint directory (Llama/Mistral-style configs).

    A registry name is read off its entry, with no transformers config built: reading results (summary,
    compare, reports) asks for every model's numbers, and importing transformers' config classes costs
    seconds that have nothing to do with the data."""
    from perfkit.registry import REGISTRY

    spec = REGISTRY.get(model) if isinstance(model, str) else None
    if spec is not None:
        return Arch(layers=spec.layers, hidden=spec.hidden, heads=spec.heads, kv_heads=spec.kv_heads,
                    head_dim=spec.head_dim, intermediate=spec.intermediate, vocab=spec.vocab,
                    sliding_window=spec.sliding_window, tied=False)
    from perfkit.models import model_config

    c = model_config(model)
    heads = c.num_attention_heads
    return Arch(
        layers=c.num_hidden_layers,
        hidden=c.hidden_size,
        heads=heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
        intermediate=c.intermediate_size,
        vocab=c.vocab_size,
        sliding_window=getattr(c, "sliding_window", None),
        tied=bool(getattr(c, "tie_word_embeddings", False)),
    )


def _arch(model: str | Arch) -> Arch:
    return model if isinstance(model, Arch) else arch(model)


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def weight_bytes(model: str | Arch, dtype: str) -> int:
    a = _arch(model)
    return a.params * dtype_bytes(dtype)


def decode_weight_bytes(model: str | Arch, dtype: str) -> int:
    """Weight bytes one decode step reads: all but the embedding table (one row per token is read)."""
    a = _arch(model)
    embed = 0 if a.tied else a.vocab * a.hidden
    return (a.params - embed) * dtype_bytes(dtype)


def kv_bytes_per_token(model: str | Arch, dtype: str) -> int:
    a = _arch(model)
    return 2 * a.layers * a.kv_heads * a.head_dim * dtype_bytes(dtype)


def _windowed_sum(m: int, window: int | None) -> float:
    """Σ_{n=1..m} min(n, window): positions attended to by the first m positions (closed form: a results
    table asks this of every row, and summing a range per row costs seconds at 100,000 rows)."""
    if window is None or m <= window:
        return m * (m + 1) / 2
    return window * (window + 1) / 2 + (m - window) * window


def mean_decode_context(input_len: int, output_len: int, window: int | None = None) -> float:
    """Mean number of cached positions a decode step attends to, over steps k = 1 … O−1."""
    if output_len < 2:
        return NAN
    return (_windowed_sum(input_len + output_len - 1, window) - _windowed_sum(input_len, window)) / (output_len - 1)


def decode_bytes_per_step(model: str | Arch, dtype: str, batch: int, input_len: int, output_len: int) -> float:
    """Bytes one decode step must read: its weights and the KV cache of every sequence at the mean context
    over the steps. Only useful bytes: a static cache read in full (masked) shows as a lower MBU."""
    a = _arch(model)
    ctx = mean_decode_context(input_len, output_len, a.sliding_window)
    return decode_weight_bytes(a, dtype) + batch * kv_bytes_per_token(a, dtype) * ctx


def prefill_flops(model: str | Arch, batch: int, input_len: int) -> float:
    """FLOPs of the prompt pass (2 per multiply-add): every prompt token through every layer's matrices, the
    lm_head at the last position only (logits_to_keep=1), and attention over the causal (and windowed) keys:
    the half of the I² square a causal kernel must do, not the full square."""
    a = _arch(model)
    linear = 2.0 * batch * input_len * a.layers * (a.layer_params - 2 * a.hidden)
    lm_head = 2.0 * batch * a.hidden * a.vocab
    keys = _windowed_sum(input_len, a.sliding_window)
    attention = 4.0 * batch * a.layers * a.heads * a.head_dim * keys
    return linear + lm_head + attention


def decode_bound_ms(bytes_per_step: float, bandwidth_bytes_s: float) -> float:
    return bytes_per_step / bandwidth_bytes_s * 1e3 if _known(bandwidth_bytes_s) else NAN


def prefill_bound_ms(flops: float, peak_flops: float) -> float:
    return flops / peak_flops * 1e3 if _known(peak_flops) else NAN


def fraction(bound_ms: float, measured_ms: float) -> float:
    """Achieved fraction of the speed of light: bound time over measured time (1.0 = at the limit)."""
    if not (_known(bound_ms) and _known(measured_ms)):
        return NAN
    return bound_ms / measured_ms


def _known(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating)) and math.isfinite(x) and x > 0


# ---- probes ----------------------------------------------------------------------------------------

def load_probe(source) -> list[dict]:
    """Probe records from a dict, a list of dicts, a probe JSON file, or a directory of them (probes/*.json)."""
    if source is None:
        return []
    if isinstance(source, dict):
        return [source]
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in load_probe(s)]
    path = os.fspath(source)
    if os.path.isdir(path):
        sub = os.path.join(path, "probes") if os.path.isdir(os.path.join(path, "probes")) else path
        records = []
        for f in sorted(os.listdir(sub)):
            if f.endswith(".json"):
                try:  # each a file: a directory (or a link loop) named *.json is named, never walked
                    records += _checked_probe(_read_probe(os.path.join(sub, f)))
                except (OSError, ValueError) as exc:  # damage is named, and the probe left out
                    from perfkit.results import warn_skipped

                    why = " ".join(str(exc).split())[:160]
                    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
                        why = f"not valid JSON ({why})"
                    warn_skipped([(os.path.join(sub, f), why)])
        return records
    return _read_probe(path)


def _read_probe(path: str) -> list[dict]:
    """A probe JSON file, read as a regular file of bounded size (errors.read_regular: a FIFO or a link to a
    device is refused, not read); ValueError (errors.UnreadableFile, json's) where it cannot be."""
    from perfkit.errors import nesting_refused, read_regular
    from perfkit.results import MAX_RECORD_BYTES

    blob = read_regular(path, "a probe record (JSON)", MAX_RECORD_BYTES)
    with nesting_refused("a probe record (a JSON object of a few levels)"):
        return [json.loads(blob)]


def _checked_probe(records: list) -> list[dict]:
    """A stored probe record as `perfkit probe` writes it; ValueError naming what is wrong otherwise."""
    for r in records:
        if not isinstance(r, dict):
            raise ValueError(f"holds a JSON {type(r).__name__}, expected a probe record (an object)")
        matmul = r.get("matmul_flops") or {}
        if not isinstance(matmul, dict):
            raise ValueError("matmul_flops is not an object, expected {dtype: FLOP/s}")
        figures = [r.get("copy_bandwidth_bytes_s"), *matmul.values()]
        if any(v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0) for v in figures):
            raise ValueError("a bandwidth or matmul figure that is not a positive number, expected positive figures")
    return records


def _probe_for(probes: list[dict], device_name) -> dict | None:
    # A probe only speaks for the device it ran on: applying it to another would be a guess.
    # The latest matching probe wins.
    for p in reversed(probes):
        if p.get("device_name") == device_name:
            return p
    return None


# ---- per-row columns -------------------------------------------------------------------------------

SOL_COLUMNS = [
    "hw_name", "weight_bytes", "decode_bytes_per_step", "prefill_flops",
    "decode_bound_ms", "prefill_bound_ms", "decode_bound_probed_ms", "prefill_bound_probed_ms",
    "mbu_spec", "mbu_probed", "mfu_spec", "mfu_probed", "decode_gb_s", "prefill_tflop_s",
]


def speed_of_light_row(row: dict, hardware=None, probes: list[dict] | None = None) -> dict:
    """The speed-of-light columns of one results row (a dict with model, dtype, batch, input_len, ...)."""
    from perfkit.errors import UsageError
    from perfkit.hardware import HardwareSpec, by_name, lookup

    out = {c: NAN for c in SOL_COLUMNS}
    out["hw_name"] = None
    try:
        a = arch(row["model"])
    except (UsageError, OSError, AttributeError, ValueError):
        return out  # a checkpoint that is not here, or not a Llama-style config: unknown
    dtype = row.get("dtype")
    if dtype not in DTYPE_BYTES:
        return out
    B, I, O = int(row["batch"]), int(row["input_len"]), int(row["output_len"])
    if isinstance(hardware, HardwareSpec):
        spec = hardware
    elif isinstance(hardware, str):
        spec = by_name(hardware)
    else:
        spec = lookup(row.get("device_name"))
    probe = _probe_for(probes or [], row.get("device_name"))

    step_bytes = decode_bytes_per_step(a, dtype, B, I, O)
    flops = prefill_flops(a, B, I)
    tpot = row.get("tpot_ms", NAN)
    ttft = row.get("ttft_ms", NAN)
    out.update(weight_bytes=float(weight_bytes(a, dtype)), decode_bytes_per_step=step_bytes, prefill_flops=flops)
    if spec is not None:
        out["hw_name"] = spec.name
        out["decode_bound_ms"] = decode_bound_ms(step_bytes, spec.mem_bw_bytes_s)
        out["prefill_bound_ms"] = prefill_bound_ms(flops, spec.matrix_flops(dtype))
    if probe is not None:
        out["decode_bound_probed_ms"] = decode_bound_ms(step_bytes, probe.get("copy_bandwidth_bytes_s"))
        out["prefill_bound_probed_ms"] = prefill_bound_ms(flops, (probe.get("matmul_flops") or {}).get(dtype))
    out["mbu_spec"] = fraction(out["decode_bound_ms"], tpot)
    out["mbu_probed"] = fraction(out["decode_bound_probed_ms"], tpot)
    out["mfu_spec"] = fraction(out["prefill_bound_ms"], ttft)
    out["mfu_probed"] = fraction(out["prefill_bound_probed_ms"], ttft)
    if _known(tpot) and _known(step_bytes):
        out["decode_gb_s"] = step_bytes / (tpot / 1e3) / 1e9
    if _known(ttft):
        out["prefill_tflop_s"] = flops / (ttft / 1e3) / 1e12
    return out


def add_speed_of_light(df, hardware=None, probe=None):
    """A copy of results DataFrame `df` with the speed-of-light columns (SOL_COLUMNS) added.

    hardware: None to match each row's device_name against perfkit.hardware's table, or a HardwareSpec /
    table name to use for every row. probe: None, a probe record, a list of them, a probe JSON file or a
    results directory holding probes/*.json; a probe applies only to rows of the device it ran on.
    """
    import pandas as pd

    probes = load_probe(probe)
    # only what speed_of_light_row reads: a results frame also holds every raw sample, which to_dict would copy
    needed = [c for c in ("model", "dtype", "batch", "input_len", "output_len", "ttft_ms", "tpot_ms", "device_name")
              if c in df.columns]
    cols = [speed_of_light_row(r, hardware, probes) for r in df[needed].to_dict("records")]
    sol = pd.DataFrame(cols, index=df.index, columns=SOL_COLUMNS)
    out = df.drop(columns=[c for c in SOL_COLUMNS if c in df.columns])
    return pd.concat([out, sol], axis=1)
