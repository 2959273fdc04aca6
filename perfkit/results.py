"""The results store: one Parquet file per finished point, written atomically, plus run provenance.

Layout of a results directory:

    DIR/points/<point_key>.parquet   one row: identity, metrics, provenance and the raw samples
    DIR/runs/<run_id>.json           the full provenance of each run that wrote here

A point is written to a temporary file, flushed to disk and renamed into place, so a crash at any
moment leaves either the whole point or nothing. `load_results(DIR)` returns every point as one pandas
DataFrame; DuckDB reads the same files directly: SELECT * FROM 'DIR/points/*.parquet'.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

POINTS = "points"
RUNS = "runs"

# The columns every row has, in order; the contract plus what makes a row self-describing.
COLUMNS = [
    "run_id", "point_key", "system", "model", "device_name", "dtype", "backend", "attn_implementation",
    "input_len", "output_len", "batch", "status", "error",
    "ttft_ms", "tpot_ms", "e2e_ms", "prefill_tok_s", "output_tok_s", "decode_tok_s", "total_tok_s",
    "peak_mem_bytes", "repeats",
]

# Types of columns that may be null in some rows (an oom row has no timings), fixed so that every
# file of a directory has the same schema and DuckDB/pyarrow can read them together.
_TYPES = {
    "run_id": pa.string(), "point_key": pa.string(), "system": pa.string(), "model": pa.string(),
    "device_name": pa.string(), "dtype": pa.string(), "backend": pa.string(), "attn_implementation": pa.string(),
    "input_len": pa.int64(), "output_len": pa.int64(), "batch": pa.int64(), "status": pa.string(),
    "error": pa.string(), "repeats": pa.int64(), "peak_mem_bytes": pa.int64(), "warmup": pa.int64(),
    "peak_mem_scope": pa.string(), "generated_tokens": pa.int64(), "noisy": pa.bool_(),
    "ttft_ms_samples": pa.list_(pa.float64()), "e2e_ms_samples": pa.list_(pa.float64()),
    "decode_step_ms_samples": pa.list_(pa.list_(pa.float64())),
    "git_commit": pa.string(), "torch_version": pa.string(), "transformers_version": pa.string(),
    "driver_version": pa.string(), "cuda_version": pa.string(), "created_utc": pa.string(),
    "device": pa.string(), "seed": pa.int64(), "derived_from_output_len": pa.int64(),
}


def point_key(fields: dict) -> str:
    """A stable key for everything that defines a point (sorted JSON, hashed)."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _schema_for(row: dict) -> pa.Schema:
    fields = []
    for name, value in row.items():
        if name in _TYPES:
            fields.append(pa.field(name, _TYPES[name]))
        elif isinstance(value, bool):
            fields.append(pa.field(name, pa.bool_()))
        elif isinstance(value, int):
            fields.append(pa.field(name, pa.int64()))
        elif isinstance(value, float) or value is None:
            fields.append(pa.field(name, pa.float64()))
        elif isinstance(value, str):
            fields.append(pa.field(name, pa.string()))
        else:
            fields.append(pa.field(name, pa.infer_type([value])))
    return pa.schema(fields)


def point_path(out_dir: str, key: str) -> str:
    return os.path.join(out_dir, POINTS, f"{key}.parquet")


def write_point(out_dir: str, row: dict) -> str:
    """Persist one finished row atomically under its point_key; returns the file's path."""
    ordered = {c: row.get(c) for c in COLUMNS}
    ordered.update({k: v for k, v in row.items() if k not in ordered})
    table = pa.Table.from_pylist([ordered], schema=_schema_for(ordered))
    path = point_path(out_dir, ordered["point_key"])
    _atomic_write(path, lambda f: pq.write_table(table, f))
    return path


def write_run(out_dir: str, run_id: str, provenance: dict) -> str:
    path = os.path.join(out_dir, RUNS, f"{run_id}.json")
    blob = json.dumps(provenance, indent=2, sort_keys=True, default=str).encode()
    _atomic_write(path, lambda f: f.write(blob))
    return path


def done_keys(out_dir: str) -> set[str]:
    """Keys of the points already persisted in `out_dir`."""
    return {os.path.basename(p)[: -len(".parquet")] for p in glob.glob(os.path.join(out_dir, POINTS, "*.parquet"))}


def _point_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    files = sorted(glob.glob(os.path.join(path, POINTS, "*.parquet")))
    if not files:  # a directory of directories: every results directory below it
        files = sorted(glob.glob(os.path.join(path, "**", POINTS, "*.parquet"), recursive=True))
    return files


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Every point under `path` (a results directory, a folder of them, or one .parquet) as a DataFrame."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no results at {path!r}")
    files = _point_files(path)
    if not files:
        return pd.DataFrame(columns=COLUMNS)
    tables = [pq.read_table(f) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive")
    df = table.to_pandas()
    sort = [c for c in ("created_utc", "system", "model", "input_len", "output_len", "batch") if c in df]
    return df.sort_values(sort, kind="stable").reset_index(drop=True)


def load_runs(path: str | os.PathLike) -> list[dict]:
    """The provenance records of every run under `path`."""
    path = os.fspath(path)
    files = sorted(glob.glob(os.path.join(path, RUNS, "*.json"))) or sorted(
        glob.glob(os.path.join(path, "**", RUNS, "*.json"), recursive=True))
    runs = []
    for f in files:
        with open(f) as fh:
            runs.append(json.load(fh))
    return runs
