"""A results directory never answers with a wrong figure: every damaged or foreign file is named in one line
and left out of every reader (load_results, summary, compare, plan, resume), and a resumed sweep measures
a damaged point of its plan again. The files themselves come from hostile_files.py."""

import glob
import os

import pandas as pd
import pytest
from helpers import ROOT, call_cli, fake_measuring, study_rows, write_params, write_rows
from hostile_files import HOSTILE_POINTS, HOSTILE_RUNS, POINT_DAMAGE, RUN_DAMAGE, write_every_hostile_file

import perfkit
from perfkit.compare import compare
from perfkit.results import DamagedFile, load_results, load_runs, read_point, scan_points
from perfkit.sweep import plan, run_sweep


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("perfkit: warning: skipped ")]


def _tables_equal(a: dict, b: dict) -> None:
    for name in a:
        pd.testing.assert_frame_equal(a[name].reset_index(drop=True), b[name].reset_index(drop=True))


@pytest.fixture
def clean(tmp_path):
    """A clean target and baseline (two systems, two models, batches 1, 2, 4), and the target's tables."""
    t = write_rows(tmp_path / "target", study_rows("fast", 0.5))
    b = write_rows(tmp_path / "baseline", study_rows("slow", 1.0))
    return t, b, perfkit.summarize(load_results(t))


@pytest.mark.slow  # every kind through every reader, one by one (test_every_hostile_file_at_once is the fast one)
@pytest.mark.parametrize("kind", sorted(HOSTILE_POINTS))
def test_a_bad_point_file_is_named_in_one_line_and_left_out_of_every_reader(clean, kind):
    t, b, tables = clean
    path, fragment = HOSTILE_POINTS[kind](t)

    df = load_results(t)
    assert len(df) == 6 and set(df["batch"]) == {1, 2, 4}  # the bad file's batch 64 never enters
    [(skipped, reason)] = df.attrs["skipped_files"]
    assert skipped == path and fragment in reason and "\n" not in reason
    assert os.path.basename(path)[: -len(".parquet")] not in set(scan_points(t).rows)
    with pytest.raises(DamagedFile):
        read_point(path)
    _tables_equal(perfkit.summarize(df), tables)

    r = call_cli("summary", t)
    assert r.returncode == 0, r.stderr
    [line] = _warnings(r.stderr)
    assert line.startswith(f"perfkit: warning: skipped {path}: ") and fragment in line
    assert "1,000,000,000" not in r.stdout and "B=64" not in r.stdout

    r = call_cli("compare", t, b, "--n-boot", "100")
    assert r.returncode == 0, r.stderr
    assert len(_warnings(r.stderr)) == 1 and fragment in _warnings(r.stderr)[0]
    assert "@B=64" not in r.stdout


def test_a_stray_huge_throughput_never_becomes_a_max(clean):
    """A hand-written row claiming 1e9 tok/s at a batch no sweep reached, under its own name or a foreign
    one: neither the study's max throughputs nor a comparison's move."""
    t, b, tables = clean
    before = compare(t, b, n_boot=100).study
    HOSTILE_POINTS["inflated"](t)
    HOSTILE_POINTS["foreign-name"](t)
    after = perfkit.summarize(load_results(t))
    assert after["multi_user_max"]["max_output_tok_s"].max() < 1e6
    assert set(after["multi_user_max"]["batch"]) == {4}
    _tables_equal(after, tables)
    pd.testing.assert_frame_equal(compare(t, b, n_boot=100).study, before)


def test_every_hostile_file_at_once(clean):
    t, b, tables = clean
    bad = write_every_hostile_file(t)
    df = load_results(t)
    assert len(df) == 6 and len(df.attrs["skipped_files"]) == len(HOSTILE_POINTS)
    runs = load_runs(t)
    assert [r["run_id"] for r in runs] == ["run-fast"] and len(runs.skipped) == len(HOSTILE_RUNS)
    r = call_cli("summary", t, "--points")
    assert r.returncode == 0, r.stderr
    lines = _warnings(r.stderr)
    assert len(lines) == len(bad)
    for path, fragment in bad:
        assert sum(line.startswith(f"perfkit: warning: skipped {path}: ") and fragment in line for line in lines) == 1
    assert "1,000,000,000" not in r.stdout


def test_every_file_of_the_committed_demo_passes():
    """The checks reject no real measurement: every point perfkit wrote for the demo is read."""
    demo = os.path.join(ROOT, "results", "demo")
    if not os.path.isdir(os.path.join(demo, "points")):
        pytest.skip("no committed demo results")
    df = load_results(demo)
    assert df.attrs["skipped_files"] == [] and len(df) == len(glob.glob(os.path.join(demo, "points", "*.parquet")))
    assert load_runs(demo).skipped == []


def test_a_directory_of_nothing_but_damage_is_refused_naming_it(tmp_path):
    d = str(tmp_path / "d")
    path, fragment = HOSTILE_POINTS["truncated"](d)
    r = call_cli("summary", d)
    assert r.returncode == 2
    assert _warnings(r.stderr) == [line for line in r.stderr.splitlines() if "warning" in line]
    assert fragment in _warnings(r.stderr)[0]
    assert r.stderr.splitlines()[-1].startswith("perfkit: error: no results in results directory")
    assert "1 damaged point files skipped" in r.stderr and "Traceback" not in r.stderr
    one = load_results(path)  # a single file, named directly
    assert one.empty and one.attrs["skipped_files"][0][0] == path


