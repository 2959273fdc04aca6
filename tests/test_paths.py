"""Every output path is checked before any work: a path that cannot be written is refused in one line,
exit 2, with nothing written, by every command that writes (run --out, sweep --out, probe --out DIR or
FILE.json, summary --csv, compare --csv, publish --reports), never found out after the measuring."""

import os
import sys

import pytest
from helpers import call_cli, study_rows, write_params, write_rows

from perfkit.errors import UsageError
from perfkit.results import check_out_dir, check_out_file

LINUX = sys.platform.startswith("linux")


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in files + dirs)


@pytest.fixture
def place(tmp_path):
    """A scratch folder holding a file, a broken link and a folder named like a .json file."""
    root = tmp_path / "place"
    root.mkdir()
    (root / "a-file").write_text("not a directory")
    os.symlink(root / "nowhere", root / "broken-link")
    (root / "record.json").mkdir()
    results = root / "results-with-a-points-file"
    results.mkdir()
    (results / "points").write_text("not a directory")
    return root


# (name, the path given, a fragment of the refusal); "{place}" is the fixture's folder
BAD_DIRS = [
    ("a NUL byte", "{place}/out\0dir", "contains a NUL byte"),
    ("an existing file", "{place}/a-file", "is a file"),
    ("a path under a file", "{place}/a-file/below", "lies under the file"),
    ("a broken link", "{place}/broken-link", "is a broken link"),
    ("a name too long", "{place}/" + "n" * 300, "is too long"),
    ("a pseudo file system", "/proc/perfkit-out", "cannot be written"),
    ("a read-only pseudo file system", "/sys/perfkit-out", "cannot be written"),
]


def _commands(tmp_path):
    """Each command that writes, as a function of the bad path, with the flag that names it."""
    params = write_params(tmp_path / "p.yaml")
    results = write_rows(tmp_path / "results", study_rows("cpu", 1.0))
    other = write_rows(tmp_path / "other", study_rows("gpu", 0.5))
    return {
        "run --out": lambda bad: ["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2",
                                  "--out", bad],
        "sweep --out": lambda bad: ["sweep", params, "--out", bad, "--no-progress"],
        "sweep --dry-run --out": lambda bad: ["sweep", params, "--out", bad, "--dry-run"],
        "probe --out": lambda bad: ["probe", "--device", "cpu", "--budget-s", "0.1", "--out", bad],
        "summary --csv": lambda bad: ["summary", results, "--csv", bad],
        "compare --csv": lambda bad: ["compare", other, results, "--csv", bad, "--n-boot", "100"],
        "publish index --reports": lambda bad: ["publish", "index", "--reports", bad],
        "publish report --reports": lambda bad: ["publish", "report", results, "--reports", bad],
    }


