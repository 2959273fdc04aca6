"""Run the notebooks with papermill and publish them as self-contained HTML, plus an index.html.

These functions are what `perfkit publish sweep|report|compare|all|index` (perfkit.cli) calls. Inputs are
checked before any notebook runs (a UsageError, nothing written); a notebook works from the project's root
(perfkit.report.notebook), so the paths handed to it are made relative to that root (or absolute, outside
the project). See docs/reports.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import os
import re
import sys
import warnings

from perfkit.errors import UsageError, printable, shown
from perfkit.paths import DEFAULT_REPORTS, PROJECT_ROOT, default_out_dir, project_root
from perfkit.results import atomic_write

# Inside a kernel tqdm.auto asks for ipywidgets; a published page wants neither widgets nor the warning.
warnings.filterwarnings("ignore", message="IProgress not found")

NOTEBOOKS = os.path.join(PROJECT_ROOT, "notebooks")
META_MIME = "application/vnd.perfkit.meta+json"

# The lab template without its external scripts (MathJax, require.js, mermaid: all CDN links), and a
# narrower, report-like page.
_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock %}
{% block html_head_js_mathjax %}{% endblock %}
{% block html_head_js_mermaidjs %}{% endblock %}
{% block extra_css %}
<style>
  body.jp-Notebook { max-width: 1200px; margin: 0 auto; padding: 1em 2em; }
  .jp-RenderedHTMLCommon table { font-size: 12px; }
  .jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { padding: 0.2em 0.6em; }
  .perfkit-banner { background: #fff3e0; border-left: 6px solid #ef6c00; padding: 0.6em 1em; margin: 0.8em 0; }
  .perfkit-headline { background: #e3f2fd; border-left: 6px solid #1565c0; padding: 0.6em 1em; margin: 0.8em 0; }
</style>
{% endblock %}
"""


# ---- inside a notebook ----------------------------------------------------------------------------

def emit_meta(**meta) -> None:
    """Publish the report's metadata (title, systems, devices, dates) as an invisible output for the index."""
    from IPython.display import display

    display({META_MIME: meta, "text/plain": ""}, raw=True)


def meta_for(df, kind: str, title: str, **extra) -> dict:
    """The metadata of a report on results DataFrame `df`."""
    created = df["created_utc"].dropna() if "created_utc" in df else []
    return {
        "kind": kind, "title": title,
        "systems": sorted(str(s) for s in df["system"].dropna().unique()),
        "devices": sorted(str(s) for s in df["device_name"].dropna().unique()) if "device_name" in df else [],
        "models": sorted(str(s) for s in df["model"].dropna().unique()),
        "measured_utc": str(max(created)) if len(created) else None,
        "rendered_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def banner(text: str, css: str = "perfkit-banner") -> str:
    return f'<div class="{css}">{html.escape(text)}</div>'


# ---- checks before running anything ----------------------------------------------------------------

def load_for_report(results_dir: str, system: str | None = None):
    """The rows (and runs) a report shows; UsageError when there is nothing to show."""
    from perfkit.results import load_runs, open_results

    df = open_results(results_dir, system=system, where=results_dir)
    return df, load_runs(results_dir)


NAME_MAX = 120  # characters of a report's file name, before .ipynb / .html


def safe_name(text: str, what: str = "--name") -> str:
    """`text` as the file name of a report inside the reports folder: ASCII letters, digits, '.', '_' and
    '-' (path separators, NUL and anything else become '-'), no leading or trailing dot or dash, at most
    NAME_MAX characters. UsageError when nothing usable is left."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text))[:NAME_MAX].strip(".-")
    if not name:
        raise UsageError(f"{what} {str(text)[:80]!r} leaves no usable file name: use letters, digits, '.', '_' or '-'")
    return name


def _slug(text: str) -> str:
    """A default report name built from labels and paths (which may hold anything): always a safe name."""
    try:
        return safe_name(text)
    except UsageError:
        return "report"


# ---- running and converting ------------------------------------------------------------------------

def _ipc_kernel_manager(socket_dir: str):
    """A kernel manager whose kernel talks to papermill over Unix sockets in `socket_dir`, not over TCP:
    nothing listens on the network, and the kernel has no unencrypted-TCP warning to print."""
    from jupyter_client.manager import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = os.path.join(socket_dir, "kernel")  # socket files: kernel-1, kernel-2, ...

    return IpcKernelManager


def run_notebook(name: str, out_ipynb: str, parameters: dict, log_output: bool = False) -> str:
    """Execute notebooks/<name>.ipynb with papermill into `out_ipynb` (the notebook works from the project's
    root, so `parameters` hold paths as _for_notebook gives them)."""
    import tempfile

    import papermill

    os.makedirs(os.path.dirname(os.path.abspath(out_ipynb)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="perfkit-kernel-") as socket_dir:
        papermill.execute_notebook(os.path.join(NOTEBOOKS, f"{name}.ipynb"), out_ipynb, parameters=parameters,
                                   kernel_name="python3", progress_bar=False, log_output=log_output,
                                   cwd=os.getcwd(), kernel_manager_class=_ipc_kernel_manager(socket_dir))
    return out_ipynb


def to_html(ipynb: str, out_html: str) -> str:
    """Self-contained HTML of an executed notebook: no code, images embedded, no external scripts."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        if cell.get("outputs"):
            cell.outputs = _coalesce_streams(cell.outputs)
    meta = read_meta(nb)
    if meta.get("title"):
        nb.metadata["title"] = meta["title"]
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"perfkit.html.j2": _TEMPLATE})],
                            template_file="perfkit.html.j2", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    body, _ = exporter.from_notebook_node(nb)
    atomic_write(out_html, lambda f: f.write(body.encode("utf-8")))
    return out_html


