"""Nothing a user or a file supplies runs in a reader's browser, and publishing never leaves partial files.

Labels, names, paths and messages from results (tests/hostile_text.py) show in reports, comparisons and
the index as text, never as markup, Markdown or mathtext; report names stay inside the reports folder;
results where no point has timings still render (the out-of-memory boundary and the errors are results);
a notebook that fails leaves nothing behind. Tests that run papermill are marked slow.
"""

import html
import io
import os
import re

import nbformat
import pandas as pd
import pytest
from helpers import call_cli, make_row, publish, study_rows, write_rows
from hostile_text import ERROR, MD_BOLD, MODELS, PAYLOADS, RAW_MARKUP, SCRIPT, SHOWN, TARGET, hostile_rows

from perfkit.errors import UsageError
from perfkit.report import publish as pub
from perfkit.report import tables


def page_text(page: str) -> str:
    """What a reader sees of an HTML page: no styles, scripts or tags, entities decoded, spaces collapsed."""
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", page, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def seen(value: str) -> str:
    return " ".join(value.split())


def assert_no_markup(page: str, where: str) -> None:
    for raw in RAW_MARKUP:
        at = page.find(raw)
        assert at < 0, f"{where}: unescaped {raw!r}: …{page[max(0, at - 200): at + 100]}…"
    assert not re.search(r"""href\s*=\s*["']?\s*javascript:""", page, re.IGNORECASE), where


def files_below(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


# ---- escaping, without a notebook ---------------------------------------------------------------------

def test_md_escape_renders_every_payload_as_typed():
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    for text in PAYLOADS + ["# heading", "1. item", "- item", "a\nb", "x\\", "`code`", "a_b_c *y*", "<http://x>"]:
        for source in (f"### {tables.md_escape(text)}", f"**bold** {tables.md_escape(text)} _end_"):
            out = markdown2html_mistune(source)
            assert_no_markup(out, text)
            assert "<a href" not in out.replace('<a class="anchor-link" href', ""), (text, out)
            assert seen(text) in page_text(out), (text, out)


def test_stylers_escape_cells_and_headers():
    rows = pd.DataFrame(hostile_rows(TARGET, 1.0))
    stylers = [tables.text_table(tables.provenance(rows)), tables.text_table(tables.not_measured(rows)),
               tables.speed_of_light(rows), tables.text_table(pd.DataFrame({SCRIPT: [MD_BOLD]}))]
    stylers += [tables.number_table(t) for per_model in tables.model_tables(rows).values() for t in per_model.values()
                if len(t)]
    for styler in stylers:
        out = styler.to_html()
        assert_no_markup(out, out[:200])
    shown = page_text("".join(s.to_html() for s in stylers))
    for text in (TARGET, *MODELS, ERROR, rows["device_name"].iloc[0], rows["git_commit"].iloc[0]):
        assert seen(text) in shown, text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in stylers[0].to_html()  # a column header


def test_not_measured_lists_oom_and_errors_with_their_message_and_skipped_files():
    rows = pd.DataFrame(hostile_rows(TARGET, 1.0, fail_at=8))
    t = tables.not_measured(rows)
    assert list(t["status"]) == ["oom", "error"] and set(t["message"]) == {ERROR} and list(t["B"]) == [8, 8]
    assert tables.skipped_files(rows).empty  # before the loader records any
    rows.attrs["skipped_files"] = [("points/a.parquet", "not a Parquet file"), ("points/<b>.parquet", SCRIPT)]
    other = rows.iloc[:0].copy()
    other.attrs["skipped_files"] = [("points/a.parquet", "not a Parquet file")]
    s = tables.skipped_files(rows, other)
    assert list(s["file"]) == ["points/<b>.parquet", "points/a.parquet"] and SCRIPT in set(s.iloc[:, 1])
    assert "<b>.parquet" not in tables.text_table(s).to_html()


def test_plots_draw_hostile_labels_literally():
    import matplotlib.pyplot as plt

    import perfkit
    from perfkit.report import plots

    rows = pd.DataFrame(hostile_rows(TARGET, 1.0))
    figs = [plots.ttft_vs_input(perfkit.summarize(rows)["ttft"]), plots.throughput_vs_batch(rows, "output_tok_s"),
            plots.throughput_vs_batch(rows, "prefill_tok_s")]
    for fig in figs:
        fig.savefig(io.BytesIO(), format="png")  # mathtext in a label would raise here
        texts = [t.get_text() for t in fig.findobj(plt.Text)]
        assert any(r"\$\frac{1}{0}\$" in t for t in texts), texts
        assert all(len(t) < 100 for t in texts)
        plt.close(fig)
    failed = rows.assign(status="oom")
    assert plots.throughput_vs_batch(failed) is None and plots.ttft_vs_input(perfkit.summarize(failed)["ttft"]) is None
    assert plots.ratio_bars(pd.DataFrame(columns=["metric"]), "t", "b") is None


# ---- names and files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    ("../x", "x"), ("../../etc/passwd", "etc-passwd"), ("/abs/path", "abs-path"), ("a\\b", "a-b"),
    (".hidden", "hidden"), ("a\0b", "a-b"), ("<script>alert(1)</script>", "script-alert-1-script"),
    ("ok_name-1.2", "ok_name-1.2"), ("x" * 500, "x" * pub.NAME_MAX)])