@pytest.mark.parametrize("kind", sorted(RUN_DAMAGE))
def test_a_damaged_run_record_is_named_and_left_out(clean, kind):
    t, _, _ = clean
    path = glob.glob(os.path.join(t, "runs", "*.json"))[0]
    fragment = RUN_DAMAGE[kind](path)
    runs = load_runs(t)
    assert list(runs) == [] and len(runs.skipped) == 1
    assert runs.skipped[0][0] == path and fragment in runs.skipped[0][1]
    r = call_cli("summary", t)
    assert r.returncode == 0, r.stderr
    [line] = _warnings(r.stderr)
    assert line.startswith(f"perfkit: warning: skipped {path}: ") and fragment in line


# ---- a sweep's resume ----------------------------------------------------------------------------

GRID = {"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2, 4]}


def _key_file(out, batch):
    df = load_results(out)
    key = df.loc[df["batch"] == batch, "point_key"].iloc[0]
    return os.path.join(out, "points", f"{key}.parquet")


@pytest.mark.parametrize("kind", sorted(POINT_DAMAGE))
def test_a_resumed_sweep_measures_a_damaged_point_again(tmp_path, monkeypatch, capsys, kind):
    calls = fake_measuring(monkeypatch)
    params = write_params(tmp_path / "p.yaml", grid=GRID)
    out = str(tmp_path / "out")
    assert run_sweep(params, out_dir=out, progress=False).measured == 3
    path = _key_file(out, 2)
    fragment = POINT_DAMAGE[kind](path)
    capsys.readouterr()

    pl = plan(params, out_dir=out)  # --dry-run: the damaged point is to do again, and named
    assert [(p["batch"], p["status"]) for p in pl.points] == [(1, "done"), (2, "todo"), (4, "search")]
    [line] = _warnings(capsys.readouterr().err)
    assert line.startswith(f"perfkit: warning: skipped {path}: ") and fragment in line
    assert line.endswith("its point counts as not done and would be measured again")

    del calls[:]
    again = run_sweep(params, out_dir=out, progress=False)
    assert again.measured == 1  # B = 4, stored past it, is judged again, not measured
    assert [c[4] for c in calls] == [2]
    [line] = _warnings(capsys.readouterr().err)
    assert fragment in line and line.endswith("its point counts as not done and is measured again")
    read_point(path)  # the atomic write replaced the damaged file
    df = load_results(out)
    assert len(df) == 3 and df.attrs["skipped_files"] == []
    assert list(df.sort_values("batch")["search_stop"]) == ["", "", "grid_end"]


def test_a_foreign_file_in_a_sweep_directory_is_named_and_never_done(tmp_path, monkeypatch, capsys):
    fake_measuring(monkeypatch)
    params = write_params(tmp_path / "p.yaml", grid=GRID)
    out = str(tmp_path / "out")
    run_sweep(params, out_dir=out, progress=False)
    stray, fragment = HOSTILE_POINTS["foreign-name"](out)
    capsys.readouterr()
    r = call_cli("sweep", params, "--out", out, "--dry-run")
    assert r.returncode == 0 and "already done: 3; to measure: 0" in r.stdout
    [line] = _warnings(r.stderr)
    assert line == f"perfkit: warning: skipped {stray}: " + line.split(": ", 3)[3] and fragment in line
    assert "measured again" not in line
    assert run_sweep(params, out_dir=out, progress=False).measured == 0
    assert fragment in _warnings(capsys.readouterr().err)[0]
    assert os.path.exists(stray)  # named, never deleted: it may be someone's data


@pytest.mark.parametrize("text, fragment", [(b"{\"copy_bandwidth", "not valid JSON"), (b"[1, 2]", "holds a JSON list"),
                                            (b"{\"copy_bandwidth_bytes_s\": -1}", "not a positive number")])
def test_a_damaged_probe_is_named_and_left_out(clean, text, fragment):
    """probes/*.json feed the probed speed of light: a damaged one is named, never a crash or a figure."""
    t, _, _ = clean
    os.makedirs(os.path.join(t, "probes"))
    path = os.path.join(t, "probes", "bad.json")
    with open(path, "wb") as f:
        f.write(text)
    r = call_cli("summary", t)
    assert r.returncode == 0, r.stderr
    [line] = _warnings(r.stderr)
    assert line.startswith(f"perfkit: warning: skipped {path}: ") and fragment in line


def test_a_file_written_before_the_newer_columns_reads_whole_and_is_not_measured_again(tmp_path):
    """Point files of an earlier perfkit lack the columns added since (attention kernels, cuDNN, host):
    they read with those as null, stay in every table, and a resumed sweep does not measure them again."""
    import pyarrow.parquet as pq

    out = str(tmp_path / "out")
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2]},
                          repeats=1)
    run_sweep(params, out_dir=out, progress=False)
    newer = ("sdpa_prefill_backend", "sdpa_decode_backend", "cudnn_version", "host", "gpu_index")
    for path in glob.glob(os.path.join(out, "points", "*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([c for c in newer if c in table.schema.names]), path)
    df = load_results(out)
    assert len(df) == 2 and not df.attrs.get("skipped_files") and df["cudnn_version"].isna().all()
    assert run_sweep(params, out_dir=out, progress=False).measured == 0
