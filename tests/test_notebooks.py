"""The notebooks, executed with papermill on tiny inputs, and the HTML they publish."""

import json
import os
import re

import nbformat
import pytest
from helpers import ROOT, make_row, publish, study_rows, write_rows

NOTEBOOKS = ["sweep", "report", "compare", "explore"]


def html_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_committed_without_outputs(name):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, name
    for cell in code:
        assert cell.get("outputs") == [], f"{name}.ipynb has outputs: clear them before committing"
        assert cell.get("execution_count") is None, f"{name}.ipynb has execution counts"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}.ipynb needs exactly one cell tagged 'parameters'"
    # typed literals with a trailing comment, one per line
    for line in tagged[0].source.splitlines():
        assert re.match(r"^\w+ = .+  # .+", line), f"{name}.ipynb parameters line {line!r}"


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    base = tmp_path_factory.mktemp("results")
    # target twice as fast everywhere; one extra point on each side; an OOM at B=8 on the target only
    t = write_rows(base / "target", study_rows("fast", 0.5, extra_points=[("tiny-llama2-13b", 64, 8, 1)]) +
                   [make_row("fast", "tiny-mistral-7b", 32, 8, 8, [], [], status="oom")])
    b = write_rows(base / "baseline", study_rows("slow", 1.0, extra_points=[("tiny-mistral-7b", 16, 8, 1)]) +
                   [make_row("slow", "tiny-mistral-7b", 32, 8, 8, [90] * 3, [200] * 3)])
    return t, b


@pytest.mark.slow  # papermill
def test_report_notebook_writes_tables_plots_and_index(sides, tmp_path):
    out = tmp_path / "reports"
    r = publish("report", sides[1], "--reports", str(out), "--name", "base")
    assert r.returncode == 0, r.stderr
    page = html_text(out / "base.html")
    # the study's tables, per model, with the hand-made values
    for heading in ("Time to first token, batch 1", "Max prefill throughput (batch &gt; 1)",
                    "Single-user throughput, batch 1", "Multi-user total max throughput (batch &gt; 1)",
                    "TPOT and peak memory by batch", "Out-of-memory boundary", "What each metric means",
                    "Where these numbers come from", "Speed of light", "Throughput at a service level"):
        assert heading in page, heading
    # the best throughput within MLPerf's two default bounds: every hand-made point meets both (ttft ≤ 40 ms,
    # tpot ≤ 9 ms), so each is the largest batch's
    service = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.split("Throughput at a service level", 1)[1]))
    assert "server ttft ≤ 2000 ms, tpot ≤ 100 ms" in service and "interactive ttft ≤ 500 ms, tpot ≤ 30 ms" in service
    assert "tiny-llama2-13b" in page and "tiny-mistral-7b" in page
    assert "Test CPU" in page and "abc123" in page  # provenance: device and commit
    assert "tiny scaled-down stand-ins" in page  # the plain warning
    assert page.count("<table") >= 10
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) >= 3  # embedded plots
    # self-contained and without code
    assert not re.search(r'<script[^>]+src=', page) and not re.search(r'<link[^>]+href="http', page)
    assert "class=\"jp-InputArea-editor" not in page and "class=\"highlight" not in page
    assert "load_for_report" not in page and "emit_meta(" not in page
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page  # no warnings leaked into the published page
    index = html_text(out / "index.html")
    assert "base.html" in index and "Test CPU" in index and "slow" in index


