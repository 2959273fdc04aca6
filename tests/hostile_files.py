"""Damaged and foreign files for the integrity tests: every kind of point file and run record a results
directory may hold that must never be read as a figure.

`POINT_DAMAGE[kind](path)` damages an existing point file in place (as a crash, a bad disk or a hand edit
would) and returns a fragment of the reason `perfkit.results.read_point` gives. `HOSTILE_POINTS[kind]
(out_dir)` writes one new bad file into a results directory and returns (its path, the reason fragment).
`RUN_DAMAGE[kind](path)` and `HOSTILE_RUNS[kind](out_dir)` do the same for runs/<run_id>.json.
`write_every_hostile_file(out_dir)` writes one of each kind, for a test that runs every reader against
all of them. Import with `from hostile_files import ...`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import make_row

_counter = itertools.count(1)


def good_row(system: str = "cpu", batch: int | None = None, **extra) -> dict:
    """A consistent ok row (figures from its samples, as perfkit builds them) with a point key of its own.

    Each call gives another input length (and so another key), at batch 64 unless `batch` says otherwise:
    a batch above every study grid, so a figure of it would show up as a max."""
    i = 1000 + next(_counter)
    return make_row(system, "tiny-llama2-13b", i, 8, batch or 64, [10.0, 11.0, 12.0], [50.0, 52.0, 54.0], **extra)


def _table(row: dict) -> pa.Table:
    from perfkit.rows import schema_for

    schema = schema_for(row)
    return pa.Table.from_pylist([{c: row.get(c) for c in schema.names}], schema=schema)


def _read_row(path: str) -> dict:
    return pq.read_table(path).to_pylist()[0]


def _rewrite(path: str, row: dict) -> None:
    """Write `row` over `path` (in place, as a hand edit would), keeping its file name."""
    pq.write_table(_table(row), path)


# ---- damage to an existing point file, in place: (path) -> reason fragment --------------------------

def truncate(path: str) -> str:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return "not readable as Parquet"


def empty(path: str) -> str:
    open(path, "wb").close()
    return "empty file"


def garbage(path: str) -> str:
    with open(path, "wb") as f:
        f.write(b"PAR1" + bytes(range(256)) * 8 + b"PAR1")
    return "not readable as Parquet"


def flip_mid_file(path: str) -> str:
    """One byte flipped inside the e2e samples' data page, mid-file: its page checksum no longer matches."""
    chunk = next(c for rg in [pq.ParquetFile(path).metadata.row_group(0)] for c in
                 (rg.column(i) for i in range(rg.num_columns)) if c.path_in_schema.startswith("e2e_ms_samples"))
    at = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size - 2
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x55]))
    return "CRC checksum verification failed"


def inflate_throughput(path: str) -> str:
    """A hand edit: output_tok_s claims 1e9 tok/s; the samples do not support it."""
    row = _read_row(path)
    row["output_tok_s"] = 1e9
    _rewrite(path, row)
    return "output_tok_s 1e+09 does not follow from its raw samples"


def shift_median(path: str) -> str:
    row = _read_row(path)
    row["ttft_ms"] = row["ttft_ms"] / 100
    _rewrite(path, row)
    return "ttft_ms"


def nan_sample(path: str) -> str:
    row = _read_row(path)
    row["e2e_ms_samples"] = [float("nan")] + row["e2e_ms_samples"][1:]
    _rewrite(path, row)
    return "e2e_ms_samples holds a non-finite timing"


def negative_sample(path: str) -> str:
    row = _read_row(path)
    row["ttft_ms_samples"] = [-1.0] + row["ttft_ms_samples"][1:]
    _rewrite(path, row)
    return "ttft_ms_samples holds a negative timing"


def no_samples(path: str) -> str:
    row = _read_row(path)
    row["ttft_ms_samples"], row["e2e_ms_samples"] = [], []
    _rewrite(path, row)
    return "without raw samples"


def unknown_status(path: str) -> str:
    row = _read_row(path)
    row["status"] = "done"
    _rewrite(path, row)
    return "status 'done', expected ok, oom or error"


def oom_with_figures(path: str) -> str:
    row = _read_row(path)
    row["status"] = "oom"
    _rewrite(path, row)
    return "status oom with a figure"


def two_rows(path: str) -> str:
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table]), path)
    return "holds 2 rows, expected exactly one"


def no_rows(path: str) -> str:
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)
    return "holds 0 rows, expected exactly one"


def missing_column(path: str) -> str:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["ttft_ms_samples"]), path)
    return "column ttft_ms_samples is missing"


def wrong_type(path: str) -> str:
    table = pq.read_table(path)
    i = table.schema.get_field_index("batch")
    pq.write_table(table.set_column(i, "batch", pa.array([str(table["batch"][0].as_py())])), path)
    return "column batch is string, expected int64"


