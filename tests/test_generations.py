"""Generations: a system label in a results directory holds one definition. A sweep whose params file
defines a label otherwise than the points stored under it (dtype, backend, attention, device, warm-up,
repeats, seed, derived output lengths, or a smaller grid) is refused before anything runs; a grown grid
resumes; --discard-stale moves the old points aside. Readers refuse a directory mixing definitions."""

import glob
import os

import pytest
from helpers import CPU, call_cli, fake_measuring, make_row, study_rows, write_params, write_rows

from perfkit.errors import UsageError
from perfkit.report.publish import load_for_report
from perfkit.results import load_results, write_point
from perfkit.sweep import plan, run_sweep

GRID = {"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2, 4]}


@pytest.fixture
def swept(tmp_path, monkeypatch):
    """A results directory holding one sweep of label `cpu` (float32, hf-loop, sdpa, warm-up 1, repeats 2,
    seed 0; I 16, O 4, B 1, 2, 4), measured instantly; returns (out, the measuring record)."""
    calls = fake_measuring(monkeypatch)
    out = str(tmp_path / "out")
    assert run_sweep(write_params(tmp_path / "first.yaml", grid=GRID), out_dir=out, progress=False).measured == 3
    del calls[:]
    return out, calls


def _files(out):
    """Every file and folder under `out`, hidden ones (the lock, temporary files) included, with its size."""
    return sorted((os.path.relpath(f, out), os.path.getsize(f))
                  for f in glob.glob(os.path.join(out, "**", "*"), recursive=True, include_hidden=True))


CHANGES = [
    ({"systems": [{**CPU, "dtype": "bfloat16"}]}, 3, "dtype float32 there, bfloat16 here"),
    ({"systems": [{**CPU, "backend": "hf-generate"}]}, 3, "backend hf-loop there, hf-generate here"),
    ({"systems": [{**CPU, "attn_implementation": "eager"}]}, 3, "attn_implementation sdpa there, eager here"),
    ({"warmup": 0}, 3, "warmup 1 there, 0 here"),
    ({"repeats": 3}, 3, "repeats 2 there, 3 here"),
    ({"seed": 7}, 3, "seed 0 there, 7 here"),
    ({"grid": {**GRID, "batch_sizes": [1, 2]}}, 1, "outside this grid: batch 4"),
    ({"grid": {**GRID, "input_lens": [32]}}, 3, "outside this grid: input_len 16"),
]


@pytest.mark.parametrize("change, n, differs", CHANGES, ids=[d.split(" ")[0] if "grid" not in d else d.split(": ")[1]
                                                            for _, _, d in CHANGES])
def test_another_definition_under_the_same_label_is_refused_before_anything_runs(tmp_path, swept, change, n,
                                                                                 differs):
    out, calls = swept
    before = _files(out)
    params = write_params(tmp_path / "changed.yaml", **{"grid": GRID, **change})
    for argv in (["sweep", params, "--out", out], ["sweep", params, "--out", out, "--dry-run"]):
        r = call_cli(*argv)
        assert r.returncode == 2 and r.stdout == ""
        [line] = r.stderr.splitlines()
        assert line.startswith(f"perfkit: error: system 'cpu': {out} holds {n} point")
        assert f"this params file does not define ({differs})" in line
        assert "use another --out, or --discard-stale" in line and line.endswith(f"{out}/stale/<timestamp>/")
    assert calls == [] and _files(out) == before  # nothing measured, nothing written


def test_a_changed_device_is_refused_by_the_dry_run_too(tmp_path, swept):
    """A GPU version of the same label, planned on this CPU: the stored points are the CPU's."""
    out, _ = swept
    params = write_params(tmp_path / "gpu.yaml", grid=GRID, systems=[{**CPU, "device": "cuda"}])
    with pytest.raises(UsageError, match=r"holds 3 points this params file does not define \(device cpu there, "
                                         r"cuda here\)"):
        plan(params, out_dir=out)


def test_derived_output_lengths_switched_off_are_refused(tmp_path, monkeypatch):
    fake_measuring(monkeypatch)
    out = str(tmp_path / "out")
    grid = {**GRID, "output_lens": [2, 4]}
    run_sweep(write_params(tmp_path / "a.yaml", grid=grid, derive_output_lens=True), out_dir=out, progress=False)
    with pytest.raises(UsageError, match="derive_output_lens true there, false here"):
        run_sweep(write_params(tmp_path / "b.yaml", grid=grid), out_dir=out, progress=False)


def test_a_grown_grid_is_a_resume(tmp_path, swept):
    out, calls = swept
    grown = write_params(tmp_path / "grown.yaml", grid={"input_lens": [16, 32], "output_lens": [4],
                                                        "batch_sizes": [1, 2, 4, 8]})
    pl = plan(grown, out_dir=out)
    assert pl.count("done") == 3 and pl.stale == 0  # B = 4 was the old grid's end: its search goes on to 8
    out_come = run_sweep(grown, out_dir=out, progress=False)
    assert out_come.skipped == 3 and sorted((c[2], c[4]) for c in calls) == [(16, 8), (32, 1), (32, 2), (32, 4),
                                                                            (32, 8)]
    df = load_results(out)
    assert len(df) == 8 and df["point_key"].nunique() == 8


def test_other_labels_are_left_alone(tmp_path, swept):
    """Only the sweep's own labels are checked: another system in the same directory is not its business."""
    out, calls = swept
    other = write_params(tmp_path / "other.yaml", grid={**GRID, "batch_sizes": [1]},
                         systems=[{**CPU, "label": "cpu-eager", "attn_implementation": "eager"}])
    assert run_sweep(other, out_dir=out, progress=False).measured == 1
    assert plan(other, out_dir=out).other_points == 3


def test_discard_stale_moves_the_old_generation_aside_in_one_step(tmp_path, swept, capsys):
    out, calls = swept
    old_keys = set(load_results(out)["point_key"])
    changed = write_params(tmp_path / "changed.yaml", grid=GRID, repeats=3)
    r = call_cli("sweep", changed, "--out", out, "--dry-run", "--discard-stale")
    assert r.returncode == 0 and "--discard-stale would move 3 points" in r.stdout
    assert not os.path.exists(os.path.join(out, "stale"))  # a dry run moves nothing
    outcome = run_sweep(changed, out_dir=out, progress=False, discard_stale=True)
    assert outcome.measured == 3
    err = capsys.readouterr().err
    [moved] = [line for line in err.splitlines() if line.startswith("perfkit: moved")]
    [dest] = glob.glob(os.path.join(out, "stale", "*"))
    assert moved == f"perfkit: moved 3 points of cpu that this params file does not define to {dest}"
    assert {os.path.basename(f)[:-8] for f in glob.glob(os.path.join(dest, "*.parquet"))} == old_keys
    df = load_results(out)
    assert set(df["repeats"]) == {3} and not set(df["point_key"]) & old_keys
    assert call_cli("summary", out).returncode == 0  # one definition again


def test_perfkit_run_rows_under_a_sweep_label_are_refused(tmp_path, swept):
    """`perfkit run` appends (its key holds its run id): a sweep never counts such a row as one of its
    points, so it is refused like any point the params file does not define."""
    out, _ = swept
    write_point(out, make_row("cpu", "tiny-llama2-13b", 16, 4, 2, [4.0] * 2, [10.0] * 2, warmup=1, seed=0))
    params = write_params(tmp_path / "same.yaml", grid=GRID)
    with pytest.raises(UsageError, match=r"holds 1 point this params file does not define \(1 from perfkit run\)"):
        run_sweep(params, out_dir=out, progress=False)


# ---- readers ---------------------------------------------------------------------------------------

def test_readers_refuse_a_label_holding_two_definitions(tmp_path):
    mixed = study_rows("cpu", 1.0) + [make_row("cpu", "tiny-llama2-13b", 32, 8, 8, [80.0] * 3, [170.0] * 3,
                                               dtype="bfloat16")]
    d = write_rows(tmp_path / "mixed", mixed)
    base = write_rows(tmp_path / "base", study_rows("base", 1.0))
    for argv, where in ((["summary", d], "results directory"), (["compare", f"{d}:cpu", base], "target results "
                                                                                            "directory")):
        r = call_cli(*argv)
        assert r.returncode == 2 and r.stdout == ""
        [line] = r.stderr.splitlines()
        assert f"system 'cpu' in {where} {d!r} holds several definitions (dtype bfloat16, float32)" in line
        assert "expected one definition per label" in line
    with pytest.raises(UsageError, match="holds several definitions"):
        load_for_report(d, "cpu")


def test_readers_refuse_mixed_repeats_and_name_every_difference(tmp_path):
    rows = study_rows("cpu", 1.0, batches=(1, 2)) + [
        make_row("cpu", "tiny-llama2-13b", 32, 8, 4, [40.0] * 5, [100.0] * 5, warmup=1, seed=3)]
    d = write_rows(tmp_path / "d", rows)
    r = call_cli("summary", d)
    assert r.returncode == 2
    assert "holds several definitions (repeats 3, 5)" in r.stderr  # warm-up and seed: one value each, given once


def test_a_repeated_measurement_of_one_definition_is_not_a_mixture(tmp_path):
    """`perfkit run` twice at one point (same definition): not refused, and the newest row is the figure."""
    old = make_row("cpu", "tiny-llama2-13b", 32, 8, 1, [10.0] * 3, [50.0] * 3, run_id="r1")
    new = make_row("cpu", "tiny-llama2-13b", 32, 8, 1, [20.0] * 3, [60.0] * 3)
    new["point_key"], new["created_utc"] = "b" * 20, "2999-01-01T00:00:00Z"
    d = write_rows(tmp_path / "d", [old, new])
    r = call_cli("summary", d)
    assert r.returncode == 0, r.stderr
    import perfkit

    ttft = perfkit.summarize(load_results(d))["ttft"]
    assert list(ttft["ttft_ms"]) == [20.0]


def test_a_longer_output_length_under_derived_lengths_is_another_definition(tmp_path, monkeypatch):
    """With derive_output_lens, O = 2 is read off the run at the longest O: adding O = 8 changes that run."""
    fake_measuring(monkeypatch)
    out = str(tmp_path / "out")
    grid = {**GRID, "output_lens": [2, 4]}
    run_sweep(write_params(tmp_path / "a.yaml", grid=grid, derive_output_lens=True), out_dir=out, progress=False)
    longer = write_params(tmp_path / "b.yaml", grid={**grid, "output_lens": [2, 4, 8]}, derive_output_lens=True)
    with pytest.raises(UsageError, match=r"holds 6 points this params file does not define \(output lengths read "
                                         r"off a run at O=4 there, O=8 here\)"):
        plan(longer, out_dir=out)
