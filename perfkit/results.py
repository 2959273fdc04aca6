"""The results store: one Parquet file per finished point, written atomically, plus run provenance.

    DIR/points/<point_key>.parquet   one row: identity, metrics, provenance and the raw samples
    DIR/runs/<run_id>.json           the full provenance of each run that wrote here

Every point file is checked when it is read (`read_point`); a file that fails is left out with a one-line
reason, never read as a figure. `lock(DIR)` is the sweep's exclusive lock on a directory. See docs/results.md.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import math
import os
import stat
import statistics
import sys
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from perfkit.errors import UnreadableFile, WriteError, nesting_refused, one_line, printable, read_regular
from perfkit.rows import COLUMNS, LATER_COLUMNS, SCHEMA, schema_for

POINTS = "points"
RUNS = "runs"
STALE = "stale"  # DIR/stale/<timestamp>/: points a sweep moved aside (perfkit sweep --discard-stale)
LOCK = ".perfkit.lock"  # the sweep's lock file (see `lock`)
TMP_PREFIX = ".tmp-"  # atomic_write's temporary files: .tmp-<pid>-<random>
STATUSES = ("ok", "oom", "error")
# The largest files a reader reads (errors.read_regular): far beyond any perfkit writes (a point of 1,000
# repeats of 8,192 decode steps is ~70 MB; a run record a few kB), short of a read that exhausts memory.
MAX_POINT_BYTES = 1 << 30
MAX_RECORD_BYTES = 16 << 20  # a JSON record: runs/*.json, probes/*.json

def atomic_write(path: str, write) -> None:
    """Write `path` through a temporary file, fsync and rename: a crash leaves the old file or the new one.

    A write the file system refuses (a full disk, the file size limit) removes the temporary file and
    raises errors.WriteError naming `path`, which the command line shows in one line."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        # The writer's pid in the name lets a sweep tell an interrupted write from one in flight.
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(directory)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from None
        raise


