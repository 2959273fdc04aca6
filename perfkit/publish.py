"""Run the notebooks with papermill and publish them as self-contained HTML, plus reports/index.html.

    python -m perfkit.publish sweep PARAMS.yaml [--system LABEL ...] [--results DIR]
    python -m perfkit.publish report RESULTS_DIR [--system LABEL] [--name NAME]
    python -m perfkit.publish compare TARGET BASELINE [--target-system L] [--baseline-system L] [--name NAME]
    python -m perfkit.publish all RESULTS_ROOT           # one report per (results directory, system)
    python -m perfkit.publish index

Executed notebooks and their HTML land in --out (default reports/); the index at reports/index.html (or
in --out when that is outside reports/) links every report found below it with its date, device and
systems, read from the metadata each notebook publishes. HTML is rendered without code cells, with images
embedded as data URIs and no external script (no MathJax, no require.js), so a report opens offline.

Inputs are checked before any notebook runs: bad input is one line on stderr, exit code 2, nothing written.
This module is notebook machinery (papermill, nbconvert, IPython): the measuring core never imports it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import os
import re
import sys
import warnings

from perfkit.errors import UsageError

# Inside a kernel tqdm.auto asks for ipywidgets; a published page wants neither widgets nor the warning.
warnings.filterwarnings("ignore", message="IProgress not found")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
META_MIME = "application/vnd.perfkit.meta+json"
DEFAULT_OUT = "reports"

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
    from perfkit.results import load_results, load_runs

    if not results_dir or not os.path.isdir(results_dir):
        raise UsageError(f"results directory {results_dir!r} does not exist: expected the --out of a sweep")
    df = load_results(results_dir)
    if df.empty:
        raise UsageError(f"results directory {results_dir!r} holds no measured points (no points/*.parquet)")
    if system:
        labels = sorted(df["system"].dropna().unique())
        if system not in labels:
            raise UsageError(f"system {system!r} is not in {results_dir}: found {', '.join(labels)}")
        df = df[df["system"] == system].reset_index(drop=True)
    return df, load_runs(results_dir)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "report"


# ---- running and converting ------------------------------------------------------------------------

def run_notebook(name: str, out_ipynb: str, parameters: dict, log_output: bool = False) -> str:
    """Execute notebooks/<name>.ipynb with papermill into `out_ipynb` (in the current directory's context)."""
    import papermill

    os.makedirs(os.path.dirname(os.path.abspath(out_ipynb)), exist_ok=True)
    papermill.execute_notebook(os.path.join(NOTEBOOKS, f"{name}.ipynb"), out_ipynb, parameters=parameters,
                               kernel_name="python3", progress_bar=False, log_output=log_output, cwd=os.getcwd())
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
    tmp = out_html + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body)
    os.replace(tmp, out_html)
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


def read_meta(nb_or_path) -> dict:
    import nbformat

    nb = nbformat.read(nb_or_path, as_version=4) if isinstance(nb_or_path, (str, os.PathLike)) else nb_or_path
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if META_MIME in data:
                return dict(data[META_MIME])
    return {}


def _index_root(out_dir: str) -> str:
    out = os.path.abspath(out_dir)
    root = os.path.abspath(DEFAULT_OUT)
    return root if (out == root or out.startswith(root + os.sep)) else out


def build_index(root: str = DEFAULT_OUT) -> str:
    """reports/index.html: every report below `root`, newest first, with its date, device and systems."""
    import glob

    entries = []
    for nb_path in sorted(glob.glob(os.path.join(root, "**", "*.ipynb"), recursive=True)):
        html_path = nb_path[: -len(".ipynb")] + ".html"
        if not os.path.exists(html_path) or ".ipynb_checkpoints" in nb_path:
            continue
        meta = read_meta(nb_path)
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
            f"<tr><td><a href='{html.escape(rel)}'>{esc(meta.get('title'))}</a>{stand_in}</td>"
            f"<td>{esc(meta.get('kind'))}</td><td>{esc(meta.get('systems'))}</td><td>{esc(meta.get('devices'))}</td>"
            f"<td>{esc(meta.get('models'))}</td><td>{esc(meta.get('measured_utc'))}</td>"
            f"<td>{esc(meta.get('rendered_utc'))}</td></tr>")
    body = "\n".join(rows) or "<tr><td colspan='7'>No reports yet: run <code>make demo</code> or <code>make report RESULTS=…</code>.</td></tr>"
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
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "index.html")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return path


def _publish(notebook: str, name: str, out_dir: str, parameters: dict, log_output: bool = False) -> str:
    out_ipynb = os.path.join(out_dir, f"{name}.ipynb")
    run_notebook(notebook, out_ipynb, parameters, log_output=log_output)
    out_html = to_html(out_ipynb, os.path.join(out_dir, f"{name}.html"))
    build_index(_index_root(out_dir))
    return out_html


# ---- the three products ------------------------------------------------------------------------------

def report(results_dir: str, system: str | None = None, out_dir: str = DEFAULT_OUT, name: str | None = None) -> str:
    load_for_report(results_dir, system)
    name = name or _slug("report-" + os.path.basename(os.path.normpath(results_dir)) + (f"-{system}" if system else ""))
    return _publish("report", name, out_dir, {"results_dir": results_dir, "system": system or ""})


