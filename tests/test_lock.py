"""One sweep at a time per results directory: a second is refused naming the first (pid, host, since when),
writing nothing; a lock whose holder died is taken over; under the lock a sweep removes the temporary
files of interrupted writes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, call_cli, fake_measuring, write_params

import perfkit.sweep.units as units
from perfkit.errors import UsageError
from perfkit.results import LOCK, load_results, lock, remove_interrupted_writes
from perfkit.sweep import run_sweep

pytestmark = pytest.mark.slow  # builds and saves models / starts processes: seconds

GRID = {"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2]}

HOLD = ("import sys\n"
        "from perfkit.results import lock\n"
        "with lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/out (through perfkit.results.lock); ends with the test."""
    out = str(tmp_path / "out")
    child = subprocess.Popen([sys.executable, "-c", HOLD, out], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert child.stdout.readline().strip() == "locked"
        yield out, child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def _everything(out):
    return sorted((d, sorted(fs)) for d, _, fs in os.walk(out))


def test_a_second_sweep_is_refused_naming_the_holder(tmp_path, holder, monkeypatch):
    calls = fake_measuring(monkeypatch)
    out, child = holder
    before = _everything(out)
    params = write_params(tmp_path / "p.yaml", grid=GRID)
    r = call_cli("sweep", params, "--out", out)
    assert r.returncode == 2 and r.stdout == ""
    [line] = r.stderr.splitlines()
    assert line.startswith(f"perfkit: error: results directory {out!r} is in use by another sweep "
                           f"(pid {child.pid} on host {socket.gethostname()} since 20")
    assert "expected one sweep at a time per results directory" in line
    assert calls == [] and _everything(out) == before  # nothing measured, nothing written

    child.stdin.close()  # the holder ends normally: the lock is free again
    assert child.wait(timeout=30) == 0
    assert run_sweep(params, out_dir=out, progress=False).measured == 2


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, holder, monkeypatch):
    out, child = holder
    child.send_signal(signal.SIGKILL)  # dies holding it: the kernel releases the flock, the file still names it
    child.wait(timeout=30)
    with open(os.path.join(out, LOCK)) as f:
        assert json.load(f)["pid"] == child.pid
    calls = fake_measuring(monkeypatch)
    seen = []
    measure = units.measure_point

    def measure_and_look(*a, **kw):
        with open(os.path.join(out, LOCK)) as f:
            seen.append(json.load(f))
        return measure(*a, **kw)

    monkeypatch.setattr(units, "measure_point", measure_and_look)
    assert run_sweep(write_params(tmp_path / "p.yaml", grid=GRID), out_dir=out, progress=False).measured == 2
    assert len(calls) == 2
    assert {(s["pid"], s["host"]) for s in seen} == {(os.getpid(), socket.gethostname())}  # the new holder
    assert os.path.getsize(os.path.join(out, LOCK)) == 0  # released: it names no one


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    out = str(tmp_path / "out")
    with lock(out) as me:
        assert me["pid"] == os.getpid()
        with pytest.raises(UsageError, match=rf"pid {os.getpid()} on host "):
            with lock(out):
                pass
    with lock(out):  # released
        pass


def test_a_refused_sweep_into_a_new_directory_leaves_no_directory(tmp_path, monkeypatch):
    """A refusal that comes under the lock (here: an unknown CUDA device on this machine) still writes
    nothing: the directory the lock needed is removed again."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    fake_measuring(monkeypatch)
    out = str(tmp_path / "new" / "out")
    params = write_params(tmp_path / "p.yaml", grid=GRID,
                          systems=[{"label": "gpu", "backend": "hf-loop", "dtype": "bfloat16", "device": "cuda"}])
    r = call_cli("sweep", params, "--out", out)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert not os.path.exists(tmp_path / "new")


def test_a_sweep_removes_the_temporary_files_of_interrupted_writes(tmp_path, monkeypatch, capsys):
    fake_measuring(monkeypatch)
    params = write_params(tmp_path / "p.yaml", grid=GRID)
    out = str(tmp_path / "out")
    run_sweep(params, out_dir=out, progress=False)
    points, runs = os.path.join(out, "points"), os.path.join(out, "runs")
    dead = os.path.join(points, ".tmp-999999999-abcd")  # its writer is gone
    old_style = os.path.join(runs, ".tmp-k2j4h5")  # written before temporary names carried a pid
    stale_live = os.path.join(points, f".tmp-{os.getppid()}-old")  # a live pid, but written long ago
    in_flight = os.path.join(points, f".tmp-{os.getppid()}-now")  # a live writer, just now: kept
    for f in (dead, old_style, stale_live, in_flight):
        with open(f, "wb") as fh:
            fh.write(b"PAR1 half a point")
    hour_ago = time.time() - 3600
    os.utime(stale_live, (hour_ago, hour_ago))
    assert len(load_results(out)) == 2  # never read as points meanwhile
    capsys.readouterr()
    assert run_sweep(params, out_dir=out, progress=False).measured == 0
    err = capsys.readouterr().err
    assert f"perfkit: removed 3 temporary files of interrupted writes from {out}" in err.splitlines()
    assert [os.path.exists(f) for f in (dead, old_style, stale_live, in_flight)] == [False, False, False, True]
    assert remove_interrupted_writes(out, min_age_s=0) == 1  # once it is old, it goes too


def test_points_are_written_under_a_temporary_name_that_carries_the_writer(tmp_path, monkeypatch):
    """atomic_write's temporary file names its process, which is what lets a sweep tell an interrupted
    write from one in flight."""
    import tempfile

    import perfkit.results as results

    seen = []
    real = tempfile.mkstemp

    def spy(*a, **kw):
        seen.append(kw.get("prefix"))
        return real(*a, **kw)

    monkeypatch.setattr(results.tempfile, "mkstemp", spy)
    results.write_run(str(tmp_path), "r", {"run_id": "r"})
    assert seen == [f".tmp-{os.getpid()}-"]


@pytest.mark.parametrize("kind", ["hard link", "foreign file", "deeply nested"])
def test_a_lock_file_perfkit_did_not_write_is_refused_and_never_truncated(tmp_path, monkeypatch, kind):
    """A hard link in the lock's place is another name of a file elsewhere (its content would go with a
    truncation), a file holding anything but a lock record is someone's file: both are refused in one
    line, left as they are, and nothing is measured or written."""
    from hostile_files import DEEP_JSON

    calls = fake_measuring(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "precious.txt"
    content = DEEP_JSON if kind == "deeply nested" else "precious data\n"
    if kind == "hard link":
        elsewhere.write_text(content)
        os.link(elsewhere, out / LOCK)
    else:
        (out / LOCK).write_text(content)
    r = call_cli("sweep", write_params(tmp_path / "p.yaml", grid=GRID), "--out", out)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    [line] = r.stderr.splitlines()
    expected = "is a hard link (2 names of one file)" if kind == "hard link" else \
        "holds something other than a perfkit lock record"
    assert line.startswith(f"perfkit: error: {str(out / LOCK)!r} {expected}: expected the sweep's lock file"), line
    assert (out / LOCK).read_text() == content and calls == [] and sorted(os.listdir(out)) == [LOCK]
    if kind == "hard link":
        assert elsewhere.read_text() == content