def fsync_dir(path: str) -> None:
    """Make a rename or new file in directory `path` durable: until its entry is synced, a crash may lose it."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


NAME_MAX_BYTES = 255  # one path component, on every file system perfkit writes to
PATH_MAX_BYTES = 4096


def check_out_dir(out_dir: str, flag: str = "--out", what: str = "a results directory",
                  subdirs: tuple[str, ...] = (POINTS, RUNS), files: tuple[str, ...] = (),
                  writable: bool = True) -> None:
    """Refuse, before anything is built or measured, an output directory that could not be written.

    Refused, each in one line: an empty name or one with a NUL byte, a name too long for the file system;
    an existing file (or a broken link) where the directory goes, or a path below a file; a directory whose
    `subdirs` entry is a file, or whose `files` entry is a directory; and a directory (or, where it does
    not exist yet, its nearest existing ancestor) in which no file can be created: a read-only or pseudo
    file system (/proc, /sys), no permission. That last is probed for real, a temporary file created and
    deleted at once, because os.access says yes to root on a read-only file system and on /proc. Nothing
    else is created here (bad input writes nothing). `writable=False` (a plan, which only reads) skips that
    last check. Raises UsageError.
    """
    from perfkit.errors import UsageError, shown

    def refuse(problem: str, expected: str = what):
        raise UsageError(f"{flag} {shown(out_dir, 200)} {problem}, expected {expected}")

    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        refuse("is empty")
    out_dir = os.fspath(out_dir)
    if "\0" in out_dir:
        refuse("contains a NUL byte")
    path = os.path.abspath(out_dir)
    if len(os.fsencode(path)) > PATH_MAX_BYTES or any(len(os.fsencode(p)) > NAME_MAX_BYTES for p in path.split(os.sep)):
        refuse("is too long", f"{what} with names of at most {NAME_MAX_BYTES} bytes")
    if os.path.lexists(path) and not os.path.exists(path):
        refuse("is a broken link")
    if os.path.exists(path) and not os.path.isdir(path):
        refuse("is a file")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        refuse(f"lies under the file {shown(parent, 200)}")
    probes = [parent]
    if parent == path:
        for name in subdirs:
            sub = os.path.join(path, name)
            if os.path.lexists(sub) and not os.path.isdir(sub):
                refuse(f"holds a file {name!r} where its {name}/ directory goes")
            if os.path.isdir(sub):
                probes.append(sub)
        for name in files:
            if os.path.isdir(os.path.join(path, name)):
                refuse(f"holds a directory {name!r} where the file {name} goes")
    for directory in probes if writable else ():
        reason = _cannot_create_in(directory)
        if reason:
            refuse(f"cannot be written: no file can be created in {shown(directory, 200)} ({reason})",
                   f"{what} on a writable file system")


def _cannot_create_in(directory: str) -> str | None:
    """Why no file can be created in `directory` (an OS error's words), or None where one can."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".perfkit-probe-", dir=directory)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(probe)
    return None


def check_out_file(out_file: str, flag: str = "--out", what: str = "a file") -> None:
    """Refuse, before any work, a file path that could not be written: an existing directory (or broken
    link) at the path, and `check_out_dir`'s rules for the rest (a NUL byte, a path under a file, a
    directory where no file can be created). An existing file is fine: it is replaced. Raises UsageError."""
    from perfkit.errors import UsageError, shown

    if isinstance(out_file, (str, os.PathLike)) and os.fspath(out_file) and "\0" not in os.fspath(out_file):
        out_file = os.fspath(out_file)
        if os.path.isdir(out_file) or out_file.endswith(os.sep):
            raise UsageError(f"{flag} {shown(out_file, 200)} is a directory, expected {what}")
        if os.path.isfile(out_file):  # replaced by the write: its directory must take a new file
            check_out_dir(os.path.dirname(os.path.abspath(out_file)), flag, what, subdirs=())
            return
    # not there yet: the path as a directory to be made obeys the same rules as its file would
    check_out_dir(out_file, flag, what, subdirs=())


def open_results(path: str | os.PathLike, what: str = "results directory", system: str | None = None,
                 where: str | None = None, side: str = "") -> pd.DataFrame:
    """Every point of a results directory that is to be read (summary, compare, reports), or of one
    system label of it (select_system: `where` names the directory in its message, `side` the side).

    Names each damaged point file or run record on stderr, one line each (they are left out). UsageError,
    naming `what`, when the path does not exist, is a file, holds no readable point, or when a label that
    is read holds several definitions (check_definitions): a mixed label elsewhere in the directory does
    not stop another label from being read."""
    from perfkit.errors import UsageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist: expected the --out of a sweep or run")
    if not os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a file, expected a results directory (points/*.parquet)")
    df = load_results(path)
    skipped = df.attrs.get("skipped_files", [])
    warn_skipped(skipped + load_runs(path).skipped)
    if df.empty:
        damaged = f"; {len(skipped)} damaged point files skipped" if skipped else ""
        raise UsageError(f"no results in {what} {path!r} (expected points/*.parquet written by perfkit run or "
                         f"sweep{damaged})")
    if system:
        attrs = dict(df.attrs)
        df = select_system(df, system, where or path, side)
        df.attrs.update(attrs)
    check_definitions(df, f"{what} {path!r}")
    return df


# The files warn_skipped has named in this process (a command reads a directory more than once, and says
# each once); perfkit.cli.main clears it for each command.
WARNED: set[tuple[str, str]] = set()


def warn_skipped(skipped, file=None) -> None:
    """One stderr line per file left out: `perfkit: warning: skipped PATH: REASON` (once per process)."""
    for path, reason in skipped:
        if (path, reason) not in WARNED:
            WARNED.add((path, reason))
            print(printable(f"perfkit: warning: skipped {path}: {reason}"), file=file or sys.stderr, flush=True)


# What defines a system label in a results directory: one value each per label. `repeats` is read from ok
# rows only (a failed row has 0); device_name is the machine's, the rest the system's and the sweep's.
DEFINITION = ("dtype", "backend", "attn_implementation", "device_name", "warmup", "repeats", "seed")


def definitions(df: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """Per system label, each DEFINITION column holding more than one value: {label: {column: values}}; and
    each checkpoint directory measured under the label holding more than one fingerprint (its config or
    weights replaced between two runs): {label: {"checkpoint of PATH": fingerprints}}."""
    out: dict[str, dict[str, list[str]]] = {}
    if df.empty or "system" not in df:
        return out
    for label, g in df.groupby("system", sort=True):
        for col in DEFINITION:
            if col not in g:
                continue
            rows = g[g["status"] == "ok"] if col == "repeats" and "status" in g else g
            values = sorted({shown_value(v) for v in rows[col] if not is_missing(v)})
            if len(values) > 1:
                out.setdefault(label, {})[col] = values
        if "checkpoint" in g and "model" in g:
            for model, of_model in g.groupby("model", sort=True):
                values = sorted({str(v) for v in of_model["checkpoint"] if not is_missing(v)})
                if len(values) > 1:
                    out.setdefault(label, {})[f"checkpoint of {model}"] = values
    return out


def check_definitions(df: pd.DataFrame, where: str) -> None:
    """UsageError where one system label holds several definitions (a changed params file re-run into the
    same directory): its figures would mix them."""
    from perfkit.errors import UsageError

    mixed = definitions(df)
    if not mixed:
        return
    label, cols = next(iter(mixed.items()))
    what = "; ".join(f"{col} {', '.join(values)}" for col, values in cols.items())
    more = f" (and {len(mixed) - 1} more system labels)" if len(mixed) > 1 else ""
    raise UsageError(f"system {label!r} in {where} holds several definitions ({what}){more}: expected one "
                     "definition per label; measure a changed system under another label or into another --out "
                     "(perfkit sweep --discard-stale moves the points its params file does not define to "
                     f"DIR/{STALE}/)")


def is_missing(value) -> bool:
    """None, NaN or pd.NA: a cell that holds no value (how a null reads back depends on its column's type)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def shown_value(value) -> str:
    """A definition value as the messages show it (3.0 read back through pandas is 3)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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
    atomic_write(path, lambda f: pq.write_table(table, f, write_page_checksum=True))
    return path


def write_run(out_dir: str, run_id: str, provenance: dict) -> str:
    path = os.path.join(out_dir, RUNS, f"{run_id}.json")
    blob = json.dumps(provenance, indent=2, sort_keys=True, default=str).encode()
    atomic_write(path, lambda f: f.write(blob))
    return path


# ---- reading a point file: every file checked ------------------------------------------------------

class DamagedFile(Exception):
    """A file of a results directory that cannot be read as what it claims to be; str() is the reason."""


# Columns whose stored value must follow from the raw samples (perfkit.metrics.point_metrics), and the
# relative tolerance: a row round-trips exactly, so this only absorbs the ms <-> s conversion.
_DERIVED_TOLERANCE = 1e-6
_SCHEMA_TYPES = {field.name: field.type for field in SCHEMA}
_TIMINGS = ("ttft_ms", "e2e_ms", "tpot_ms", "prefill_tok_s", "output_tok_s", "decode_tok_s", "total_tok_s")


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a stored column type reads as SCHEMA's without changing a value (null reads as anything)."""
    t = pa.types
    if actual == expected or t.is_null(actual):
        return True
    if t.is_integer(expected):
        return t.is_integer(actual)
    if t.is_floating(expected):
        return t.is_floating(actual) or t.is_integer(actual)
    if t.is_string(expected) or t.is_large_string(expected):
        return t.is_string(actual) or t.is_large_string(actual)
    if t.is_list(expected) or t.is_large_list(expected):
        return (t.is_list(actual) or t.is_large_list(actual)) and _compatible(actual.value_type,
                                                                            expected.value_type)
    return False


def _conform(table: pa.Table) -> pa.Table:
    """`table` with every SCHEMA column in SCHEMA's type (extra columns kept); DamagedFile where it cannot."""
    if table.schema.equals(SCHEMA):  # as write_point writes a row with no extra column
        return table
    fields = []
    for field in table.schema:
        want = _SCHEMA_TYPES.get(field.name, field.type)
        if not _compatible(field.type, want):
            raise DamagedFile(f"column {field.name} is {field.type}, expected {want}")
        fields.append(pa.field(field.name, want))
    present = set(table.schema.names)
    for name in LATER_COLUMNS:  # a file written before the column existed: it reads as null
        if name not in present:
            table = table.append_column(pa.field(name, _SCHEMA_TYPES[name]),
                                        pa.nulls(table.num_rows, _SCHEMA_TYPES[name]))
            fields.append(pa.field(name, _SCHEMA_TYPES[name]))
            present.add(name)
    missing = [c for c in SCHEMA.names if c not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DamagedFile(f"column {missing[0]} is missing{more}, expected every column of the results schema")
    target = pa.schema(fields)
    if table.schema.equals(target):  # as write_point writes it: nothing to convert
        return table
    try:
        return table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DamagedFile(f"a column does not convert to the results schema ({one_line(exc, 160)})") from None


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _same(stored, expected: float) -> bool:
    stored = _number(stored)
    if math.isnan(expected) or math.isnan(stored):
        return math.isnan(expected) and math.isnan(stored)
    return math.isclose(stored, expected, rel_tol=_DERIVED_TOLERANCE, abs_tol=1e-12)


def _bad_samples(name: str, values) -> str | None:
    flat = [v for v in values for v in (v if isinstance(v, list) else [v])]
    if any(v is None or not math.isfinite(v) for v in flat):
        return f"{name} holds a non-finite timing, expected finite times"
    if any(v < 0 for v in flat):
        return f"{name} holds a negative timing, expected times >= 0"
    return None


def check_row(row: dict, key: str | None = None) -> str | None:
    """Why a stored row cannot be used (one line), or None. `key` is its file name's key."""
    from perfkit.metrics import point_metrics

    if key is not None and row.get("point_key") != key:
        return f"its point_key {row.get('point_key')!r} differs from its file name {key!r}"
    for col in ("system", "model"):
        if not isinstance(row.get(col), str) or not row[col]:
            return f"{col} is {row.get(col)!r}, expected a name"
    for col in ("input_len", "output_len", "batch"):
        if not isinstance(row.get(col), int) or row[col] < 1:
            return f"{col} is {row.get(col)!r}, expected a positive integer"
    status = row.get("status")
    if status not in STATUSES:
        return f"status {status!r}, expected ok, oom or error"
    if status != "ok":
        timed = [c for c in _TIMINGS if not math.isnan(_number(row.get(c)))]
        if timed:
            return f"status {status} with a figure ({timed[0]} {row[timed[0]]:g}), expected no timings"
        return None
    if row.get("untimed") is not None:
        return _untimed_problem(row)
    ttft, e2e = row.get("ttft_ms_samples"), row.get("e2e_ms_samples")
    if not ttft or not e2e:
        return "status ok without raw samples (ttft_ms_samples, e2e_ms_samples), expected one per repeat"
    if len(ttft) != len(e2e):
        return f"{len(ttft)} ttft samples and {len(e2e)} e2e samples, expected one of each per repeat"
    for name in ("ttft_ms_samples", "e2e_ms_samples", "decode_step_ms_samples", "energy_j_samples"):
        bad = _bad_samples(name, row.get(name) or [])
        if bad:
            return bad
    expected = point_metrics(row["batch"], row["input_len"], row["output_len"], [t / 1e3 for t in ttft],
                             [t / 1e3 for t in e2e])
    if row.get("repeats") != expected["repeats"]:
        return f"repeats {row.get('repeats')!r} with {expected['repeats']} raw samples, expected them equal"
    for col, value in expected.items():
        if col in ("repeats", "noisy"):
            continue
        if not _same(row.get(col), value):
            return (f"{col} {_number(row.get(col)):.6g} does not follow from its raw samples "
                    f"({value:.6g} expected)")
    energy = row.get("energy_j_samples") or []
    if energy and not _same(row.get("energy_j"), statistics.median(energy)):
        return f"energy_j {_number(row.get('energy_j')):.6g} is not the median of its energy_j_samples"
    return _order_problem(row, len(ttft))


# The figures an imported row whose tool timed whole generations only (`untimed` "ttft": llama-bench's tg and
# pg tests, perfkit.imports) cannot have: each needs a ttft per repeat.
NEEDS_TTFT = ("ttft_ms", "ttft_iqr_ms", "ttft_p10_ms", "ttft_p90_ms", "tpot_ms", "tpot_iqr_ms", "tpot_p10_ms",
              "tpot_p90_ms", "prefill_tok_s", "decode_tok_s")


def _untimed_problem(row: dict) -> str | None:
    """An ok row imported from a tool that timed no first token: its e2e samples and the figures they give
    must agree, and every figure that needs a ttft must be null (never a stand-in)."""
    from perfkit.metrics import point_metrics

    if row.get("untimed") != "ttft" or not row.get("source_tool"):
        return f"untimed {row.get('untimed')!r}, expected 'ttft' on a row imported from another tool, or none"
    e2e = row.get("e2e_ms_samples")
    if row.get("ttft_ms_samples") or not e2e:
        return "untimed ttft with ttft samples or without e2e samples, expected e2e samples alone"
    for name in ("e2e_ms_samples", "decode_step_ms_samples"):
        bad = _bad_samples(name, row.get(name) or [])
        if bad:
            return bad
    s = [t / 1e3 for t in e2e]
    expected = point_metrics(row["batch"], row["input_len"], row["output_len"], s, s)
    if row.get("repeats") != expected["repeats"]:
        return f"repeats {row.get('repeats')!r} with {expected['repeats']} raw samples, expected them equal"
    for col in ("e2e_ms", "e2e_iqr_ms", "e2e_p10_ms", "e2e_p90_ms", "output_tok_s", "total_tok_s"):
        if not _same(row.get(col), expected[col]):
            return (f"{col} {_number(row.get(col)):.6g} does not follow from its raw samples "
                    f"({expected[col]:.6g} expected)")
    timed = [c for c in NEEDS_TTFT if not math.isnan(_number(row.get(c)))]
    if timed:
        return f"untimed ttft with a figure {timed[0]}, expected none of the figures that need a ttft"
    return _order_problem(row, len(e2e))


_REPEAT_ORDERS = (None, "interleaved", "grouped", "alone")


def _order_problem(row: dict, repeats: int) -> str | None:
    """An interleaved sweep's order fields (perfkit.sweep.interleave), where a row has them: one slot per
    repeat, ascending and distinct, and an interleave_id wherever the repeats were interleaved."""
    order, slots = row.get("repeat_order"), row.get("repeat_slots")
    if order not in _REPEAT_ORDERS:
        return f"repeat_order {order!r}, expected interleaved, grouped, alone or none"
    if slots is None:
        return "repeat_order without repeat_slots, expected one slot per repeat" if order else None
    slots = list(slots)
    if len(slots) != repeats or any(b <= a for a, b in zip(slots, slots[1:])) or (slots and slots[0] < 0):
        return f"repeat_slots {slots[:8]!r} for {repeats} repeats, expected as many ascending, distinct slots"
    if order == "interleaved" and not row.get("interleave_id"):
        return "repeat_order interleaved without an interleave_id, expected the id its pair shares"
    return None


def read_point(path: str) -> tuple[pa.Table, dict]:
    """One point file, checked: (its one-row table in the results schema, that row as a dict).

    Raises DamagedFile with a one-line reason where the file is not readable Parquet (empty, truncated,
    damaged: page checksums are verified where written), does not hold exactly one row, lacks a column of
    rows.SCHEMA or holds one of another type, has a point_key other than its file name, an unknown status,
    or figures that do not follow from its raw samples (check_row); and where it is not a regular file of
    at most MAX_POINT_BYTES (a FIFO, a link to a device: errors.read_regular).
    """
    try:
        blob = read_regular(path, "a Parquet point file", MAX_POINT_BYTES)
    except UnreadableFile as exc:
        raise DamagedFile(str(exc)) from None
    if not blob:
        raise DamagedFile("empty file, expected a Parquet file with one row")
    try:
        table = pq.ParquetFile(pa.BufferReader(blob), page_checksum_verification=True).read()
        row_count = table.num_rows
    except Exception as exc:  # noqa: BLE001 - whatever pyarrow raises on a damaged file, it is damage
        raise DamagedFile(f"not readable as Parquet ({one_line(exc, 160)})") from None
    if row_count != 1:
        raise DamagedFile(f"holds {row_count} rows, expected exactly one")
    table = _conform(table)
    try:
        row = table.to_pylist()[0]
    except Exception as exc:  # noqa: BLE001 - a value pyarrow cannot decode
        raise DamagedFile(f"not readable as Parquet ({one_line(exc, 160)})") from None
    name = os.path.basename(path)
    reason = check_row(row, name[: -len(".parquet")] if name.endswith(".parquet") else name)
    if reason:
        raise DamagedFile(reason)
    return table, row


class Scan:
    """The point files of one results directory (or a folder of them), read and checked: `table` holds every
    file that passed, one row each, in `keys` order (the row's point_key; the file's path where two
    directories of a folder hold the same point); `paths` maps each key to its file, `skipped` lists
    (path, reason) of the files left out. `rows` are the same rows as dicts, made when first asked for."""

    def __init__(self, table: pa.Table | None, keys: list[str], paths: dict[str, str], skipped: list):
        self.table, self.keys, self.paths, self.skipped = table, keys, paths, skipped

    @functools.cached_property
    def rows(self) -> dict[str, dict]:
        return dict(zip(self.keys, self.table.to_pylist())) if self.table is not None else {}


def _scan_files(files: list[str], update_copy: bool = True) -> Scan:
    """Read and check `files`; those of a results directory's points/ through its compacted copy
    (perfkit.compacted): unchanged files come from it, the rest are read, and (`update_copy`) the copy is
    brought up to date."""
    import perfkit.compacted as compacted

    by_dir: dict[str, list[str]] = {}
    for f in files:
        folder = os.path.dirname(f)
        by_dir.setdefault(os.path.dirname(folder) if os.path.basename(folder) == POINTS else "", []).append(f)
    parts, keys, paths, skipped = [], [], {}, []
    for out_dir, group in by_dir.items():
        cached, index = compacted.load(out_dir) if out_dir else (None, {})
        take, fresh, kept_files, identities, changed = [], [], [], [], not out_dir or len(index) != len(group)
        for f in group:
            try:
                ident = compacted.identity(os.stat(f))
            except OSError as exc:
                skipped.append((f, f"not readable ({one_line(exc, 160)})"))
                changed = True
                continue
            entry = index.get(os.path.basename(f))
            if entry is not None and entry[0] == ident:
                take.append(entry[1])
                row_files = ("cached", f)
            else:
                changed = True
                try:
                    table, _ = read_point(f)
                except DamagedFile as exc:
                    skipped.append((f, str(exc)))
                    continue
                fresh.append(table)
                row_files = ("fresh", f)
            kept_files.append(row_files)
            identities.append(ident)
        tables = ([cached.take(take)] if take else []) + fresh
        if not tables:
            if out_dir and changed and index and update_copy:
                compacted.store(out_dir, _empty_like(cached), [], [], atomic_write, TMP_PREFIX)
            continue
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        # the rows are in cached-then-fresh order: the files and their identities follow the same order
        order = [i for i, (kind, _) in enumerate(kept_files) if kind == "cached"] + \
                [i for i, (kind, _) in enumerate(kept_files) if kind == "fresh"]
        ordered_files = [kept_files[i][1] for i in order]
        if out_dir and changed and update_copy:
            compacted.store(out_dir, table, [os.path.basename(f) for f in ordered_files],
                            [identities[i] for i in order], atomic_write, TMP_PREFIX)
        parts.append(table)
        for key, f in zip(table.column("point_key").to_pylist(), ordered_files):
            if key in paths:  # the same point in two results directories of a folder: both are read
                key = f
            keys.append(key)
            paths[key] = f
    table = None
    if parts:
        table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    return Scan(table, keys, paths, skipped)


def _empty_like(table: pa.Table | None) -> pa.Table:
    return (table if table is not None else SCHEMA.empty_table()).slice(0, 0)


def scan_points(out_dir: str, update_copy: bool = True) -> Scan:
    """Every point file of one results directory (DIR/points/*.parquet), checked by read_point. A sweep
    reads with `update_copy` False: a sweep that is refused writes nothing."""
    return _scan_files(sorted(glob.glob(os.path.join(out_dir, POINTS, "*.parquet"))), update_copy)


def _point_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    files = sorted(glob.glob(os.path.join(path, POINTS, "*.parquet")))
    if not files:  # a directory of directories: every results directory below it, each once
        files = find_files(path, ".parquet", POINTS)
    return files


def find_files(root: str, suffix: str, folder: str | None = None) -> list[str]:
    """The files named *`suffix` below `root` (in directories named `folder` only, where given), sorted:
    the walk of every reader of a folder of results directories, and of the reports folder.

    Links are followed, but each directory is entered once (by device and inode) and each file is listed
    once: a link loop ends, and a results directory reachable twice (a link to it, a linked points/ folder,
    a linked point file) is read, and counted, once. The real tree is walked before any link out of it, so
    where a directory or file is reached both ways it keeps its own name. Hidden entries (.perfkit-cache,
    temporary files) are left out, as glob leaves them out. A file that is not a regular file is listed:
    its reader names it."""
    seen_dirs, tops, found = set(), [root], []
    while tops:
        links = []  # links to directories met in this walk: walked after it
        for top in tops:
            for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False: links come back as `links`
                try:
                    st = os.stat(dirpath)
                except OSError:
                    dirnames[:] = []
                    continue
                if (st.st_dev, st.st_ino) in seen_dirs:
                    dirnames[:] = []
                    continue
                seen_dirs.add((st.st_dev, st.st_ino))
                visible = sorted(d for d in dirnames if not d.startswith("."))
                links += [os.path.join(dirpath, d) for d in visible if os.path.islink(os.path.join(dirpath, d))]
                dirnames[:] = [d for d in visible if not os.path.islink(os.path.join(dirpath, d))]
                if folder is None or os.path.basename(dirpath) == folder:
                    found += [os.path.join(dirpath, f) for f in sorted(filenames)
                              if f.endswith(suffix) and not f.startswith(".")]
        tops = links
    files, seen_files = [], set()
    for f in sorted(found, key=os.path.islink):  # stable: the files that are no link come first
        real = os.path.realpath(f)  # a hard link is another file: a copy made with cp -l stays a copy
        if real not in seen_files:
            seen_files.add(real)
            files.append(f)
    return sorted(files)


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Every point under `path` (a results directory, a folder of them, or one .parquet) as a DataFrame.

    Each file is checked (read_point); one that fails is left out, and `df.attrs["skipped_files"]` lists
    (path, reason) for each, so a reader can say so (open_results prints them)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no results at {path!r}")
    scan = _scan_files(_point_files(path))
    if scan.table is None or scan.table.num_rows == 0:
        df = pd.DataFrame(columns=COLUMNS)
    else:
        df = scan.table.to_pandas()
        sort = [c for c in ("created_utc", "system", "model", "input_len", "output_len", "batch") if c in df]
        df = df.sort_values(sort, kind="stable").reset_index(drop=True)
    df.attrs["skipped_files"] = list(scan.skipped)
    return df


class RunRecords(list):
    """The run records of a results directory (a list of dicts); `.skipped` holds (path, reason) of the
    files left out."""

    skipped: list[tuple[str, str]]


def read_run(path: str) -> dict:
    """One runs/<run_id>.json, checked: a regular file of at most MAX_RECORD_BYTES holding a JSON object whose
    run_id is its file name. DamagedFile otherwise."""
    try:
        blob = read_regular(path, "a JSON run record", MAX_RECORD_BYTES)
    except UnreadableFile as exc:
        raise DamagedFile(str(exc)) from None
    if not blob.strip():
        raise DamagedFile("empty file, expected a JSON object")
    try:
        with nesting_refused("a JSON object of a few levels"):
            record = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedFile(f"not valid JSON ({one_line(exc, 160)})") from None
    if not isinstance(record, dict):
        raise DamagedFile(f"holds a JSON {type(record).__name__}, expected an object")
    stem = os.path.basename(path)[: -len(".json")]
    if record.get("run_id") != stem:
        return_id = record.get("run_id")
        raise DamagedFile(f"its run_id {return_id!r} differs from its file name {stem!r}")
    return record


def load_runs(path: str | os.PathLike) -> RunRecords:
    """The provenance records of every run under `path`; a damaged one is left out, named in `.skipped`."""
    path = os.fspath(path)
    files = sorted(glob.glob(os.path.join(path, RUNS, "*.json"))) or find_files(path, ".json", RUNS)
    runs = RunRecords()
    runs.skipped = []
    for f in files:
        try:
            runs.append(read_run(f))
        except DamagedFile as exc:
            runs.skipped.append((f, str(exc)))
    return runs


# ---- a sweep's hold on a results directory -----------------------------------------------------------

@contextlib.contextmanager
def lock(out_dir: str):
    """Hold `out_dir` exclusively while a sweep writes it: flock on DIR/.perfkit.lock, never waiting.

    The file records the holder (pid, host, start time, command). Held by a live process: UsageError naming
    that holder, with nothing written. A lock whose holder died is free (the kernel releases a flock with
    its process) and is taken over; the file then names the new holder. A directory this call had to
    create is removed again on the way out if nothing but the lock was written into it.

    Only a lock file perfkit wrote is ever truncated: a link (symbolic or hard) in its place, or a file
    that holds anything but a lock record, is refused (UsageError) and left as it is.
    """
    import fcntl
    import socket

    from perfkit.errors import UsageError
    from perfkit.provenance import utc_now

    path = os.path.join(out_dir, LOCK)
    created = []  # directories made here, deepest last
    d = os.path.abspath(out_dir)
    while not os.path.exists(d):
        created.insert(0, d)
        d = os.path.dirname(d)
    while True:
        os.makedirs(out_dir, exist_ok=True)
        try:
            # O_NOFOLLOW: a lock path that is a link is refused, never followed (the lock file is truncated).
            # O_EXCL first: a file this call creates is its own; one it finds is checked before it is written.
            try:
                fd, mine = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), True
            except FileExistsError:
                fd, mine = os.open(path, os.O_RDWR | os.O_NOFOLLOW), False
        except FileNotFoundError:  # removed between the two opens (a holder cleaning up): try again
            continue
        except OSError as exc:
            raise UsageError(f"{path!r} cannot be used as the sweep's lock file ({exc.strerror or exc}): "
                             "expected a regular file perfkit creates there; remove what is in its place") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UsageError(f"{path!r} is not a regular file: expected the sweep's lock file; remove it")
        if st.st_nlink > 1:  # another name of a file elsewhere, which truncating the lock would truncate
            os.close(fd)
            raise UsageError(f"{path!r} is a hard link ({st.st_nlink} names of one file): expected the sweep's "
                             "lock file, a file of its own; remove it (the file's other names keep it)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UsageError(f"results directory {out_dir!r} is in use by another sweep ({holder}): expected one "
                             "sweep at a time per results directory; wait for it to end, or use another "
                             "--out") from None
        except OSError as exc:  # a filesystem without flock (some NFS and Lustre mounts)
            os.close(fd)
            raise UsageError(f"results directory {out_dir!r} cannot be locked ({exc.strerror or exc}): expected a "
                             "filesystem with flock, so that two sweeps never write one directory; use an --out "
                             "on a local disk") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # a holder that cleaned up may have removed the file between our open and our flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same and not mine and _lock_record(fd) is None:
            os.close(fd)
            raise UsageError(f"{path!r} holds something other than a perfkit lock record: expected the sweep's "
                             "lock file, which perfkit writes; move the file away")
        if same:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), "command": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record, default=str) + "\n").encode(), 0)
        yield record
    finally:
        try:
            if created and sorted(os.listdir(out_dir)) == [LOCK]:
                os.unlink(path)  # under the flock: whoever opens it next re-checks the inode
                for d in reversed(created):
                    os.rmdir(d)
            else:
                os.ftruncate(fd, 0)  # no holder now
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock


# a lock record is one line of JSON: a pid, a host, a time and the command line (its arguments are at most
# ARG_MAX together, 2 MiB on Linux)
_MAX_LOCK_BYTES = 8 << 20


def _lock_record(fd: int) -> dict | None:
    """What a lock file holds: the holder's record, {} where it is empty (a holder that has not written yet,
    or has finished), None where it holds anything else (a file perfkit did not write)."""
    try:
        if os.fstat(fd).st_size > _MAX_LOCK_BYTES:
            return None
        blob = os.pread(fd, _MAX_LOCK_BYTES, 0)
        if not blob:
            return {}
        with nesting_refused("a lock record"):
            record = json.loads(blob)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def _lock_holder(fd: int) -> str:
    """The holder a lock file names, for the refusal: "pid 123 on host h since 2026-...Z"."""
    record = _lock_record(fd)
    if not record:
        return "its holder has not written its name yet"
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('since', '?')}"


def remove_interrupted_writes(out_dir: str, min_age_s: float = 60.0) -> int:
    """Remove the temporary files (.tmp-<pid>-*) that interrupted atomic writes left in points/ and runs/;
    return how many. Call it under `lock`. A file whose writer is still alive on this machine and that is
    younger than `min_age_s` may be a `perfkit run` writing now: it is kept."""
    import time

    removed = 0
    for sub in (POINTS, RUNS):
        for f in glob.glob(os.path.join(out_dir, sub, TMP_PREFIX + "*")):
            pid = os.path.basename(f)[len(TMP_PREFIX):].split("-", 1)[0]
            try:
                fresh = time.time() - os.path.getmtime(f) < min_age_s
            except FileNotFoundError:
                continue
            if fresh and pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            try:
                os.unlink(f)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def move_aside(out_dir: str, paths: list[str]) -> str:
    """Move point files to DIR/stale/<UTC timestamp>/ (gathered in a temporary folder, which is then renamed
    into place in one step); returns that folder. Readers never look there: it has no points/ folder."""
    import time

    root = os.path.join(out_dir, STALE)
    os.makedirs(root, exist_ok=True)
    gather = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=root)
    for p in paths:
        os.rename(p, os.path.join(gather, os.path.basename(p)))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, n = os.path.join(root, stamp), 1
    while os.path.exists(dest):
        dest, n = os.path.join(root, f"{stamp}-{n}"), n + 1
    os.rename(gather, dest)
    for d in (os.path.join(out_dir, POINTS), root):
        fsync_dir(d)
    return dest