def key_mismatch(path: str) -> str:
    """The row says it is another point than its file name: a file copied or renamed by hand."""
    row = _read_row(path)
    row["point_key"] = "f" * 20
    _rewrite(path, row)
    return "differs from its file name"


POINT_DAMAGE = {
    "truncated": truncate, "empty": empty, "garbage": garbage, "mid-file": flip_mid_file,
    "inflated": inflate_throughput, "median": shift_median, "nan": nan_sample, "negative": negative_sample,
    "no-samples": no_samples, "status": unknown_status, "oom-with-figures": oom_with_figures,
    "two-rows": two_rows, "no-rows": no_rows, "missing-column": missing_column, "wrong-type": wrong_type,
    "key": key_mismatch,
}


# ---- new bad files in a results directory: (out_dir) -> (path, reason fragment) -----------------------

def _written(out_dir: str, row: dict | None = None) -> str:
    from perfkit.results import write_point

    return write_point(str(out_dir), row or good_row())


def _damaged(kind: str):
    def write(out_dir):
        path = _written(out_dir)
        return path, POINT_DAMAGE[kind](path)
    write.__name__ = f"write_{kind}"
    return write


def foreign_name(out_dir) -> tuple[str, str]:
    """A good row copied under a name that is not its key (a stray file dropped into points/)."""
    path = _written(out_dir)
    stray = os.path.join(os.path.dirname(path), "best-run-ever.parquet")
    shutil.move(path, stray)
    return stray, "differs from its file name 'best-run-ever'"


def directory_named_like_a_point(out_dir) -> tuple[str, str]:
    path = os.path.join(str(out_dir), "points", "0123456789abcdef0123.parquet")
    os.makedirs(path)
    return path, "not a regular file"


HOSTILE_POINTS = {kind: _damaged(kind) for kind in POINT_DAMAGE}
HOSTILE_POINTS.update({"foreign-name": foreign_name, "directory": directory_named_like_a_point})


# ---- run records: runs/<run_id>.json --------------------------------------------------------------

def run_empty(path: str) -> str:
    open(path, "wb").close()
    return "empty file"


def run_truncated(path: str) -> str:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return "not valid JSON"


def run_not_an_object(path: str) -> str:
    with open(path, "w") as f:
        json.dump(["not", "a", "record"], f)
    return "holds a JSON list, expected an object"


def run_other_id(path: str) -> str:
    with open(path) as f:
        record = json.load(f)
    record["run_id"] = "someone-else"
    with open(path, "w") as f:
        json.dump(record, f)
    return "its run_id 'someone-else' differs from its file name"


# JSON nested past every parser's recursion limit: json.loads raises RecursionError on it, not ValueError
DEEP_JSON = "[" * 100_000 + "]" * 100_000


def deeply_nested(path: str) -> str:
    with open(path, "w") as f:
        f.write(DEEP_JSON)
    return "nested too deeply"


RUN_DAMAGE = {"empty": run_empty, "truncated": run_truncated, "list": run_not_an_object, "run-id": run_other_id,
              "deep": deeply_nested}


def _run_file(out_dir: str, run_id: str) -> str:
    from helpers import ENV

    from perfkit.results import write_run

    return write_run(str(out_dir), run_id, {**ENV, "run_id": run_id})


def _damaged_run(kind: str):
    def write(out_dir):
        path = _run_file(out_dir, f"run-damaged-{kind}")
        return path, RUN_DAMAGE[kind](path)
    write.__name__ = f"write_run_{kind}"
    return write


HOSTILE_RUNS = {kind: _damaged_run(kind) for kind in RUN_DAMAGE}


def write_every_hostile_file(out_dir) -> list[tuple[str, str]]:
    """One file of every kind above (points and runs) in `out_dir`: [(path, reason fragment), ...]."""
    return [make(out_dir) for make in list(HOSTILE_POINTS.values()) + list(HOSTILE_RUNS.values())]


# ---- files that are no regular files: (path) -> reason fragment ------------------------------------
# A reader that opened one of these as a plain file would wait for ever on the FIFO's open, or read
# /dev/zero until memory is gone; perfkit opens every file it did not just write as a regular file of
# bounded size (perfkit.errors.read_regular), and names each of these in one line. Readers run against
# them in a subprocess with a timeout and an address-space limit (test_special_files.py), so that a reader
# that regressed fails instead of hanging the suite or exhausting the machine.

def fifo(path: str) -> str:
    os.mkfifo(path)
    return "is not a regular file (a FIFO)"


def dev_zero(path: str) -> str:
    os.symlink("/dev/zero", path)
    return "is not a regular file (a character device)"


def a_directory(path: str) -> str:
    os.mkdir(path)
    return "is not a regular file (a directory)"


def link_to_itself(path: str) -> str:
    os.symlink(os.path.basename(path), path)
    return "Too many levels of symbolic links"