@pytest.mark.slow  # papermill
def test_compare_notebook_ratios_and_one_sided_points(sides, tmp_path):
    out = tmp_path / "reports"
    r = publish("compare", sides[0], sides[1], "--reports", str(out), "--name", "cmp")
    assert r.returncode == 0, r.stderr
    nb = nbformat.read(out / "cmp.ipynb", as_version=4)
    page = html_text(out / "cmp.html")
    # every study ratio is exactly 0.5 with a degenerate interval: the target is better everywhere
    assert "fast (target) vs slow (baseline)" in page
    assert "target better in 10, worse in 0, within noise in 0" in page
    assert "0.500 – 0.500" in page and "0.500 [0.500 – 0.500]" in page
    study_part, service_part = page.split("At a service level", 1)
    verdict_cells = re.findall(r">\s*(target better|target worse|within noise)\s*</td>", study_part)
    assert verdict_cells.count("target better") == 10 and len(verdict_cells) == 10  # the 10 study figures
    # at a service level: the two workloads on both sides, under MLPerf's two default bounds
    slo_verdicts = re.findall(r">\s*(target better|target worse|within noise|none meets it[^<]*)\s*</td>",
                              service_part)
    assert slo_verdicts == ["target better"] * 4
    assert "tok/s per user ≥" in service_part
    # the point measured only on one side of each, and the OOM, are listed
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "tiny-llama2-13b 64 8 1 ok fast only (target)" in text
    assert "tiny-mistral-7b 16 8 1 ok slow only (baseline)" in text
    assert "target oom, baseline ok" in text
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) >= 4  # heatmap, bars, 2 Pareto
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page
    meta = [o["data"]["application/vnd.perfkit.meta+json"] for c in nb.cells for o in c.get("outputs", [])
            if "application/vnd.perfkit.meta+json" in o.get("data", {})]
    assert meta and meta[0]["kind"] == "comparison" and meta[0]["systems"] == ["fast", "slow"]


@pytest.mark.slow  # papermill
def test_compare_notebook_of_one_system_on_two_machines(tmp_path):
    """Both sides under one label (the usual case: a system before and after an upgrade): every table and
    plot tells the sides apart by side."""
    t = write_rows(tmp_path / "after", study_rows("same", 0.5) +
                   [make_row("same", "tiny-mistral-7b", 32, 8, 8, [], [], status="oom")])
    b = write_rows(tmp_path / "before", study_rows("same", 1.0))
    out = tmp_path / "reports"
    r = publish("compare", f"{t}:same", f"{b}:same", "--reports", str(out), "--name", "same")
    assert r.returncode == 0, r.stderr
    assert "same (target) vs same (baseline): of 10 study figures, target better in 10" in r.stdout
    page = html_text(out / "same.html")
    for unit in ("ms", "tok/s"):  # the study's figures, side by side, and at a service level
        assert f"same (target) ({unit})" in page and f"same (baseline) ({unit})" in page, unit
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "same (target) tiny-mistral-7b 32 8 8 oom" in text  # the point without timings, and its side
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) >= 4
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page


@pytest.mark.slow  # papermill
def test_compare_mismatch_is_one_clear_error_and_writes_nothing(tmp_path):
    t = write_rows(tmp_path / "t", study_rows("t", 1.0, models=("tiny-llama2-13b",)))
    b = write_rows(tmp_path / "b", study_rows("b", 1.0, models=("tiny-mistral-7b",)))
    out = tmp_path / "reports"
    r = publish("compare", t, b, "--reports", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "share no models" in lines[0] and "tiny-mistral-7b" in lines[0], r.stderr
    assert not out.exists()
    # the notebook itself stops with the same message
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="share no models"):
        papermill.execute_notebook(os.path.join(ROOT, "notebooks", "compare.ipynb"), str(tmp_path / "x.ipynb"),
                                   parameters={"target_dir": t, "baseline_dir": b, "target_system": "",
                                               "baseline_system": ""}, kernel_name="python3", progress_bar=False)


@pytest.mark.parametrize("args, expected", [
    (["report", "/nonexistent/results"], "does not exist"),
    (["compare", "/nonexistent/a", "/nonexistent/b"], "does not exist"),
    (["sweep", "/nonexistent.yaml"], "nonexistent.yaml"),
])
def test_bad_input_is_one_line_exit_2(args, expected, tmp_path):
    r = publish(*args, "--reports", str(tmp_path / "out"))
    assert r.returncode == 2 and expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_report_of_unknown_system_is_usage_error(sides, tmp_path):
    r = publish("report", sides[0], "--system", "nope", "--reports", str(tmp_path / "out"))
    assert r.returncode == 2 and "'nope'" in r.stderr and "fast" in r.stderr


