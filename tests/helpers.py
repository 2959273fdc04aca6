"""Factories and runners shared by the test modules (import them with `from helpers import ...`).

No test module imports another test module or conftest.py: what several of them need lives here.
conftest.py holds only fixtures and hooks.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the command line ------------------------------------------------------------------------------

def modules_loaded_by(modules: str, watched: tuple[str, ...]) -> list[str]:
    """In a fresh interpreter, import `modules` ("perfkit.slo, perfkit.compare") and list the loaded modules
    whose top-level package is in `watched`, or which are `watched` entries themselves (for perfkit.* names)."""
    code = (f"import sys, {modules}\n"
            f"watched = {watched!r}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in watched or m in watched "
            "or any(m.startswith(w + '.') for w in watched if w.startswith('perfkit'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    return eval(r.stdout)  # a printed list of str


def run_cli(*args, cwd=None, timeout=300):
    """`python -m perfkit ARGS` in a subprocess; returns CompletedProcess with text output."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout)


def call_cli(*args, cwd=None):
    """`perfkit ARGS` in this process (perfkit.cli.main, from `cwd`, default the repository root): a
    CompletedProcess like run_cli's, without a new interpreter's second or two of start-up. For commands
    that stop before any measuring (bad input); an exception main lets through propagates, as a traceback
    would show in run_cli's stderr."""
    from perfkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd or ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # what `python -m perfkit` would exit with
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["perfkit", *map(str, args)], code, out.getvalue(), err.getvalue())


def publish(*args, cwd=None):
    """`python -m perfkit publish ARGS` in a subprocess, one OpenMP thread; returns CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "perfkit", "publish", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def load_shipped(path: str, scratch) -> object:
    """A shipped params file, checked in full. serve-demo.yaml names the checkpoint `make serve-demo` writes
    under build/ first: a tiny checkpoint written into `scratch` stands in for it."""
    from perfkit.params import parse_params, read_yaml
    from perfkit.tiny_checkpoint import write_checkpoint

    data = read_yaml(path)
    for i, model in enumerate(data["models"]):
        if model.startswith("build/"):
            data["models"][i] = write_checkpoint(os.path.join(str(scratch), os.path.basename(model)))
    return parse_params(data, source=path)


# ---- hand-made results rows ------------------------------------------------------------------------

ENV = {"device": "cpu", "device_name": "Test CPU", "torch_version": "2.13.0", "transformers_version": "5.17.0",
       "git_commit": "abc123"}


def make_row(system, model, i, o, b, ttft_ms, e2e_ms, dtype="float32", status="ok", **extra):
    """One results row built the way perfkit builds them, from raw samples in ms."""
    from perfkit.metrics import point_metrics
    from perfkit.rows import with_provenance

    row = {"system": system, "model": model, "dtype": dtype, "backend": "hf-loop", "attn_implementation": "sdpa",
           "input_len": i, "output_len": o, "batch": b, "status": status, "error": None if status == "ok" else status}
    row.update(point_metrics(b, i, o, [t / 1e3 for t in ttft_ms], [t / 1e3 for t in e2e_ms]))
    row.update({"peak_mem_bytes": (10 + b) * 2**20 if status == "ok" else None, "peak_mem_scope": "process-rss",
                "ttft_ms_samples": [float(t) for t in ttft_ms], "e2e_ms_samples": [float(t) for t in e2e_ms],
                "decode_step_ms_samples": [[] for _ in ttft_ms]})
    row.update(extra)
    key = {"system": system, "model": model, "input_len": i, "output_len": o, "batch": b, "dtype": dtype}
    return with_provenance(row, "run-" + system, ENV, key)


def write_rows(out_dir, rows):
    from perfkit.results import write_point, write_run

    os.makedirs(out_dir, exist_ok=True)
    for sysname in {r["system"] for r in rows}:
        write_run(str(out_dir), "run-" + sysname, {**ENV, "run_id": "run-" + sysname})
    for r in rows:
        write_point(str(out_dir), r)
    return str(out_dir)


def study_rows(system, scale, models=("tiny-llama2-13b", "tiny-mistral-7b"), batches=(1, 2, 4), i=32, o=8,
               extra_points=()):
    """Rows whose every latency is `scale` times the reference: ttft = 10·B ms, e2e = ttft + 7·(5 + B) ms."""
    rows = []
    for m in models:
        for b in batches:
            ttft = 10.0 * b * scale
            e2e = ttft + 7 * (5.0 + b) * scale
            rows.append(make_row(system, m, i, o, b, [ttft] * 3, [e2e] * 3))
    for (m, ii, oo, b) in extra_points:
        rows.append(make_row(system, m, ii, oo, b, [10.0 * scale] * 3, [50.0 * scale] * 3))
    return rows


# ---- small params files for sweep tests: tiny models, tiny grids, CPU --------------------------------

CPU = {"label": "cpu", "backend": "hf-loop", "dtype": "float32", "device": "cpu", "attn_implementation": "sdpa"}


def params_dict(**overrides) -> dict:
    d = {
        "name": "t",
        "models": ["tiny-llama2-13b"],
        "systems": [dict(CPU)],
        "grid": {"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2, 4]},
        "warmup": 1,
        "repeats": 2,
        "seed": 0,
        "search": {"min_gain": None},  # never stop on a plateau: the points measured are deterministic
        "derive_output_lens": False,
    }
    d.update(overrides)
    return d


def write_params(path, **overrides) -> str:
    path = str(path)
    with open(path, "w") as f:
        yaml.safe_dump(params_dict(**overrides), f, sort_keys=False)
    return path


def fake_measuring(monkeypatch) -> list:
    """Make a sweep (perfkit.sweep.units) measure instantly: no model is built, each point gets made-up
    timings that grow with the batch (ttft 2·B ms, each decode step 1 + B/8 ms, the same on every repeat).
    Returns the list of measured points, (system label, model, I, O, B), that the sweep appends to as it
    goes."""
    import torch

    import perfkit.sweep.units as units
    from perfkit.measure import PointMeasurement

    calls = []

    def measure(model, system, point, warmup, repeats, seed):
        calls.append((system.label, point.model, point.input_len, point.output_len, point.batch))
        ttft, step = 0.002 * point.batch, 0.001 * (1 + point.batch / 8)
        e2e = ttft + (point.output_len - 1) * step
        return PointMeasurement(point, system, [ttft] * repeats, [e2e] * repeats,
                                [[step] * (point.output_len - 1)] * repeats, warmup * e2e, 0.0, None, "none",
                                torch.zeros((point.batch, point.output_len), dtype=torch.long))

    monkeypatch.setattr(units, "measure_point", measure)
    monkeypatch.setattr(units, "build_model", lambda *a, **kw: object())
    return calls


def sigkill_midway(argv: list, out: str, points: int = 2, timeout_s: float = 120.0) -> None:
    """Run `python -m perfkit ARGV` (one OpenMP thread: on a shared 2-core machine spinning threads make a
    busy CPU crawl) and SIGKILL it as soon as `out` holds `points` point files; asserts it was killed."""
    import glob
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while (len(glob.glob(os.path.join(out, "points", "*.parquet"))) < points and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
