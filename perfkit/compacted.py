"""A results directory's compacted copy of its checked points: DIR/.perfkit-cache/points.parquet.

The point files stay the record (each finished point is its own atomic file, so a crash loses none); this
copy only spares reading and checking ten thousand small files one by one every time a directory is read.
An entry is used only while its point file's size, modification time and inode are what they were when it
was checked; any other file is read and checked as ever (perfkit.results.read_point), and the copy is
rewritten atomically when anything changed and the directory is writable. A copy that cannot be read is
ignored and rebuilt. See docs/results.md.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from perfkit.rows import SCHEMA

CACHE_DIR = ".perfkit-cache"
CACHE_FILE = "points.parquet"
# Manifest columns beside the rows' own: which file each row came from, and that file's identity when read.
FILE, SIZE, MTIME, INODE = "_cache_file", "_cache_size", "_cache_mtime_ns", "_cache_inode"
MANIFEST = (FILE, SIZE, MTIME, INODE)


def identity(st: os.stat_result) -> tuple[int, int, int]:
    """What says a point file is the one that was checked: an atomic replace gives a new inode and mtime."""
    return st.st_size, st.st_mtime_ns, st.st_ino


def path_of(out_dir: str) -> str:
    return os.path.join(out_dir, CACHE_DIR, CACHE_FILE)


def load(out_dir: str) -> tuple[pa.Table | None, dict[str, tuple[tuple[int, int, int], int]]]:
    """(the copy's rows without the manifest, {file name: (identity, row index)}); (None, {}) where there is
    no usable copy."""
    path = path_of(out_dir)
    try:
        if not os.path.isfile(path):
            return None, {}
        table = pq.ParquetFile(path, page_checksum_verification=True).read()
        if not set(SCHEMA.names) <= set(table.schema.names):  # written before a column of the schema existed
            return None, {}
        names = table.column(FILE).to_pylist()
        sizes, mtimes, inodes = (table.column(c).to_pylist() for c in (SIZE, MTIME, INODE))
    except Exception:  # noqa: BLE001 - a copy that cannot be read in any way is not used, and is rebuilt
        return None, {}
    index = {name: ((s, m, i), n) for n, (name, s, m, i) in enumerate(zip(names, sizes, mtimes, inodes))}
    return table.drop_columns(list(MANIFEST)), index


def store(out_dir: str, table: pa.Table, files: list[str], identities: list[tuple[int, int, int]], atomic_write,
          tmp_prefix: str) -> None:
    """Write the copy of `table` (one row per file of `files`, in order) with the store's `atomic_write`
    (whose temporary files start with `tmp_prefix`); nothing where the directory is not writable (a results
    directory may be read-only, or its disk full: it is still read, one file at a time)."""
    folder = os.path.join(out_dir, CACHE_DIR)
    try:
        os.makedirs(folder, exist_ok=True)
        _remove_old_temporaries(folder, tmp_prefix)
        columns = {FILE: pa.array(files, pa.string()), SIZE: pa.array([s for s, _, _ in identities], pa.int64()),
                   MTIME: pa.array([m for _, m, _ in identities], pa.int64()),
                   INODE: pa.array([i for _, _, i in identities], pa.int64())}
        for name, values in columns.items():
            table = table.append_column(name, values)

        def write(f):
            pq.write_table(table, f, write_page_checksum=True)

        atomic_write(path_of(out_dir), write)
    except OSError:  # read-only, full, or not ours to write: the point files are read without the copy
        return


def _remove_old_temporaries(folder: str, tmp_prefix: str, min_age_s: float = 60.0) -> None:
    """Temporary files of a copy whose writer was killed (atomic_write removes its own on any exception)."""
    now = time.time()
    for name in os.listdir(folder):
        if name.startswith(tmp_prefix):
            path = os.path.join(folder, name)
            try:
                if now - os.lstat(path).st_mtime > min_age_s:
                    os.unlink(path)
            except OSError:
                pass