@pytest.mark.slow  # papermill
def test_sweep_notebook_measures_and_shows_the_points(tmp_path):
    import yaml

    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "name": "nbtest", "models": ["tiny-llama2-13b"],
        "systems": [{"label": "cpu", "backend": "hf-loop", "dtype": "float32", "device": "cpu",
                     "attn_implementation": "sdpa"}],
        "grid": {"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2]},
        "warmup": 0, "repeats": 2, "seed": 0, "search": {"min_gain": None}}))
    results, out = tmp_path / "results", tmp_path / "reports"
    r = publish("sweep", str(params), "--out", str(results), "--reports", str(out), "--name", "sw")
    assert r.returncode == 0, r.stderr
    from perfkit.results import load_results

    df = load_results(results)
    assert sorted(df["batch"]) == [1, 2] and set(df["status"]) == {"ok"}
    page = html_text(out / "sw.html")
    assert "measured 2 points" in page and "tiny-llama2-13b" in page and "<table" in page


def test_notebooks_work_from_the_project_they_run_in(tmp_path, monkeypatch):
    """A notebook's relative paths resolve from the nearest folder at or above where it runs that holds
    params/ and notebooks/, wherever perfkit is installed from (a wheel, another checkout)."""
    from perfkit.report.notebook import work_from_project_root

    project = tmp_path / "project"
    (project / "params").mkdir(parents=True)
    (project / "notebooks" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(project / "notebooks" / "deeper")
    work_from_project_root()
    assert os.getcwd() == str(project)
    lone = tmp_path / "lone" / "notebooks"  # no folder at or above holds both: the notebook stays where it is
    lone.mkdir(parents=True)
    monkeypatch.chdir(lone)
    work_from_project_root()
    assert os.getcwd() == str(lone)


@pytest.mark.slow  # papermill
def test_explore_notebook_reads_as_the_command_line_does_in_the_project_it_runs_in(tmp_path):
    """explore.ipynb, run in a project other than perfkit's own checkout, reads `results/mine` of that
    project, as `perfkit summary` reads it: a damaged file named, a point measured twice shown by its newest
    row (not their mean), a label holding two definitions refused."""
    import papermill

    project = tmp_path / "elsewhere"
    (project / "params").mkdir(parents=True)
    (project / "notebooks").mkdir()
    old = make_row("mine", "tiny-llama2-13b", 32, 8, 1, [10.0] * 3, [45.0] * 3)  # tpot 5 ms
    new = make_row("mine", "tiny-llama2-13b", 32, 8, 1, [10.0] * 3, [80.0] * 3)  # tpot 10 ms, measured later
    new["point_key"], new["created_utc"] = "b" * 20, "2999-01-01T00:00:00Z"
    d = write_rows(project / "results" / "mine", [old, new])
    with open(os.path.join(d, "points", "damaged.parquet"), "wb") as f:
        f.write(b"not parquet")
    explore = os.path.join(ROOT, "notebooks", "explore.ipynb")
    nb = papermill.execute_notebook(explore, str(tmp_path / "e.ipynb"), parameters={"results_dir": "results/mine"},
                                    cwd=str(project / "notebooks"), kernel_name="python3", progress_bar=False)
    stderr = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr")
    assert "damaged.parquet: not readable as Parquet" in stderr
    pivot = next(c for c in nb.cells if ".pivot(" in c.source).outputs[0]["data"]["text/plain"]  # tpot at B = 1
    assert "mine" in pivot and "10.0" in pivot and "7.5" not in pivot
    write_rows(project / "results" / "mine", [make_row("mine", "tiny-llama2-13b", 64, 8, 1, [10.0] * 3, [45.0] * 3,
                                                       dtype="float16")])
    with pytest.raises(papermill.PapermillExecutionError, match="holds several definitions"):
        papermill.execute_notebook(explore, str(tmp_path / "e2.ipynb"), parameters={"results_dir": "results/mine"},
                                   cwd=str(project / "notebooks"), kernel_name="python3", progress_bar=False)


@pytest.mark.slow  # papermill
def test_explore_notebook_runs(sides, tmp_path):
    import papermill

    nb = papermill.execute_notebook(os.path.join(ROOT, "notebooks", "explore.ipynb"), str(tmp_path / "e.ipynb"),
                                    parameters={"results_dir": sides[0]}, kernel_name="python3", progress_bar=False)
    outputs = json.dumps([c.get("outputs") for c in nb.cells])
    assert "tiny-mistral-7b" in outputs and "max_output_tok_s" in outputs
