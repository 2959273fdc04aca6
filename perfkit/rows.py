"""A results row: the one place that says what a row holds, how it is built, and its stored schema.

A row is one measured point (or one that ran out of memory or failed): who and what was measured (its
identity), the metrics of perfkit.metrics, the raw per-repeat samples they came from, and where it came
from (provenance: run, machine, software, commit). Field names carry their units (`ttft_ms`,
`peak_mem_bytes`, `output_tok_s`). `point_key` hashes everything that defines the point, so a re-run of
the same point overwrites it and a changed definition never does.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pyarrow as pa

from perfkit.metrics import energy_columns, point_metrics
from perfkit.workload import Point, System, canonical_dtype

if TYPE_CHECKING:
    from perfkit.measure import PointMeasurement

# The columns every row has, in order: the identity and headline metrics, then what makes it self-describing.
COLUMNS = [
    "run_id", "point_key", "system", "model", "device_name", "dtype", "backend", "attn_implementation",
    "input_len", "output_len", "batch", "status", "error",
    "ttft_ms", "tpot_ms", "e2e_ms", "prefill_tok_s", "output_tok_s", "decode_tok_s", "total_tok_s",
    "peak_mem_bytes", "repeats",
]

_F, _I, _S, _B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
_LIST = pa.list_(pa.float64())

# Every column a row may have, with one fixed type. Every point file is written with all of them (null
# where a row has no value: an oom row has no timings, a CPU row no energy), so all files of a directory
# share one schema and DuckDB's `*.parquet` glob or pyarrow read them together whichever file comes first.
SCHEMA = pa.schema(
    [(c, {"input_len": _I, "output_len": _I, "batch": _I, "peak_mem_bytes": _I, "repeats": _I}.get(
        c, _F if c.endswith(("_ms", "_tok_s")) else _S)) for c in COLUMNS]
    + [
        ("ttft_iqr_ms", _F), ("ttft_p10_ms", _F), ("ttft_p90_ms", _F),
        ("e2e_iqr_ms", _F), ("e2e_p10_ms", _F), ("e2e_p90_ms", _F),
        ("tpot_iqr_ms", _F), ("tpot_p10_ms", _F), ("tpot_p90_ms", _F), ("noisy", _B),
        ("peak_mem_scope", _S), ("warmup_ms", _F), ("setup_ms", _F), ("backend_mode", _S),
        ("sdpa_prefill_backend", _S), ("sdpa_decode_backend", _S), ("generated_tokens", _I),
        ("ttft_ms_samples", _LIST), ("e2e_ms_samples", _LIST), ("decode_step_ms_samples", pa.list_(_LIST)),
        ("energy_j", _F), ("avg_power_w", _F), ("j_per_token", _F), ("energy_j_samples", _LIST),
        ("search_gain", _F), ("search_stop", _S), ("sweep_name", _S), ("derived_from_output_len", _I),
        ("warmup", _I), ("seed", _I), ("checkpoint", _S),
        ("device", _S), ("driver_version", _S), ("cuda_version", _S), ("cudnn_version", _S),
        ("torch_version", _S),
        ("transformers_version", _S), ("git_commit", _S), ("created_utc", _S),
        ("host", _S), ("gpu_index", _I),
        # served systems (perfkit.serving): how the server was asked, what it said of itself, per-request
        # percentiles over every request of every repeat, the client's own lateness, the raw records
        ("endpoint_api", _S), ("served_model", _S), ("prompt_mode", _S), ("server_url", _S),
        ("server_version", _S), ("server_models", _S), ("server_log", _S),
        ("req_ttft_p50_ms", _F), ("req_ttft_p90_ms", _F), ("req_ttft_p99_ms", _F),
        ("req_tpot_p50_ms", _F), ("req_tpot_p90_ms", _F), ("req_tpot_p99_ms", _F),
        ("req_itl_p50_ms", _F), ("req_itl_p90_ms", _F), ("req_itl_p99_ms", _F),
        ("client_lag_p99_ms", _F), ("client_lag_max_ms", _F), ("client_bound", _B), ("requests_json", _S),
        ("system_env", _S),  # a system's own environment (JSON), set in the process that measured it
        # the order of the repeats (perfkit.sweep.interleave): null where one system's grid ran after another's;
        # "interleaved" (this row's repeats alternated with the other systems' rows of the same interleave_id,
        # repeat_slots giving each repeat's place in that shared sequence), "grouped" (the systems could not
        # be held at once: whole points alternated) or "alone" (no other system measured this point with it)
        ("repeat_order", _S), ("interleave_id", _S), ("repeat_slots", pa.list_(_I)), ("order_note", _S),
        # rows imported from another benchmarking tool (perfkit.imports, docs/import.md): the tool, its version
        # and command line ("not recorded" where its file holds none), the file read, what defines the system
        # in the tool (JSON), which figures are the tool's own or left out and why, and `untimed`: "ttft" where
        # the tool timed only whole generations (ttft, tpot, prefill and decode figures null, e2e kept)
        ("source_tool", _S), ("source_version", _S), ("source_command", _S), ("source_file", _S),
        ("source_settings", _S), ("source_note", _S), ("untimed", _S),
    ]
)

# What a point file must hold to be read at all: what identifies the point, its figures and the raw
# samples they come from (perfkit.results checks the figures against the samples).
REQUIRED_COLUMNS = tuple(COLUMNS) + (
    "ttft_iqr_ms", "ttft_p10_ms", "ttft_p90_ms", "e2e_iqr_ms", "e2e_p10_ms", "e2e_p90_ms",
    "tpot_iqr_ms", "tpot_p10_ms", "tpot_p90_ms", "noisy", "ttft_ms_samples", "e2e_ms_samples",
    "decode_step_ms_samples", "derived_from_output_len", "warmup", "seed")
# Every other column (provenance, annotations, columns added to SCHEMA after point files were first
# written: host, gpu_index, sdpa_*_backend, cudnn_version, ...) reads as null in a file without it, so a
# results directory written by an earlier version of perfkit still reads whole and is never re-measured.
LATER_COLUMNS = tuple(c for c in SCHEMA.names if c not in REQUIRED_COLUMNS)


def point_fields(system: System, model: str, input_len: int, output_len: int, batch: int, warmup: int,
                 repeats: int, seed: int, derived_from_output_len: int | None = None,
                 checkpoint: str | None = None) -> dict:
    """Everything that defines a point, as `point_key` hashes it. Its fields and their names are the keys
    of every stored point: a change here re-measures every results directory.

    `checkpoint` is a checkpoint directory's fingerprint (perfkit.registry.checkpoint_fingerprint): a model
    given by its path is defined by what the path holds, so a replaced config or weights give new keys. A
    registry model has none, and its fields are exactly those of its points stored before there were
    fingerprints."""
    fields = {"system": system.label, "backend": system.backend, "dtype": system.dtype, "device": system.device,
              "attn_implementation": system.attn_implementation, "model": model, "input_len": input_len,
              "output_len": output_len, "batch": batch, "warmup": warmup, "repeats": repeats, "seed": seed,
              "derived_from_output_len": derived_from_output_len}
    if checkpoint is not None:
        fields["checkpoint"] = checkpoint
    if system.endpoint is not None:  # how its requests are made and which server answers them
        fields["endpoint"] = system.endpoint.key()
    if system.env:  # the environment its process ran in (an ISA limit, a thread count) defines it too
        fields["env"] = [list(kv) for kv in system.env]
    return fields


def point_key(fields: dict) -> str:
    """A stable key for everything that defines a point (sorted JSON, hashed)."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def schema_for(row: dict) -> pa.Schema:
    """SCHEMA, plus any column a row adds beyond it (typed from its value)."""
    fields = list(SCHEMA)
    for name, value in row.items():
        if name in SCHEMA.names:
            continue
        if isinstance(value, bool):
            fields.append(pa.field(name, _B))
        elif isinstance(value, int):
            fields.append(pa.field(name, _I))
        elif isinstance(value, float) or value is None:
            fields.append(pa.field(name, _F))
        elif isinstance(value, str):
            fields.append(pa.field(name, _S))
        else:
            fields.append(pa.field(name, pa.infer_type([value])))
    return pa.schema(fields)


