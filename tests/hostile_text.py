"""Hostile text for the report tests: labels, names and messages that would run a script, inject markup,
break Markdown or mathtext, or leave the reports folder, if a report put them into a page as they are.

Every text field of the rows `hostile_rows` builds (system, model, dtype, backend, attention, device name,
versions, commit, error message) holds some of them; `write_hostile` writes such a results directory,
itself under a hostile name. The payloads that a browser would run set `window.__pwned` (or the page's
title): a page that shows them as text leaves both alone. Import with `from hostile_text import ...`.
"""

from __future__ import annotations

import os

from helpers import ENV as PLAIN_ENV
from helpers import make_row

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
SVG = '"><svg onload=alert(1)>'
MATH = r"$\frac{1}{0}$"
BAD_MATH = r"$\undefinedcommand{x$"  # mathtext that raises if matplotlib parses it
TRAVERSAL = "../../etc/passwd"
TEMPLATE = "{{7*7}}"
MD_BOLD = "**x**"
MD_LINK = "[x](javascript:alert(1))"
UNICODE = "naïve Ωμέγα 模型 🚀 \u202eevil"
LONG = "long-label-" * 30  # 330 characters

# What would set window.__pwned or document.title if it ran.
PWN_SCRIPT = "<script>window.__pwned='script';document.title='pwned'</script>"
PWN_IMG = "<img src=x onerror=\"window.__pwned='img'\">"
PWN_SVG = "'><svg onload=\"window.__pwned='svg'\">"
PWN_IFRAME = "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>"

PAYLOADS = [SCRIPT, IMG, SVG, MATH, BAD_MATH, TRAVERSAL, TEMPLATE, MD_BOLD, MD_LINK, UNICODE, LONG, PWN_SCRIPT,
            PWN_IMG, PWN_SVG, PWN_IFRAME]

# The labels and names (no comma: a comparison side's label is a comma-separated list of systems).
TARGET = f"{SCRIPT} {PWN_SCRIPT} {UNICODE}"
BASELINE = f"{IMG} {TRAVERSAL} {LONG}"
MODELS = (f"{MATH} {MD_BOLD} {TEMPLATE}", f"{MD_LINK} {SVG} {BAD_MATH}")
DEVICE = f"{PWN_IMG} {TRAVERSAL} GPU"
COMMIT = f"{PWN_SVG} {BAD_MATH}"
ERROR = f"{PWN_IFRAME} CUDA out of memory {MD_LINK} {MATH} {SCRIPT}"
ENV = {"device": "cuda", "device_name": DEVICE, "torch_version": f"<b>2.13</b> {TEMPLATE}",
       "transformers_version": f"<i>5.17</i> {MD_BOLD}", "git_commit": COMMIT, "cuda_version": PWN_IMG,
       "driver_version": MD_LINK}
DIR_NAME = "res-<img src=x onerror=alert(1)> $x$ {{7*7}}"  # a directory name holds no '/'

# Tags (and a link) that must never reach a page unescaped.
RAW_MARKUP = ["<script>alert", "<script>window", "<img src=x", "<svg onload", "<iframe", "<b>2.13", "<i>5.17",
              "<u>sdpa", "<em>float32", "<strong>x</strong>", "href=\"javascript:", "href='javascript:"]

# The text each page must show as typed: labels, names, messages (whitespace as a browser collapses it).
SHOWN = [SCRIPT, IMG, TRAVERSAL, MATH, TEMPLATE, MD_BOLD, MD_LINK, "naïve Ωμέγα 模型 🚀", DEVICE, ERROR]


def hostile_rows(system: str, scale: float, batches=(1, 2, 4), fail_at: int | None = 8) -> list[dict]:
    """Rows of `system` on both MODELS (I=32, O=8, every latency `scale` times the reference of
    helpers.study_rows), plus at batch `fail_at` an out-of-memory point on the first model and an error on
    the second, both with ERROR as their message; every text field hostile."""
    rows = []
    for model in MODELS:
        for b in batches:
            ttft = 10.0 * b * scale
            rows.append(make_row(system, model, 32, 8, b, [ttft] * 3, [ttft + 7 * (5.0 + b) * scale] * 3,
                                 dtype=f"<em>float32</em> {MATH}", backend=f"{PWN_SVG} hf-loop",
                                 attn_implementation=f"<u>sdpa</u> {TEMPLATE}"))
        if fail_at:
            status = "oom" if model == MODELS[0] else "error"
            rows.append(make_row(system, model, 32, 8, fail_at, [], [], dtype=f"<em>float32</em> {MATH}",
                                 status=status, error=ERROR, backend=f"{PWN_SVG} hf-loop",
                                 attn_implementation=f"<u>sdpa</u> {TEMPLATE}"))
    for r in rows:
        r.update(ENV)  # the machine and software, as with_provenance records them
        r["run_id"] = RUN_ID  # perfkit's run ids are generated (helpers' "run-<system>" would be a path here)
    return rows


