"""The published HTML in a real browser: headless Chromium renders every report's tables and images, and
the page logs no errors. Chromium is Debian's `chromium` (.ci/run installs it): without it the test fails in
CI (CI=true) and is skipped elsewhere.

A small probe script is inserted at the top of a copy of each page: it records console errors/warnings and
failed loads (the `error` event, captured, also fires for images and styles that do not load), and on `load`
writes what rendered (tables, rows, images decoded with a non-zero width) into the DOM, which
`--dump-dom` prints. It also records `window.__pwned`, which the hostile payloads of tests/hostile_text.py
set if they run: pages built from hostile labels must leave it unset and keep their title.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest
from helpers import ROOT, make_row, publish, study_rows, write_rows

pytestmark = pytest.mark.slow  # papermill to publish the pages, then a headless browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.__perfkitErrors = [];
// A dialog would block a headless page until the timeout: record a call instead, as a payload that ran.
["alert", "confirm", "prompt"].forEach(function (k) {
  window[k] = function (m) { window.__pwned = k + "(" + m + ")"; };
});
window.addEventListener("error", function (e) {
  var t = e.target || {};
  __perfkitErrors.push("error: " + (e.message || t.src || t.href || "resource failed"));
}, true);
["error", "warn"].forEach(function (k) {
  var f = console[k];
  console[k] = function () {
    __perfkitErrors.push(k + ": " + Array.prototype.join.call(arguments, " ")); f.apply(console, arguments);
  };
});
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var r = {tables: document.querySelectorAll("table").length, rows: document.querySelectorAll("table tr").length,
           images: imgs.length,
           rendered: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
           links: Array.prototype.map.call(document.querySelectorAll("a[href]"),
                                           function (a) { return a.getAttribute("href"); }),
           errors: __perfkitErrors, title: document.title,
           pwned: window.__pwned === undefined ? null : String(window.__pwned)};
  var pre = document.createElement("pre"); pre.id = "perfkit-probe"; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def _need_chromium():
    if CHROMIUM:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is not installed: .ci/run installs it with apt-get install -y chromium")
    pytest.skip("chromium not installed (apt-get install -y chromium)")


def render(page: str) -> dict:
    """Load `page` (a copy with the probe) in headless Chromium; the probe's record plus console lines."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    probed = page[: -len(".html")] + ".probe.html"  # beside the page, so its relative links still resolve
    with open(probed, "w", encoding="utf-8") as f:
        f.write(re.sub(r"<head>", "<head>" + PROBE, text, count=1))
    profile = tempfile.mkdtemp(prefix="perfkit-chromium-")
    try:
        r = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
             "--dump-dom", "file://" + os.path.abspath(probed)],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        os.unlink(probed)
    m = re.search(r'<pre id="perfkit-probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page never finished loading in chromium (rc {r.returncode}): {r.stderr[-2000:]}"
    import html

    record = json.loads(html.unescape(m.group(1)))
    record["console"] = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return record


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    t = write_rows(base / "t", study_rows("gpu-new", 0.5) + [make_row("gpu-new", "tiny-mistral-7b", 32, 8, 8, [], [],
                                                                      status="oom")])
    b = write_rows(base / "b", study_rows("gpu-old", 1.0))
    out = base / "reports"
    for args in (["report", t], ["compare", t, b]):
        r = publish(*args, "--reports", str(out))
        assert r.returncode == 0, r.stderr
    return out


def check_page(page: str, min_tables: int, min_images: int) -> None:
    rec = render(page)
    name = os.path.basename(page)
    assert rec["errors"] == [], f"{name}: {rec['errors']}"
    assert rec["console"] == [], f"{name} logged to the console: {rec['console']}"
    assert rec["tables"] >= min_tables and rec["rows"] > 2 * min_tables, f"{name}: {rec}"
    assert rec["title"] != "Notebook", f"{name}: the report has no title (no perfkit metadata)"
    assert rec["images"] >= min_images and rec["rendered"] == rec["images"], f"{name}: images not decoded: {rec}"
    for href in rec["links"]:
        if not href.startswith(("#", "http")):
            assert os.path.exists(os.path.join(os.path.dirname(page), href)), f"{name}: broken link {href}"


def test_report_and_comparison_render_in_chromium(published):
    _need_chromium()
    pages = sorted(glob.glob(str(published / "*.html")))
    names = [os.path.basename(p) for p in pages]
    assert "index.html" in names and len(pages) == 3, names
    for page in pages:
        if page.endswith("index.html"):
            rec = render(page)
            assert rec["errors"] == [] and rec["console"] == [] and rec["tables"] == 1, rec
            assert sum(1 for h in rec["links"] if h.endswith(".html")) == 2, rec
            assert all(os.path.exists(os.path.join(published, h)) for h in rec["links"]), rec
        else:
            check_page(page, min_tables=5, min_images=2)


def test_hostile_text_runs_no_script_in_chromium(hostile_reports):
    """Report, comparison and index built from hostile labels, names and messages: no payload runs (nothing
    sets window.__pwned or the title), no injected image or frame tries to load, every table renders."""
    _need_chromium()
    from hostile_text import PWN_SCRIPT

    for kind in ("report", "compare", "index"):
        rec = render(hostile_reports[kind])
        assert rec["pwned"] is None and rec["title"] != "pwned", (kind, rec)
        assert rec["errors"] == [] and rec["console"] == [], (kind, rec)
        assert rec["tables"] >= (1 if kind == "index" else 5), (kind, rec)
        if kind != "index":
            assert PWN_SCRIPT.split("</script>")[0] in rec["title"], (kind, rec["title"])  # the title, as text
            assert rec["images"] >= 2 and rec["rendered"] == rec["images"], (kind, rec)  # only the plots


def test_every_report_under_reports_renders():
    """Whatever `make demo` / `make reports` left in reports/ renders too (nothing there: nothing to check)."""
    pages = sorted(p for p in glob.glob(os.path.join(ROOT, "reports", "**", "*.html"), recursive=True)
                   if not p.endswith(".probe.html"))
    if not pages:
        pytest.skip("no reports under reports/ yet (make demo)")
    _need_chromium()
    for page in pages:
        if os.path.basename(page) == "index.html":
            rec = render(page)
            assert rec["errors"] == [] and rec["console"] == [], rec
        elif os.path.basename(page).startswith("sweep"):
            check_page(page, min_tables=1, min_images=0)  # a sweep page: what was measured, no plots
        else:
            check_page(page, min_tables=3, min_images=1)
