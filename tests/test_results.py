import os

import pyarrow.parquet as pq
import pytest

from perfkit.measure import measure_point
from perfkit.provenance import environment
from perfkit.results import COLUMNS, load_results, scan_points, write_point
from perfkit.rows import failed_row, to_row, with_provenance
from perfkit.workload import Point, System


@pytest.fixture(scope="module")
def rows(tiny_models):
    env = environment("cpu")
    out = []
    for name in ("tiny-llama2-13b", "tiny-mistral-7b"):
        system = System("cpu-fp32", "hf-loop", "float32", "cpu")
        point = Point(name, 8, 4, 2)
        m = measure_point(tiny_models[name], system, point, warmup=0, repeats=2)
        out.append(with_provenance(to_row(m), "run-1", env, {**vars(system), **vars(point)}))
    oom = failed_row(System("cpu-fp32"), Point("tiny-llama2-13b", 8, 4, 64), "oom", "CUDA out of memory (test)")
    out.append(with_provenance(oom, "run-1", env, {"oom": True}))
    return out


def test_rows_round_trip_with_every_contract_column(tmp_path, rows):
    for row in rows:
        write_point(str(tmp_path), row)
    df = load_results(tmp_path)
    assert len(df) == 3
    assert set(COLUMNS) <= set(df.columns)
    ok = df[df.status == "ok"]
    assert ok.ttft_ms.notna().all() and (ok.repeats == 2).all()
    assert [len(s) for s in ok.ttft_ms_samples] == [2, 2]
    assert all(len(r) == 2 and all(len(steps) == 3 for steps in r) for r in ok.decode_step_ms_samples)
    oom = df[df.status == "oom"].iloc[0]
    assert oom.batch == 64 and oom.error.startswith("CUDA out of memory")
    assert df.device_name.notna().all() and df.torch_version.notna().all() and df.created_utc.notna().all()
    assert set(scan_points(str(tmp_path)).rows) == set(df.point_key)


def test_duckdb_reads_the_files_directly(tmp_path, rows):
    duckdb = pytest.importorskip("duckdb")
    for row in rows:
        write_point(str(tmp_path), row)
    n, oom = duckdb.sql(
        f"SELECT count(*), count(*) FILTER (WHERE status = 'oom') FROM '{tmp_path}/points/*.parquet'").fetchall()[0]
    assert (n, oom) == (3, 1)
    # Every file has the same columns, whichever DuckDB reads first: an oom row (no timings) and CPU rows
    # (no energy) next to each other still give their sample lists and backend mode.
    rows = duckdb.sql(f"SELECT status, len(ttft_ms_samples), backend_mode, energy_j_samples "
                      f"FROM '{tmp_path}/points/*.parquet' ORDER BY status").fetchall()
    assert [r[0] for r in rows] == ["ok", "ok", "oom"]
    assert rows[0][1] == 2 and rows[0][2] == "eager" and rows[2][1] is None


def test_a_crash_mid_write_leaves_nothing_behind(tmp_path, rows, monkeypatch):
    write_point(str(tmp_path), rows[0])

    def crash(table, f, *a, **k):
        f.write(b"PAR1 half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        write_point(str(tmp_path), rows[1])
    assert os.listdir(tmp_path / "points") == [f"{rows[0]['point_key']}.parquet"]
    monkeypatch.undo()  # the crash was that write's; reading writes the directory's compacted copy
    assert len(load_results(tmp_path)) == 1


def test_load_results_of_a_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "nope")


def _reads(monkeypatch):
    """Count the point files read one by one (read_point), as opposed to taken from the compacted copy."""
    import perfkit.results as results

    read, real = [], results.read_point
    monkeypatch.setattr(results, "read_point", lambda path: (read.append(os.path.basename(path)), real(path))[1])
    return read


def test_a_directory_read_again_comes_from_its_compacted_copy_until_a_file_changes(tmp_path, rows, monkeypatch):
    from perfkit.compacted import path_of

    for row in rows:
        write_point(str(tmp_path), row)
    first = load_results(tmp_path)
    assert os.path.isfile(path_of(str(tmp_path)))
    read = _reads(monkeypatch)
    again = load_results(tmp_path)
    assert read == [] and sorted(again.point_key) == sorted(first.point_key)
    samples = [None if v is None else list(v) for v in first.sort_values("point_key").ttft_ms_samples]
    assert [None if v is None else list(v) for v in again.sort_values("point_key").ttft_ms_samples] == samples
    # a point measured again (an atomic replace: another file under the same name) is read and checked anew
    changed = {**rows[0], "error": None, "ttft_ms": rows[0]["ttft_ms"] * 2}  # figures that no longer follow
    write_point(str(tmp_path), changed)
    df = load_results(tmp_path)
    assert read == [f"{rows[0]['point_key']}.parquet"]  # only that file
    assert rows[0]["point_key"] not in set(df.point_key)  # damaged now: left out, and said
    assert [os.path.basename(p) for p, _ in df.attrs["skipped_files"]] == read
    # a removed point leaves the copy too
    os.unlink(os.path.join(tmp_path, "points", f"{rows[1]['point_key']}.parquet"))
    assert set(load_results(tmp_path).point_key) == {rows[2]["point_key"]}


@pytest.mark.parametrize("damage", [b"", b"PAR1 not a parquet file", None, "older"])
def test_a_damaged_compacted_copy_is_ignored_and_rebuilt(tmp_path, rows, monkeypatch, damage):
    from perfkit.compacted import path_of

    for row in rows:
        write_point(str(tmp_path), row)
    want = sorted(load_results(tmp_path).point_key)
    path = path_of(str(tmp_path))
    if damage == "older":  # a copy written before a column of the schema existed
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["seed"]), path)
    elif damage is None:  # a copy that names the files, but with rows of another directory
        import pyarrow as pa

        table = pq.read_table(path)
        pq.write_table(table.set_column(table.schema.get_field_index("_cache_size"), "_cache_size",
                                        pa.array([1] * table.num_rows, pa.int64())), path)
    else:
        with open(path, "wb") as f:
            f.write(damage)
    read = _reads(monkeypatch)
    assert sorted(load_results(tmp_path).point_key) == want
    assert len(read) == 3  # every file read and checked again
    read.clear()
    load_results(tmp_path)
    assert read == []  # and the copy rebuilt


def test_a_read_only_results_directory_is_read_without_a_copy(tmp_path, rows):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    for row in rows:
        write_point(str(tmp_path), row)
    os.chmod(tmp_path, 0o555)
    try:
        assert len(load_results(tmp_path)) == 3
    finally:
        os.chmod(tmp_path, 0o755)