def oversized(max_bytes: int):
    """A sparse file one byte past a reader's bound (no disk is used): refused by its size, never read."""
    def write(path: str) -> str:
        with open(path, "wb") as f:
            f.truncate(max_bytes + 1)
        return "is larger than"
    write.__name__ = f"oversized_{max_bytes}"
    return write


SPECIAL = {"fifo": fifo, "dev-zero": dev_zero, "directory": a_directory, "link-to-itself": link_to_itself}


def write_every_special_file(out_dir) -> list[tuple[str, str]]:
    """One of each SPECIAL kind as a run record, a probe record and a point file of `out_dir`, plus a run and
    a probe record past their bound: [(path, reason fragment), ...]."""
    from perfkit.results import MAX_RECORD_BYTES

    out, made = str(out_dir), []
    for sub in ("runs", "probes", "points"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for kind, make in SPECIAL.items():
        for sub, ext in (("runs", ".json"), ("probes", ".json"), ("points", ".parquet")):
            path = os.path.join(out, sub, f"special-{kind}{ext}")
            made.append((path, make(path)))
    for sub in ("runs", "probes"):
        path = os.path.join(out, sub, "special-oversized.json")
        made.append((path, oversized(MAX_RECORD_BYTES)(path)))
    return made


# ---- a folder of results directories that a walk must not follow for ever, nor count twice --------------

def link_loops(root) -> list[str]:
    """Two links back up the tree below `root`: a walk that follows links without remembering where it has
    been visits 2**40 paths before the kernel's 40-link limit stops it."""
    root = str(root)
    os.makedirs(os.path.join(root, "deeper"), exist_ok=True)
    loops = [os.path.join(root, "loop-up"), os.path.join(root, "deeper", "loop-up-two")]
    os.symlink(".", loops[0])
    os.symlink("..", loops[1])
    return loops


def aliases(root, real: str) -> list[str]:
    """Three more ways to reach results directory `real` (below `root`, holding points): a link to it, a
    directory whose points/ folder is a link to its points/, and a directory whose one point file is a link
    to one of its point files. Returns the aliases' paths."""
    root, real = str(root), os.path.abspath(real)
    link = os.path.join(root, "link-to-" + os.path.basename(real))
    os.symlink(real, link)
    linked_points = os.path.join(root, "linked-points")
    os.makedirs(linked_points)
    os.symlink(os.path.join(real, "points"), os.path.join(linked_points, "points"))
    linked_file = os.path.join(root, "linked-file")
    os.makedirs(os.path.join(linked_file, "points"))
    first = sorted(os.listdir(os.path.join(real, "points")))[0]
    os.symlink(os.path.join(real, "points", first), os.path.join(linked_file, "points", first))
    return [link, linked_points, linked_file]


# ---- a checkpoint's config.json of the wrong shape: (its saved config, a dict) -> (file text, fragment) ------
# transformers refuses each of these with an exception of its own (a strict-dataclass error, TypeError,
# ZeroDivisionError, RecursionError), lets some through to fail mid-measurement, or changes its mind between
# versions; perfkit refuses each in one line naming the field (the fragment) and what it expected.

def _config_with(fragment: str, drop: tuple[str, ...] = (), **changes):
    def make(config: dict) -> tuple[str, str]:
        changed = {k: v for k, v in config.items() if k not in drop}
        changed.update(changes)
        return json.dumps(changed), fragment  # NaN is written as JSON's NaN, which json reads back
    return make


HOSTILE_CONFIGS = {
    "nan-size": _config_with("hidden_size is nan", hidden_size=float("nan")),
    "string-for-int": _config_with("num_hidden_layers is '4'", num_hidden_layers="4"),
    "fraction-for-int": _config_with("max_position_embeddings is 8192.5", max_position_embeddings=8192.5),
    "bool-for-int": _config_with("vocab_size is True", vocab_size=True),
    "zero-heads": _config_with("num_attention_heads is 0", num_attention_heads=0),
    "negative-context": _config_with("max_position_embeddings is -5", max_position_embeddings=-5),
    "string-window": _config_with("sliding_window is 'x'", sliding_window="x"),
    "heads-not-dividing-hidden": _config_with("hidden_size 128 is not a multiple of num_attention_heads 6",
                                              drop=("head_dim",), num_attention_heads=6, num_key_value_heads=6),
    "kv-heads-not-dividing-heads": _config_with("num_attention_heads 8 is not a multiple of num_key_value_heads 3",
                                                num_key_value_heads=3),
    "bogus-dtype": _config_with("dtype is 'float33'", dtype="float33"),
    "bogus-torch-dtype": _config_with("torch_dtype is 'bogus'", drop=("dtype",), torch_dtype="bogus"),
    "a-list": lambda config: (json.dumps([config]), "holds a JSON list"),
    "deeply-nested": lambda config: (DEEP_JSON, "is not valid JSON (nested too deeply"),
}