def compare(target: str, baseline: str, target_system: str | None = None, baseline_system: str | None = None,
            out_dir: str = DEFAULT_OUT, name: str | None = None) -> str:
    from perfkit.compare import compare as _compare, console_summary

    c = _compare(target, baseline, target_system, baseline_system, n_boot=200)  # the checks, quickly
    print(console_summary(c), flush=True)
    name = name or _slug(f"compare-{c.target}-vs-{c.baseline}")
    return _publish("compare", name, out_dir, {"target_dir": target, "baseline_dir": baseline,
                                               "target_system": target_system or "",
                                               "baseline_system": baseline_system or ""})


def sweep(params: str, systems: list[str] | None = None, results: str | None = None, out_dir: str = DEFAULT_OUT,
          name: str | None = None) -> str:
    from perfkit.params import load_params

    p = load_params(params)
    for label in systems or []:
        p.system(label)
    results = results or os.path.join("results", p.name)
    name = name or _slug(f"sweep-{p.name}" + ("-" + "-".join(systems) if systems else ""))
    return _publish("sweep", name, out_dir, {"params_path": params, "systems": list(systems or []),
                                             "out_dir": results}, log_output=True)


def rebuild_all(results_root: str, out_dir: str = DEFAULT_OUT, exclude: list[str] | None = None) -> list[str]:
    """One report per (results directory, system) found below `results_root`, and their comparisons
    listed in RESULTS_ROOT/comparisons.yaml ([{target: DIR[:LABEL], baseline: DIR[:LABEL]}, ...])."""
    import glob

    import yaml

    from perfkit.results import load_results

    if not os.path.isdir(results_root):
        raise UsageError(f"results root {results_root!r} does not exist")
    skip = [os.path.abspath(e) for e in exclude or []]
    dirs = sorted({os.path.dirname(os.path.dirname(p))
                   for p in glob.glob(os.path.join(results_root, "**", "points", "*.parquet"), recursive=True)})
    dirs = [d for d in dirs if not any(os.path.abspath(d) == e or os.path.abspath(d).startswith(e + os.sep)
                                       for e in skip)]
    if not dirs:
        print(f"no results below {results_root} (DIR/points/*.parquet): nothing to render", file=sys.stderr)
        return [build_index(_index_root(out_dir))]
    made = []
    for d in dirs:
        for system in sorted(load_results(d)["system"].dropna().unique()):
            made.append(report(d, system, out_dir))
    spec = os.path.join(results_root, "comparisons.yaml")
    if os.path.exists(spec):
        with open(spec) as f:
            pairs = yaml.safe_load(f) or []
        from perfkit.compare import parse_side

        for pair in pairs:
            # DIR[:LABEL] relative to the results root, split as `perfkit compare` splits it
            (t_dir, t_sys), (b_dir, b_sys) = (parse_side(os.path.join(results_root, str(pair[side])))
                                              for side in ("target", "baseline"))
            made.append(compare(t_dir, b_dir, t_sys, b_sys, out_dir))
    return made


# ---- command line ----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    from perfkit.cli import _Parser

    p = _Parser(prog="perfkit.publish", description="Run perfkit's notebooks and publish them as HTML.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("sweep", help="run notebooks/sweep.ipynb")
    s.add_argument("params")
    s.add_argument("--system", action="append", dest="systems", metavar="LABEL")
    s.add_argument("--results", default=None, help="results directory (default results/<params name>)")
    r = sub.add_parser("report", help="run notebooks/report.ipynb on a results directory")
    r.add_argument("results")
    r.add_argument("--system", default=None)
    c = sub.add_parser("compare", help="run notebooks/compare.ipynb: target vs baseline")
    c.add_argument("target", help="results directory of the target, or DIR:SYSTEM")
    c.add_argument("baseline", help="results directory of the baseline, or DIR:SYSTEM")
    c.add_argument("--target-system", default=None)
    c.add_argument("--baseline-system", default=None)
    a = sub.add_parser("all", help="rebuild every report from a results root (make reports)")
    a.add_argument("results_root")
    a.add_argument("--exclude", action="append", default=[], metavar="DIR", help="results directory to leave out")
    sub.add_parser("index", help="rebuild reports/index.html")
    for q in (s, r, c, a):
        q.add_argument("--out", default=DEFAULT_OUT, help="where executed notebooks and HTML go (default reports/)")
    for q in (s, r, c):
        q.add_argument("--name", default=None, help="file name of the report, without extension")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "sweep":
            made = [sweep(args.params, args.systems, args.results, args.out, args.name)]
        elif args.command == "report":
            made = [report(args.results, args.system, args.out, args.name)]
        elif args.command == "compare":
            from perfkit.compare import resolve_side

            t_dir, t_sys = resolve_side(args.target, args.target_system, "target")
            b_dir, b_sys = resolve_side(args.baseline, args.baseline_system, "baseline")
            made = [compare(t_dir, b_dir, t_sys, b_sys, args.out, args.name)]
        elif args.command == "all":
            made = rebuild_all(args.results_root, args.out, args.exclude)
        else:
            made = [build_index(DEFAULT_OUT)]
    except UsageError as exc:
        msg = str(exc)
        print(msg if msg.startswith("perfkit") else f"perfkit.publish: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ != "PapermillExecutionError":
            raise
        # The executed notebook keeps the traceback; the terminal gets the cause in one line.
        print(f"perfkit.publish: notebook failed: {exc.ename}: {exc.evalue}", file=sys.stderr)
        return 1
    for path in made:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