def identity(system: System, point: Point, status: str, error: str | None) -> dict:
    """The columns that say which point a row is, and how it ended."""
    return {"system": system.label, "model": point.model, "dtype": canonical_dtype(system.dtype),
            "backend": system.backend, "attn_implementation": system.attn_implementation,
            "input_len": point.input_len, "output_len": point.output_len, "batch": point.batch,
            "status": status, "error": error}


def to_row(m: PointMeasurement) -> dict:
    """One results row (without provenance): identity, metrics, raw samples."""
    p = m.point
    row = identity(m.system, p, "ok", None)
    row.update(point_metrics(p.batch, p.input_len, p.output_len, m.ttft_s, m.e2e_s))
    row.update(
        {
            "peak_mem_bytes": m.peak_mem_bytes,
            "peak_mem_scope": m.peak_mem_scope,
            "warmup_ms": m.warmup_s * 1e3,
            "setup_ms": m.setup_s * 1e3,
            "backend_mode": m.backend_mode,
            "sdpa_prefill_backend": m.sdpa_prefill_backend,
            "sdpa_decode_backend": m.sdpa_decode_backend,
            "generated_tokens": int(m.tokens.numel()),
            "ttft_ms_samples": [t * 1e3 for t in m.ttft_s],
            "e2e_ms_samples": [t * 1e3 for t in m.e2e_s],
            "decode_step_ms_samples": [[t * 1e3 for t in steps] for steps in m.step_s],
        }
    )
    row.update(energy_columns(m.energy_j or [], m.power_w or [], int(m.tokens.numel())))
    return row


def failed_row(system: System, point: Point, status: str, error: str) -> dict:
    """The row of a point that produced no timings: status "oom" or "error", with the message."""
    row = identity(system, point, status, error)
    row.update(point_metrics(point.batch, point.input_len, point.output_len, [], []))
    row.update({"repeats": 0, "peak_mem_bytes": None, "noisy": False})
    return row


def with_provenance(row: dict, run_id: str, env: dict, key_fields: dict) -> dict:
    """Complete a row with its run, its machine and software, and the key of what defines it."""
    from perfkit.provenance import utc_now

    out = dict(row)
    out["run_id"] = run_id
    out["point_key"] = point_key(key_fields)
    # What defines the point and is not already in the row (how it was measured) travels with it too.
    for field in ("warmup", "seed", "derived_from_output_len", "checkpoint"):
        if field in key_fields:
            out[field] = key_fields[field]
    for field in ("device", "device_name", "driver_version", "cuda_version", "cudnn_version", "torch_version",
                  "transformers_version", "git_commit", "gpu_index", "system_env"):
        out[field] = env.get(field)
    out["host"] = env.get("hostname")  # where it ran: with gpu_index, which of a node's or cluster's devices
    out["created_utc"] = utc_now()
    return out