def _coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs and keep what a terminal would show of progress bars: of each
    line, the text after its last carriage return (papermill stores every tqdm update as an output)."""
    out = []
    for o in outputs:
        if o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream" \
                and out[-1].get("name") == o.get("name"):
            out[-1]["text"] += o["text"]
        else:
            out.append(o)
    for o in out:
        if o.get("output_type") == "stream":
            o["text"] = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in o["text"].split("\n"))
    return out


MAX_NOTEBOOK_BYTES = 1 << 30  # an executed notebook embeds its plots: tens of MB at most


def read_meta(nb_or_path) -> dict:
    """A report's metadata (emit_meta's), from a notebook or its file: a file is read as a regular file of at
    most MAX_NOTEBOOK_BYTES (errors.read_regular), else ValueError (UnreadableFile, nbformat's)."""
    import nbformat

    from perfkit.errors import nesting_refused, read_regular

    if isinstance(nb_or_path, (str, os.PathLike)):
        blob = read_regular(nb_or_path, "an executed notebook", MAX_NOTEBOOK_BYTES)
        with nesting_refused("an executed notebook"):
            nb = nbformat.reads(blob.decode("utf-8"), as_version=4)
    else:
        nb = nb_or_path
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if META_MIME in data:
                return dict(data[META_MIME])
    return {}


def _index_root(reports_dir: str) -> str:
    out = os.path.abspath(reports_dir)
    root = os.path.abspath(DEFAULT_REPORTS)
    return root if (out == root or out.startswith(root + os.sep)) else out


def _href(rel: str) -> str:
    """A relative path as a link: percent-encoded, so that no file name reads as a scheme (javascript:),
    a query or a fragment."""
    from urllib.parse import quote

    return quote(rel.replace(os.sep, "/"), safe="/")


def check_reports(reports_dir: str, names=()) -> None:
    """Refuse, before any notebook runs, a reports folder where a report of `names` (safe_names) or the index
    could not be written: a directory named like NAME.ipynb, NAME.html or index.html, and check_out_dir's
    rules. UsageError; nothing written."""
    from perfkit.results import check_out_dir

    what = "a directory for the reports"
    files = tuple(f"{name}{ext}" for name in names for ext in (".ipynb", ".html"))
    check_out_dir(reports_dir, "--reports", what, subdirs=(), files=files)
    check_out_dir(_index_root(reports_dir), "--reports", what, subdirs=(), files=("index.html",))


def build_index(root: str = DEFAULT_REPORTS) -> str:
    """reports/index.html: every report below `root`, newest first, with its date, device and systems. The
    walk enters each folder once (perfkit.results.find_files: a link loop ends); a notebook that cannot be
    read (a FIFO, damaged) is named on stderr and left out."""
    from perfkit.results import check_out_dir, find_files, warn_skipped

    check_out_dir(root, "--reports", "a directory for the reports", subdirs=(), files=("index.html",))
    entries = []
    for nb_path in find_files(root, ".ipynb"):
        html_path = nb_path[: -len(".ipynb")] + ".html"
        if not os.path.exists(html_path) or ".ipynb_checkpoints" in nb_path:
            continue
        try:
            meta = read_meta(nb_path)
        except ValueError as exc:  # not a regular file, not a notebook
            warn_skipped([(nb_path, " ".join(str(exc).split())[:200])])
            continue
        if not meta:
            continue
        entries.append((meta, os.path.relpath(html_path, root)))
    entries.sort(key=lambda e: (e[0].get("rendered_utc") or "", e[1]), reverse=True)

    def esc(v):
        return html.escape(", ".join(v) if isinstance(v, list) else str(v or "—"))

    rows = []
    for meta, rel in entries:
        stand_in = " <span class='tag'>tiny stand-ins</span>" if meta.get("stand_in") else ""
        rows.append(
            f"<tr><td><a href='{html.escape(_href(rel))}'>{esc(meta.get('title'))}</a>{stand_in}</td>"
            f"<td>{esc(meta.get('kind'))}</td><td>{esc(meta.get('systems'))}</td><td>{esc(meta.get('devices'))}</td>"
            f"<td>{esc(meta.get('models'))}</td><td>{esc(meta.get('measured_utc'))}</td>"
            f"<td>{esc(meta.get('rendered_utc'))}</td></tr>")
    body = "\n".join(rows) or ("<tr><td colspan='7'>No reports yet: run <code>make demo</code> or "
                               "<code>make report RESULTS=…</code>.</td></tr>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>perfkit reports</title>
<style>
 body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
 table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
 th, td {{ text-align: left; padding: 0.4em 0.7em; border-bottom: 1px solid #ddd; vertical-align: top; }}
 th {{ background: #f5f5f5; }}
 .tag {{ font-size: 11px; background: #fff3e0; border: 1px solid #ef6c00; border-radius: 3px; padding: 0 0.3em; }}
</style></head><body>
<h1>perfkit reports</h1>
<p>Each report measures LLM inference (prompt and token phase) on one or more systems; each comparison sets a
target against a baseline, with ratios where <b>&lt; 1 means the target is better</b>. Reports tagged
<span class="tag">tiny stand-ins</span> use scaled-down models measured on a CPU: they demonstrate the kit,
not the study's hardware.</p>
<table><thead><tr><th>report</th><th>kind</th><th>systems</th><th>device</th><th>models</th><th>measured (UTC)</th>
<th>rendered (UTC)</th></tr></thead><tbody>
{body}
</tbody></table></body></html>
"""
    path = os.path.join(root, "index.html")
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    _readable(path)
    return path


def _for_notebook(path: str) -> str:
    """A path as a notebook must see it: its kernel starts here and works from the project's root above
    (perfkit.report.notebook), so relative to that root when the path lies inside it (reports show
    `results/demo`, not a machine's absolute path), else absolute."""
    full, root = os.path.abspath(path), project_root()
    inside = root is not None and (full == root or full.startswith(root.rstrip(os.sep) + os.sep))
    return os.path.relpath(full, root) if inside else full


def _publish(notebook: str, name: str, reports_dir: str, parameters: dict, log_output: bool = False) -> str:
    """Run the notebook into a hidden temporary file beside its final place, convert it, and only then move
    notebook and page into place: a failure (or an interrupt) removes what it wrote and leaves the reports
    folder as it was. `name` is a safe_name. What would stop the move into place (a directory named like the
    notebook, its page or the index) is refused before the notebook runs (check_reports)."""
    import tempfile

    check_reports(reports_dir, [name])
    out_ipynb, out_html = (os.path.join(reports_dir, f"{name}{ext}") for ext in (".ipynb", ".html"))
    made = []  # the folders this call creates, deepest first
    folder = os.path.abspath(reports_dir)
    while not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(reports_dir, exist_ok=True)
    fd, tmp_ipynb = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial.ipynb", dir=reports_dir)
    os.close(fd)
    tmp_html = tmp_ipynb[: -len(".ipynb")] + ".html"
    try:
        run_notebook(notebook, tmp_ipynb, parameters, log_output=log_output)
        _record_output_path(tmp_ipynb, out_ipynb)
        to_html(tmp_ipynb, tmp_html)
        for path in (tmp_ipynb, tmp_html):
            _readable(path)
        os.replace(tmp_ipynb, out_ipynb)
        os.replace(tmp_html, out_html)
    except BaseException:
        for path in (tmp_ipynb, tmp_html):
            if os.path.exists(path):
                os.unlink(path)
        with contextlib.suppress(OSError):  # each only while empty: nothing else was put there
            for folder in made:
                os.rmdir(folder)
        raise
    build_index(_index_root(reports_dir))
    return out_html


def _readable(path: str) -> None:
    """Give a file written through a temporary file (created 0600) the mode a plain write gives it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _record_output_path(ipynb: str, final: str) -> None:
    """papermill records where it wrote the notebook: name the final file, not the temporary one."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    if "papermill" in nb.metadata:
        nb.metadata["papermill"]["output_path"] = final
        nbformat.write(nb, ipynb)


# ---- the products ---------------------------------------------------------------------------------

def _report_job(results_dir: str, system: str | None = None, name: str | None = None) -> tuple[str, dict, str]:
    """A report's checks (a UsageError before anything runs) and what _publish needs: (name, parameters,
    the line to print first)."""
    name = safe_name(name) if name is not None else None
    from perfkit.loads import loads_only

    if loads_only(results_dir, system):
        who = f"system {system!r}" if system else "it"
        raise UsageError(f"{results_dir}: {who} has load levels only (no batch point: an imported serving "
                         "benchmark, say), and a system's report is built on batch points, expected a system with "
                         f"points; `perfkit summary {results_dir}{' --system ' + system if system else ''}` prints "
                         "its levels and `perfkit publish compare` sets them against another system's")
    load_for_report(results_dir, system)
    name = name or _slug("report-" + os.path.basename(os.path.normpath(results_dir)) + (f"-{system}" if system else ""))
    return name, {"results_dir": _for_notebook(results_dir), "system": system or ""}, ""


def publish_report(results_dir: str, system: str | None = None, reports_dir: str = DEFAULT_REPORTS,
                   name: str | None = None) -> str:
    name, parameters, _ = _report_job(results_dir, system, name)
    return _publish("report", name, reports_dir, parameters)


def _comparison_job(target: str, baseline: str, target_system: str | None = None,
                    baseline_system: str | None = None, name: str | None = None) -> tuple[str, dict, str]:
    """A comparison's checks (compare's, quickly) and what _publish needs: (name, parameters, its bottom line)."""
    from perfkit.compare import summary_line
    from perfkit.loads import compare_systems

    name = safe_name(name) if name is not None else None
    c = compare_systems(target, baseline, target_system, baseline_system, n_boot=200)  # the checks, quickly
    name = name or _slug(f"compare-{c.target}-vs-{c.baseline}")
    return name, {"target_dir": _for_notebook(target), "baseline_dir": _for_notebook(baseline),
                  "target_system": target_system or "", "baseline_system": baseline_system or ""}, summary_line(c)


def publish_comparison(target: str, baseline: str, target_system: str | None = None,
                       baseline_system: str | None = None, reports_dir: str = DEFAULT_REPORTS,
                       name: str | None = None) -> str:
    name, parameters, line = _comparison_job(target, baseline, target_system, baseline_system, name)
    print(printable(line), flush=True)
    return _publish("compare", name, reports_dir, parameters)


def publish_sweep(params: str, systems: list[str] | None = None, out: str | None = None,
                  reports_dir: str = DEFAULT_REPORTS, name: str | None = None, ray: str | None = None) -> str:
    """Run a sweep inside notebooks/sweep.ipynb (its progress is the notebook's log) and publish it. `ray`:
    as perfkit sweep --ray ("local" starts a local Ray instance; an address joins a cluster; None: serial)."""
    from perfkit.params import load_params
    from perfkit.results import check_out_dir

    name = safe_name(name) if name is not None else None
    p = load_params(params)
    for label in systems or []:
        p.system(label)
    out = out or default_out_dir(p.name)
    check_out_dir(out)
    if ray is not None:  # refused here, in one line, before a notebook starts: no Ray, a malformed address
        from perfkit.sweep import require_ray

        require_ray().parse_address(ray)
    name = name or _slug(f"sweep-{p.name}" + ("-" + "-".join(systems) if systems else ""))
    return _publish("sweep", name, reports_dir, {"params_path": _for_notebook(params),
                                                 "systems": list(systems or []),
                                                 "out_dir": _for_notebook(out), "ray_address": ray},
                    log_output=True)


def publish_all(results_root: str, reports_dir: str = DEFAULT_REPORTS, exclude: list[str] | None = None) -> list[str]:
    """One report per (results directory, system) found below `results_root`, and their comparisons
    listed in RESULTS_ROOT/comparisons.yaml ([{target: DIR[:LABEL], baseline: DIR[:LABEL]}, ...]).

    Everything is checked before the first notebook runs: comparisons.yaml as a params file is
    (perfkit.params.load_comparisons: a list of mappings of strings, no key twice, bounded, a regular
    file), each comparison's sides (compare's checks), and the reports folder for every report's files."""
    from perfkit.compare import parse_side
    from perfkit.params import load_comparisons
    from perfkit.results import POINTS, find_files, load_results

    if not os.path.isdir(results_root):
        raise UsageError(f"results root {results_root!r} does not exist")
    spec = os.path.join(results_root, "comparisons.yaml")
    pairs = load_comparisons(spec) if os.path.lexists(spec) else []
    skip = [os.path.abspath(e) for e in exclude or []]
    # each results directory once, under its own name where a link reaches it too (find_files)
    dirs = sorted({os.path.dirname(os.path.dirname(p)) for p in find_files(results_root, ".parquet", POINTS)})
    dirs = [d for d in dirs if not any(os.path.abspath(d) == e or os.path.abspath(d).startswith(e + os.sep)
                                       for e in skip)]
    if not dirs:
        print(printable(f"no results below {results_root} (DIR/points/*.parquet): nothing to render"),
              file=sys.stderr)
        return [build_index(_index_root(reports_dir))]
    jobs = [("report", *_report_job(d, system)) for d in dirs
            for system in sorted(load_results(d)["system"].dropna().unique())]
    for i, (target, baseline) in enumerate(pairs):
        # DIR[:LABEL] relative to the results root, split as `perfkit compare` splits it
        (t_dir, t_sys), (b_dir, b_sys) = (parse_side(os.path.join(results_root, side)) for side in (target, baseline))
        try:
            jobs.append(("compare", *_comparison_job(t_dir, b_dir, t_sys, b_sys)))
        except UsageError as exc:
            raise UsageError(f"{spec}: [{i}] ({shown(target)} vs {shown(baseline)}): {exc}") from None
    check_reports(reports_dir, [name for _, name, _, _ in jobs])
    made = []
    for notebook, name, parameters, line in jobs:
        if line:
            print(printable(line), flush=True)
        made.append(_publish(notebook, name, reports_dir, parameters))
    return made
