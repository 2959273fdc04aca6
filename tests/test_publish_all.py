"""`perfkit publish all` checks everything before the first notebook runs: RESULTS_ROOT/comparisons.yaml as
a params file is checked (tests/hostile_yaml.py's COMPARISONS: a list of {target, baseline} strings, no
key twice, no tag, bounded, UTF-8), each comparison's sides as `perfkit compare` checks them, and the
reports folder for every report's files. A refusal is one line, exit 2, and no report rendered."""

import os

import pytest
from helpers import call_cli, study_rows, write_rows
from hostile_yaml import COMPARISONS, COMPARISONS_BASE

import perfkit.report.publish as publish


@pytest.fixture
def root(tmp_path):
    """A results root holding a (system cpu) and b (system gpu)."""
    root = tmp_path / "root"
    write_rows(root / "a", study_rows("cpu", 1.0))
    write_rows(root / "b", study_rows("gpu", 0.5))
    return root


@pytest.fixture
def rendered(monkeypatch):
    """The reports publish_all renders, in order (name), none of them run."""
    made = []
    monkeypatch.setattr(publish, "_publish", lambda notebook, name, reports, parameters, **kw:
                        made.append(name) or os.path.join(reports, f"{name}.html"))
    return made


def _write(root, text) -> str:
    path = os.path.join(root, "comparisons.yaml")
    with open(path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_a_bad_comparisons_file_is_refused_before_any_report(root, tmp_path, rendered, name):
    text, fragment = COMPARISONS[name]
    spec = _write(root, text)
    r = call_cli("publish", "all", root, "--reports", tmp_path / "reports")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith(f"perfkit: error: {spec}: ") and fragment in lines[0], lines[0][:600]
    assert len(lines[0]) < 1000
    assert rendered == [] and not os.path.exists(tmp_path / "reports")


def test_a_good_comparisons_file_renders_every_report_then_each_comparison(root, tmp_path, rendered):
    _write(root, COMPARISONS_BASE)
    r = call_cli("publish", "all", root, "--reports", tmp_path / "reports")
    assert r.returncode == 0, r.stderr
    assert rendered == ["report-a-cpu", "report-b-gpu", "compare-cpu-vs-gpu", "compare-gpu-vs-cpu"]


def test_an_empty_comparisons_file_is_no_comparison(root, tmp_path, rendered):
    _write(root, "")
    assert call_cli("publish", "all", root, "--reports", tmp_path / "reports").returncode == 0
    assert rendered == ["report-a-cpu", "report-b-gpu"]


def test_a_report_whose_file_is_a_directory_is_refused_before_the_first_is_rendered(root, tmp_path, monkeypatch):
    """The reports folder holds a directory where the second report's page goes: publish all refuses it
    before rendering the first (each notebook stands in for papermill's, writing a notebook at once)."""
    pytest.importorskip("nbformat")  # the report extra (a core-only install has none)
    import nbformat

    def run(name, out_ipynb, parameters, log_output=False):
        nbformat.write(nbformat.v4.new_notebook(), out_ipynb)

    monkeypatch.setattr(publish, "run_notebook", run)
    monkeypatch.setattr(publish, "to_html", lambda ipynb, out_html: publish.atomic_write(
        out_html, lambda f: f.write(b"<html></html>")))
    reports = tmp_path / "reports"
    (reports / "report-b-gpu.html").mkdir(parents=True)
    r = call_cli("publish", "all", root, "--reports", reports)
    assert r.returncode == 2 and "holds a directory 'report-b-gpu.html' where the file report-b-gpu.html goes" \
        in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert sorted(os.listdir(reports)) == ["report-b-gpu.html"]  # nothing rendered, not even the first
