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
import json
import os
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from perfkit.rows import COLUMNS, schema_for

POINTS = "points"
RUNS = "runs"

def atomic_write(path: str, write) -> None:
    """Write `path` through a temporary file, fsync and rename: a crash leaves the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
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


def check_out_dir(out_dir: str, flag: str = "--out", what: str = "a results directory") -> None:
    """Refuse, before anything is built or measured, a results directory that could not be written.

    It may not exist yet; then its nearest existing ancestor must be a writable directory. Nothing is
    created here (bad input writes nothing). Raises UsageError.
    """
    from perfkit.errors import UsageError

    path = os.path.abspath(out_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {out_dir!r} is a file, expected {what}")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {out_dir!r} lies under the file {parent!r}, expected {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out_dir!r}: {parent!r} is not writable, expected {what} that can be written")


def open_results(path: str | os.PathLike, what: str = "results directory") -> pd.DataFrame:
    """Every point of a results directory that is to be read (summary, compare, reports).

    UsageError, naming `what`, when the path does not exist, is a file, or holds no point."""
    from perfkit.errors import UsageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist: expected the --out of a sweep or run")
    if not os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a file, expected a results directory (points/*.parquet)")
    df = load_results(path)
    if df.empty:
        raise UsageError(f"no results in {what} {path!r} (expected points/*.parquet written by perfkit run or sweep)")
    return df


def select_system(df: pd.DataFrame, system: str | None, where: str, side: str = "") -> pd.DataFrame:
    """The rows of one system label; with no label, the only system there is (several: UsageError)."""
    from perfkit.errors import UsageError

    labels = sorted(df["system"].dropna().unique())
    who = f"{side} " if side else ""
    if system:
        if system not in labels:
            raise UsageError(f"{who}system {system!r} is not in {where}: found {', '.join(labels) or 'no system'}")
        return df[df["system"] == system].reset_index(drop=True)
    return df


def point_path(out_dir: str, key: str) -> str:
    return os.path.join(out_dir, POINTS, f"{key}.parquet")


def write_point(out_dir: str, row: dict) -> str:
    """Persist one finished row atomically under its point_key; returns the file's path."""
    schema = schema_for(row)
    ordered = {c: row.get(c) for c in schema.names}
    for field in schema:
        # A row that went through pandas carries NaN for a missing integer (or string): store it as null.
        value = ordered[field.name]
        if isinstance(value, float) and value != value and not pa.types.is_floating(field.type):
            ordered[field.name] = None
    table = pa.Table.from_pylist([ordered], schema=schema)
    path = point_path(out_dir, ordered["point_key"])
    atomic_write(path, lambda f: pq.write_table(table, f))
    return path


def write_run(out_dir: str, run_id: str, provenance: dict) -> str:
    path = os.path.join(out_dir, RUNS, f"{run_id}.json")
    blob = json.dumps(provenance, indent=2, sort_keys=True, default=str).encode()
    atomic_write(path, lambda f: f.write(blob))
    return path


def done_keys(out_dir: str) -> set[str]:
    """Keys of the points already persisted in `out_dir`."""
    return {os.path.basename(p)[: -len(".parquet")] for p in glob.glob(os.path.join(out_dir, POINTS, "*.parquet"))}


def devices_by_system(out_dir: str) -> dict[str, set[str]]:
    """The device names each system label of `out_dir` was measured on (two columns read per file)."""
    seen: dict[str, set[str]] = {}
    for f in glob.glob(os.path.join(out_dir, POINTS, "*.parquet")):
        for row in pq.read_table(f, columns=["system", "device_name"]).to_pylist():
            if row["device_name"] is not None:
                seen.setdefault(row["system"], set()).add(row["device_name"])
    return seen


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