def test_safe_name(given, expected):
    assert pub.safe_name(given) == expected


@pytest.mark.parametrize("given", ["", "..", "../..", "/", "\0", "模型", "...---"])
def test_safe_name_refuses_what_leaves_nothing(given):
    with pytest.raises(UsageError, match="no usable file name"):
        pub.safe_name(given)


def test_a_name_that_leaves_nothing_is_one_line_and_writes_nothing(tmp_path):
    res = write_rows(tmp_path / "res", study_rows("s", 1.0, models=("tiny-llama2-13b",), batches=(1,)))
    r = call_cli("publish", "report", res, "--reports", tmp_path / "out", "--name", "../..")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--name" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def fake_run(meta_title="t"):
    """A run_notebook that writes a small executed notebook with perfkit's metadata, without a kernel."""
    def run(name, out_ipynb, parameters, log_output=False):
        nb = nbformat.v4.new_notebook(metadata={"papermill": {"output_path": out_ipynb}})
        nb.cells.append(nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output(
            "display_data", data={pub.META_MIME: {"title": meta_title, "kind": "report"}, "text/plain": ""})]))
        nbformat.write(nb, out_ipynb)
        return out_ipynb
    return run


def test_name_with_a_path_stays_in_the_reports_folder(tmp_path, monkeypatch):
    res = write_rows(tmp_path / "res", study_rows("s", 1.0, models=("tiny-llama2-13b",), batches=(1,)))
    monkeypatch.setattr(pub, "run_notebook", fake_run())
    out = tmp_path / "deep" / "reports"
    page = pub.publish_report(res, reports_dir=str(out), name="../x")
    assert page == str(out / "x.html")
    assert files_below(tmp_path / "deep") == ["reports/index.html", "reports/x.html", "reports/x.ipynb"]
    assert nbformat.read(out / "x.ipynb", as_version=4).metadata["papermill"]["output_path"] == str(out / "x.ipynb")
    assert os.stat(out / "x.html").st_mode & 0o777 == 0o666 & ~_umask()  # not the 0600 of a temporary file


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def test_a_failing_notebook_leaves_no_file(tmp_path, monkeypatch):
    res = write_rows(tmp_path / "res", study_rows("s", 1.0, models=("tiny-llama2-13b",), batches=(1,)))

    def fail(name, out_ipynb, parameters, log_output=False):
        fake_run()(name, out_ipynb, parameters)  # papermill writes as it goes
        raise RuntimeError("cell 7 failed")

    monkeypatch.setattr(pub, "run_notebook", fail)
    with pytest.raises(RuntimeError, match="cell 7"):
        pub.publish_report(res, reports_dir=str(tmp_path / "new" / "reports"))
    assert not (tmp_path / "new").exists()  # the folders it made, removed again
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "other.html").write_text("x")
    with pytest.raises(RuntimeError):
        pub.publish_report(res, reports_dir=str(kept), name="r")
    assert files_below(kept) == ["other.html"]


def test_index_links_are_percent_encoded_and_its_text_escaped(tmp_path, monkeypatch):
    monkeypatch.setattr(pub, "run_notebook", fake_run(meta_title=SCRIPT))
    out = tmp_path / "reports"
    pub.publish_report(write_rows(tmp_path / "res", study_rows("s", 1.0, models=("tiny-llama2-13b",), batches=(1,))),
                       reports_dir=str(out), name="r")
    for name in ("javascript:alert(1)", "a#b?c=<d>"):  # put there by hand
        (out / f"{name}.html").write_text("x")
        (out / f"{name}.ipynb").write_text((out / "r.ipynb").read_text())
    with open(pub.build_index(str(out)), encoding="utf-8") as f:
        page = f.read()
    assert_no_markup(page, "index")
    hrefs = re.findall(r"href='([^']*)'", page)
    assert sorted(hrefs) == ["a%23b%3Fc%3D%3Cd%3E.html", "javascript%3Aalert%281%29.html", "r.html"], hrefs
    assert page_text(page).count(SCRIPT) == 3


# ---- published pages (papermill) ---------------------------------------------------------------------