COMMANDS = ["run --out", "sweep --out", "sweep --dry-run --out", "probe --out", "summary --csv", "compare --csv",
            "publish index --reports", "publish report --reports"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_bad_output_path_is_refused_before_any_work(tmp_path, place, command):
    make = _commands(tmp_path)[command]
    before = _tree(tmp_path)
    for name, template, fragment in BAD_DIRS:
        if template.startswith(("/proc", "/sys")) and not (LINUX and os.path.isdir(template.rsplit("/", 1)[0])):
            continue
        bad = template.format(place=place)
        r = call_cli(*make(bad))
        lines = r.stderr.strip().splitlines()
        if command == "sweep --dry-run --out" and fragment == "cannot be written":
            # a plan only reads: where nothing can be written it still says what a sweep would measure
            assert r.returncode == 0 and "to measure:" in r.stdout, (name, r.stderr[-2000:])
            continue
        assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        assert len(lines[0]) < 700, (name, lines[0])
    assert _tree(tmp_path) == before  # nothing written, not even a temporary file


def test_a_results_directory_whose_points_folder_is_a_file_is_refused(tmp_path, place):
    bad = place / "results-with-a-points-file"
    make = _commands(tmp_path)
    for command in ("run --out", "sweep --out", "sweep --dry-run --out"):
        r = call_cli(*make[command](bad))
        assert r.returncode == 2 and "holds a file 'points' where its points/ directory goes" in r.stderr, r.stderr


def test_probe_out_json_that_is_a_folder_or_under_a_file(tmp_path, place):
    for bad, fragment in ((place / "record.json", "is a directory"),
                          (place / "a-file" / "x.json", "lies under the file"),
                          (f"{place}/x\0.json", "contains a NUL byte")):
        r = call_cli("probe", "--device", "cpu", "--budget-s", "0.1", "--out", bad)
        assert r.returncode == 2 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(os.listdir(place / "record.json")) == []


def test_a_csv_folder_holding_a_folder_where_a_table_goes(tmp_path):
    results = write_rows(tmp_path / "results", study_rows("cpu", 1.0))
    csv = tmp_path / "csv"
    (csv / "study.csv").mkdir(parents=True)
    r = call_cli("summary", results, "--csv", csv)
    assert r.returncode == 2 and "holds a directory 'study.csv'" in r.stderr, r.stderr


@pytest.mark.skipif(not LINUX, reason="/proc is Linux's")
def test_the_write_probe_catches_what_os_access_does_not():
    # As root, os.access says /proc is writable; no file can be created there.
    assert os.access("/proc", os.W_OK) or os.geteuid() != 0
    with pytest.raises(UsageError, match=r"cannot be written: no file can be created in '/proc'"):
        check_out_dir("/proc/perfkit-results")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to a read-only folder")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UsageError, match="cannot be written"):
            check_out_dir(str(ro / "out"))
    finally:
        ro.chmod(0o755)


def test_good_paths_pass_and_nothing_is_left_behind(tmp_path):
    check_out_dir(str(tmp_path / "new" / "deeper"))
    check_out_dir(str(tmp_path))
    check_out_file(str(tmp_path / "new" / "probe.json"), what="a .json file")
    assert os.listdir(tmp_path) == []  # the write probe removed its file; nothing was created


# ---- obstacles inside the output tree: found before any measuring or writing -----------------------------

GRID = {"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2]}


def _stored(out) -> list[str]:
    """What a sweep writes: its points/ and runs/ (reading leaves its compacted copy and the lock file)."""
    return sorted(os.path.join(sub, f) for sub in ("points", "runs") for f in os.listdir(os.path.join(out, sub)))


def _swept(tmp_path, monkeypatch):
    """A sweep of batches 1 and 2 done (measured instantly), and its params file grown to batch 4."""
    from helpers import fake_measuring

    from perfkit.sweep import run_sweep

    calls = fake_measuring(monkeypatch)
    out = str(tmp_path / "out")
    run_sweep(write_params(tmp_path / "p.yaml", grid=GRID), out_dir=out, progress=False)
    del calls[:]
    return calls, out, write_params(tmp_path / "p.yaml", grid={**GRID, "batch_sizes": [1, 2, 4]})


def test_a_directory_where_a_planned_point_goes_is_refused_before_measuring(tmp_path, monkeypatch):
    from perfkit.params import load_params
    from perfkit.results import point_path
    from perfkit.sweep.planning import key_of
    from perfkit.sweep.search import search_specs

    calls, out, params = _swept(tmp_path, monkeypatch)
    p = load_params(params)
    blocked = point_path(out, key_of(p, search_specs(p, list(p.systems))[0], 4, 4))
    os.makedirs(blocked)
    before = _stored(out)
    for args in (["--dry-run"], ["--no-progress"]):
        r = call_cli("sweep", params, "--out", out, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert lines[0] == (f"perfkit: error: {blocked} is a directory where a point of this plan is to be written: "
                            "expected no directory there; move it away, or use another --out"), lines[0]
    assert calls == [] and _stored(out) == before  # nothing measured, nothing written


def test_a_file_where_discard_stale_moves_points_is_refused_before_measuring(tmp_path, monkeypatch):
    calls, out, _ = _swept(tmp_path, monkeypatch)
    params = write_params(tmp_path / "p.yaml", grid=GRID, repeats=3)  # another definition: every point stale
    with open(os.path.join(out, "stale"), "w") as f:
        f.write("someone's notes")
    before = _stored(out)
    for args in (["--dry-run"], ["--no-progress"]):
        r = call_cli("sweep", params, "--out", out, "--discard-stale", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert "holds a file 'stale' where its stale/ directory goes" in lines[0], lines[0]
    assert calls == [] and _stored(out) == before


def _no_notebook(monkeypatch):
    """Publishing stops before papermill: a notebook that runs fails the test."""
    import perfkit.report.publish as publish

    def ran(*args, **kwargs):
        raise AssertionError("a notebook ran before the reports folder was checked")

    monkeypatch.setattr(publish, "run_notebook", ran)


@pytest.mark.parametrize("obstacle", ["x.html", "x.ipynb", "index.html"])
def test_a_directory_where_a_report_or_the_index_goes_is_refused_before_the_notebook_runs(
        tmp_path, monkeypatch, obstacle):
    _no_notebook(monkeypatch)
    results = write_rows(tmp_path / "results", study_rows("cpu", 1.0))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "x.ipynb").write_text("the old notebook") if obstacle != "x.ipynb" else None
    (reports / obstacle).mkdir()
    before = {p: open(reports / p).read() for p in os.listdir(reports) if os.path.isfile(reports / p)}
    commands = [("publish", "report", results, "--name", "x", "--reports", reports)]
    if obstacle == "index.html":
        commands.append(("publish", "index", "--reports", reports))
    for args in commands:
        r = call_cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert f"holds a directory '{obstacle}' where the file {obstacle} goes" in lines[0], lines[0]
    assert {p: open(reports / p).read() for p in os.listdir(reports) if os.path.isfile(reports / p)} == before