RUN_ID = "run-hostile"


def write_hostile(base, side: str, system: str, scale: float, **kw) -> str:
    """A results directory `base/<side>/DIR_NAME` of hostile_rows(system, scale, **kw); returns its path."""
    from perfkit.results import write_point, write_run

    out = os.path.join(str(base), side, DIR_NAME)
    write_run(out, RUN_ID, {**PLAIN_ENV, **ENV, "run_id": RUN_ID, "torch_threads": TEMPLATE})
    for row in hostile_rows(system, scale, **kw):
        write_point(out, row)
    return out


def publish_hostile(base) -> dict:
    """Publish, with the command line and default names, a report of the target (its system named, so the
    label goes into the name) and the comparison of hostile target and baseline into `base/reports`.
    Returns {"reports": the folder, "report"/"compare"/"index": the pages, "target"/"baseline": the results}."""
    from helpers import publish

    target = write_hostile(base, "t", TARGET, 0.5)
    baseline = write_hostile(base, "b", BASELINE, 1.0)
    reports = os.path.join(str(base), "reports")
    pages = {"reports": reports, "target": target, "baseline": baseline}
    for kind, args in (("report", ["report", target, "--system", TARGET]), ("compare", ["compare", target, baseline])):
        r = publish(*args, "--reports", reports)
        assert r.returncode == 0, r.stderr
        pages[kind] = r.stdout.strip().splitlines()[-1]
    pages["index"] = os.path.join(reports, "index.html")
    return pages


# ---- text a terminal or a spreadsheet would act on ------------------------------------------------------

# What a terminal acts on (perfkit.errors.printable makes it inert): an escape sequence that clears the screen
# and recolours what follows, the one-byte CSI, a carriage return that overwrites the line, a bell,
# backspaces, the bidi overrides and isolates that reorder what follows, and a lone surrogate (bytes that
# were not UTF-8). TERMINAL_LABEL holds them all, and no comma or colon, so that it can be a system label or
# a model's checkpoint folder; TERMINAL_WORD all but the carriage return (white space), so that it can be an
# SLO's name or a host name too. TERMINAL_RAW: what none of them may print.
TERMINAL = ["\x1b[2J\x1b[31m", "\x9b1m", "\r", "\x07", "\x08\x08", "\u202e", "\u2066", "\u2069", "\u200f"]
TERMINAL_LABEL = "evil" + "".join(TERMINAL) + "label"
TERMINAL_WORD = TERMINAL_LABEL.replace("\r", "")
TERMINAL_RAW = ["\x1b", "\x9b", "\r", "\x07", "\x08", "\u202e", "\u2066", "\u2069", "\u200f"]


def terminal_safe(text: str) -> bool:
    """Whether `text` (a command's stdout or stderr) holds none of TERMINAL_RAW: what it printed of a
    TERMINAL_LABEL arrived as escapes (\\x1b, \\u202e, ...)."""
    return not any(ch in text for ch in TERMINAL_RAW)


# Cells a spreadsheet runs as formulas when it opens a CSV file (CSV injection): each starts with =, +, -,
# @, a tab or a carriage return. None holds a '/', ':' or ',' (it may name a system, a model or an SLO);
# FORMULA_WORDS are those without white space (an SLO's name is one word).
FORMULAS = ["=cmd|'-Ccalc'!A0", '=HYPERLINK("evil.invalid?x","click")', "+1+cmd|'-Ccalc'!A0", "-1+cmd|'-Ccalc'!A0",
            "@SUM(1+1)*cmd|'-Ccalc'!A0", "\t=1+1", "\r=1+1"]
FORMULA_WORDS = [f for f in FORMULAS if not any(ch.isspace() for ch in f)]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