@pytest.mark.slow
def test_hostile_report_comparison_and_index_show_text_not_markup(hostile_reports):
    reports = hostile_reports["reports"]
    pages = {k: hostile_reports[k] for k in ("report", "compare", "index")}
    for kind, path in pages.items():
        # default names from hostile labels and directories: safe names, inside the reports folder
        assert os.path.dirname(os.path.abspath(path)) == os.path.abspath(reports), path
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.html", os.path.basename(path)) and len(os.path.basename(path)) < 140
        with open(path, encoding="utf-8") as f:
            page = f.read()
        assert_no_markup(page, kind)
        assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, kind
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page, kind  # no warning, no traceback
        text = page_text(page)
        for value in SHOWN if kind != "index" else SHOWN[:-1]:  # the index has no error messages
            assert seen(value) in text, (kind, value)
    assert not [f for f in files_below(reports) if f.startswith(".") or "partial" in f]
    with open(pages["report"], encoding="utf-8") as f:
        report = page_text(f.read())
    # the points without timings, with their (escaped) message
    assert re.search(r"Points without timings .*? oom " + re.escape(seen(ERROR)), report)
    assert "error " + seen(ERROR) in report


def _one_model(tmp_path, name, status, error=None):
    rows = [make_row("s-" + name, "tiny-llama2-13b", 32, 8, b, [], [], status=status, error=error) for b in (1, 2, 4)]
    return write_rows(tmp_path / name, rows)


@pytest.mark.slow
def test_results_without_any_timing_render_report_and_comparison(tmp_path):
    oom = _one_model(tmp_path, "oom", "oom", "CUDA out of memory (prompt pass)")
    err = _one_model(tmp_path, "err", "error", "RuntimeError: <b>boom</b>")
    ok = write_rows(tmp_path / "ok", study_rows("base", 1.0, models=("tiny-llama2-13b",)))
    # A damaged file, where the loader leaves such files out (load_results(...).attrs["skipped_files"]).
    damaged = os.path.join(oom, "points", "<b>damaged.parquet")
    with open(damaged, "w") as f:
        f.write("not parquet")
    try:
        from perfkit.results import load_results

        skips = bool(load_results(oom).attrs.get("skipped_files"))
    except (OSError, ValueError):  # a loader that does not skip damaged files yet (pyarrow's ArrowInvalid)
        skips = False
    if not skips:
        os.unlink(damaged)
    out = tmp_path / "reports"
    for args in (["report", oom, "--name", "oom"], ["compare", ok, err, "--name", "cmp"]):
        r = publish(*args, "--reports", str(out))
        assert r.returncode == 0, r.stderr
    assert files_below(out) == ["cmp.html", "cmp.ipynb", "index.html", "oom.html", "oom.ipynb"]
    report = page_text((out / "oom.html").read_text())
    assert "3 points, 3 out of memory, 0 failed" in report
    assert "no point with timings: nothing to plot" in report
    assert "Out-of-memory boundary (first batch that did not fit) system I O B s-oom 32 8 1" in report
    for b in (1, 2, 4):
        assert f"s-oom tiny-llama2-13b 32 8 {b} oom CUDA out of memory (prompt pass)" in report
    if skips:
        assert f"Files not read (1): left out of every table above file why it was not read {damaged}" in report
        assert "<b>damaged" not in (out / "oom.html").read_text()
    cmp = (out / "cmp.html").read_text()
    assert "<b>boom" not in cmp
    cmp = page_text(cmp)
    assert "No study figure could be compared" in cmp and "none: no point has timings on both sides" in cmp
    assert "target ok, baseline error" in cmp and "s-err tiny-llama2-13b 32 8 4 error RuntimeError: <b>boom</b>" in cmp


@pytest.mark.slow
def test_a_notebook_that_fails_in_papermill_leaves_no_partial_file(tmp_path):
    import papermill

    out = tmp_path / "reports"
    out.mkdir()
    with pytest.raises(papermill.PapermillExecutionError, match="does not exist"):
        pub._publish("report", "broken", str(out), {"results_dir": str(tmp_path / "nowhere"), "system": ""})
    assert files_below(out) == []


def test_a_pareto_figure_draws_at_most_its_panel_cap_and_says_how_many_workloads_it_left_out():
    from perfkit.report import service_level
    from perfkit.slo import DEFAULT_SLOS

    rows = [make_row("cpu", "tiny-llama3-8b", i, 8, b, [10.0 * b] * 3, [10.0 * b + 70.0] * 3)
            for i in range(1, service_level.MAX_PANELS + 3) for b in (1, 2)]
    (model, fig), = service_level.pareto_figures(pd.DataFrame(rows), DEFAULT_SLOS)
    drawn = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(drawn) == service_level.MAX_PANELS
    assert f"the first {service_level.MAX_PANELS} of {service_level.MAX_PANELS + 2} (I, O) workloads" in \
        fig._suptitle.get_text()
