"""JSON nested thousands of levels deep (hostile_files.DEEP_JSON), wherever perfkit reads JSON it did not
just write: a run record, a probe record, the sweep's lock file, an executed notebook beside its report. A
parser recursing through it raises RecursionError; every reader names the file in one line instead and
leaves it out, as it does any other damage. (A run record: hostile_files.RUN_DAMAGE["deep"], through
test_integrity.py; a checkpoint's config.json: test_checkpoints.py.)"""

import fcntl
import os

import pytest
from helpers import call_cli, study_rows, write_rows
from hostile_files import DEEP_JSON, deeply_nested

from perfkit import roofline
from perfkit.errors import UsageError
from perfkit.results import LOCK, lock


def test_a_deeply_nested_probe_record_is_named_and_left_out(tmp_path):
    t = write_rows(tmp_path / "t", study_rows("cpu", 1.0))
    os.makedirs(os.path.join(t, "probes"))
    path = os.path.join(t, "probes", "deep.json")
    deeply_nested(path)
    with pytest.raises(ValueError, match="nested too deeply"):
        roofline.load_probe(path)  # one file, named directly
    r = call_cli("summary", t)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    [line] = [line for line in r.stderr.splitlines() if path in line]
    assert line == (f"perfkit: warning: skipped {path}: nested too deeply, expected a probe record (a JSON object "
                    "of a few levels)")


def test_a_lock_file_holding_deep_json_while_held_names_no_holder(tmp_path):
    """Held by a process that has not written its record, the lock holds whatever was there: the refusal
    says the holder is unnamed, and reads the file without a RecursionError."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(DEEP_JSON)
    fd = os.open(out / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another holder (a second open file conflicts with it)
        with pytest.raises(UsageError, match=r"in use by another sweep \(its holder has not written its name yet\)"):
            with lock(str(out)):
                pass
    finally:
        os.close(fd)
    assert (out / LOCK).read_text() == DEEP_JSON


def test_a_deeply_nested_notebook_is_left_out_of_the_index(tmp_path):
    pytest.importorskip("nbformat")  # the report extra (a core-only install has none)
    import perfkit.report.publish as publish

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "deep.ipynb").write_text(DEEP_JSON)
    (reports / "deep.html").write_text("<p>a page</p>")
    r = call_cli("publish", "index", "--reports", reports)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    notebook = str(reports / "deep.ipynb")
    assert [line for line in r.stderr.splitlines() if notebook in line] == [
        f"perfkit: warning: skipped {notebook}: nested too deeply, expected an executed notebook"]
    with open(publish.build_index(str(reports)), encoding="utf-8") as f:
        assert "deep.html" not in f.read()
