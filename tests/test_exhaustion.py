"""Running out of host memory is data, like the GPU's: a sweep records `oom` and stops that search, and
`perfkit run` says so in one line (exit 1). Nothing here exhausts the machine: torch's host allocator is
asked for 2**60 bytes, more than any address space holds, and refuses at once; or MemoryError is raised."""

import pyarrow.parquet as pq
import pytest
import torch
from helpers import call_cli, write_params

from perfkit.measure import is_out_of_memory


def _host_allocation_failure() -> RuntimeError:
    try:
        torch.empty(2**60, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("an allocation of 2**60 bytes succeeded")


def test_host_allocation_failures_are_out_of_memory():
    exc = _host_allocation_failure()
    assert "DefaultCPUAllocator" in str(exc)
    assert is_out_of_memory(exc)
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the allocator's error types say so


def _rows(out):
    import glob
    import os

    return sorted((pq.read_table(f).to_pylist()[0] for f in glob.glob(os.path.join(out, "points", "*.parquet"))),
                  key=lambda r: r["batch"])


def _sweep_with(tmp_path, monkeypatch, fail):
    """A sweep of batches 1, 2, 4 whose measurement at batch >= 2 calls `fail`."""
    import perfkit.sweep.units as units
    from perfkit.sweep import run_sweep

    real = units.measure_point

    def measure(model, system, point, **kw):
        if point.batch >= 2:
            fail()
        return real(model, system, point, **kw)

    monkeypatch.setattr(units, "measure_point", measure)
    out = str(tmp_path / "out")
    outcome = run_sweep(write_params(tmp_path / "p.yaml", repeats=1), out_dir=out, progress=False)
    return outcome, _rows(out)


@pytest.mark.parametrize("fail", [
    pytest.param(lambda: torch.empty(2**60, dtype=torch.uint8), id="torch-host-allocator"),
    pytest.param(lambda: (_ for _ in ()).throw(MemoryError()), id="MemoryError"),
])
def test_a_sweep_records_host_out_of_memory_and_stops_that_search(tmp_path, monkeypatch, fail):
    outcome, rows = _sweep_with(tmp_path, monkeypatch, fail)
    assert [(r["batch"], r["status"], r["search_stop"]) for r in rows] == [(1, "ok", ""), (2, "oom", "oom")]
    assert len(outcome.ooms) == 1 and not outcome.failures  # out of memory is data, not a failure
    assert outcome.ooms[0]["error"]


def test_the_fault_hook_injects_a_real_host_allocation_failure(tmp_path, monkeypatch):
    from perfkit.sweep import run_sweep

    monkeypatch.setenv("PERFKIT_SWEEP_FAULT", "host-oom:2")
    out = str(tmp_path / "out")
    outcome = run_sweep(write_params(tmp_path / "p.yaml", repeats=1), out_dir=out, progress=False)
    rows = _rows(out)
    assert [(r["batch"], r["status"]) for r in rows] == [(1, "ok"), (2, "oom")]
    assert "DefaultCPUAllocator" in rows[1]["error"] and not outcome.failures


def test_perfkit_run_says_out_of_memory_in_one_line(tmp_path, monkeypatch):
    import perfkit.measure

    def measure(*args, **kwargs):
        torch.empty(2**60, dtype=torch.uint8)

    monkeypatch.setattr(perfkit.measure, "measure_point", measure)
    out = tmp_path / "out"
    r = call_cli("run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "--batch", "3",
                 "--out", out)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("perfkit: out of memory (batch 3): ") and "DefaultCPUAllocator" in last, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_perfkit_run_out_of_memory_while_building(tmp_path, monkeypatch):
    import perfkit.models

    def build(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(perfkit.models, "build_model", build)
    r = call_cli("run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "perfkit: out of memory (building the model): MemoryError"), r.stderr


def test_a_phase_named_by_measure_keeps_its_name(tmp_path, monkeypatch):
    import perfkit.measure

    def measure(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory in decode: CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(perfkit.measure, "measure_point", measure)
    r = call_cli("run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "perfkit: out of memory in decode (batch 1): CUDA out of memory. Tried to allocate 2.00 GiB"), r.stderr


# ---- a full disk, a file size limit: one line, nothing partial, the points before kept -----------------

def _disk_full_after(monkeypatch, files: int, err: int | None = None):
    """From the (files + 1)-th regular file perfkit syncs on, the file system is out of room: os.fsync raises
    OSError(ENOSPC) (or `err`), as a full disk does when the data reaches it. Directories sync as ever."""
    import errno
    import os
    import stat

    real, count = os.fsync, [0]

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            count[0] += 1
            if count[0] > files:
                code = err or errno.ENOSPC
                raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _one_error_line(r) -> str:
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("perfkit: warning: ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


def test_a_full_disk_stops_a_sweep_in_one_line_and_keeps_the_points_before(tmp_path, monkeypatch):
    import glob
    import os

    from helpers import fake_measuring

    from perfkit.results import read_point

    fake_measuring(monkeypatch)
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [16], "output_lens": [4],
                                                     "batch_sizes": [1, 2, 4, 8]})
    out = str(tmp_path / "out")
    _disk_full_after(monkeypatch, 3)  # the run record and two points
    r = call_cli("sweep", params, "--out", out, "--no-progress")
    assert r.returncode == 1
    line = _one_error_line(r)
    assert line.startswith(f"perfkit: error: cannot write {out}/points/") and line.endswith(
        ".parquet (No space left on device): expected free space on its file system"), line
    assert r.stdout.startswith(f"sweep -> {out}: measured 2 points, 0 already done"), r.stdout
    assert "stopped: a write failed; the 2 points written before it are stored" in r.stdout
    assert "multi-user max throughput:" in r.stdout  # the summary of what is stored
    stored = glob.glob(os.path.join(out, "points", "*"))
    assert len(stored) == 2 and all(read_point(p) for p in stored)  # whole points, no temporary file
    assert len(glob.glob(os.path.join(out, "runs", "*"))) == 1
    monkeypatch.undo()
    fake_measuring(monkeypatch)
    again = call_cli("sweep", params, "--out", out, "--no-progress")  # room again: the same command continues
    assert again.returncode == 0 and "measured 2 points, 2 already done" in again.stdout, again.stderr[-2000:]


@pytest.mark.parametrize("existing", [False, True])
def test_a_full_disk_leaves_no_partial_csv_set(tmp_path, monkeypatch, existing):
    import os

    from helpers import study_rows, write_rows

    results = write_rows(tmp_path / "results", study_rows("cpu", 1.0))
    csv = tmp_path / "deeper" / "csv"
    if existing:  # an earlier set stays whole: neither replaced in part nor mixed
        csv.mkdir(parents=True)
        for name in ("ttft", "oom", "slo"):
            (csv / f"{name}.csv").write_text("the old table")
    before = sorted(os.listdir(tmp_path))
    call_cli("summary", results)  # the directory's compacted copy, written on the first read, is no CSV
    _disk_full_after(monkeypatch, 2)
    r = call_cli("summary", results, "--csv", csv)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert line.startswith(f"perfkit: error: cannot write {csv}/") and "No space left on device" in line, line
    assert sorted(os.listdir(tmp_path)) == before  # no temporary folder left, no folder made
    if existing:
        assert {n: (csv / n).read_text() for n in os.listdir(csv)} == {
            f"{name}.csv": "the old table" for name in ("ttft", "oom", "slo")}
    monkeypatch.undo()
    assert call_cli("summary", results, "--csv", csv).returncode == 0
    assert len([n for n in os.listdir(csv) if n.endswith(".csv")]) >= 8 and not [
        n for n in os.listdir(csv.parent) if n.startswith(".tmp-")]


def test_a_full_disk_while_publishing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import os

    reports = tmp_path / "reports"
    _disk_full_after(monkeypatch, 0)
    r = call_cli("publish", "index", "--reports", reports)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert line == f"perfkit: error: cannot write {reports}/index.html (No space left on device): expected free " \
                   "space on its file system", line
    assert os.listdir(reports) == []


@pytest.mark.parametrize("sigxfsz", ["ignored", "default"])
def test_a_file_size_limit_leaves_no_partial_csv_set(tmp_path, sigxfsz):
    """`ulimit -f` below the largest table: the write gets EFBIG (SIGXFSZ ignored, by the shell or else by
    perfkit itself, whose default would kill the process), the command says so in one line, and the CSV
    folder is not made, where the tables that fit would be."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from helpers import ROOT, study_rows, write_rows

    results = write_rows(tmp_path / "results", study_rows("cpu", 1.0))
    assert call_cli("summary", results, "--csv", tmp_path / "sizes").returncode == 0
    sizes = sorted(os.path.getsize(tmp_path / "sizes" / n) for n in os.listdir(tmp_path / "sizes"))
    limit = (sizes[0] + sizes[-1]) // 2  # the smaller tables fit, the largest does not
    assert sizes[0] < limit < sizes[-1]

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN if sigxfsz == "ignored" else signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    csv = tmp_path / "csv"
    r = subprocess.run([sys.executable, "-m", "perfkit", "summary", results, "--csv", csv], capture_output=True,
                       text=True, cwd=ROOT, timeout=300, preexec_fn=limited,
                       env=dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 1
    line = _one_error_line(r)
    assert line.startswith(f"perfkit: error: cannot write {csv}/") and line.endswith(
        "(File too large): expected a file size limit (ulimit -f) that lets the file be written"), line
    assert not csv.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


# ---- out of memory outside a measurement ------------------------------------------------------------

class _ImportRunsOutOfMemory:
    """A meta path finder under which importing `name` raises MemoryError, as a large extension module's
    import does on a machine without the memory for it."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name:
            raise MemoryError
        return None


@pytest.mark.parametrize("where", ["importing", "reading a file", "torch, outside a measurement"])
def test_out_of_memory_outside_a_measurement_is_one_line(tmp_path, monkeypatch, where):
    import sys

    from helpers import study_rows, write_rows

    import perfkit.probe
    import perfkit.results

    t = write_rows(tmp_path / "t", study_rows("cpu", 1.0))
    args = ("summary", t)
    if where == "importing":
        monkeypatch.delitem(sys.modules, "perfkit.summary", raising=False)
        monkeypatch.setattr(sys, "meta_path", [_ImportRunsOutOfMemory("perfkit.summary"), *sys.meta_path])
    elif where == "reading a file":
        def read(*a, **kw):
            raise MemoryError
        monkeypatch.setattr(perfkit.results, "read_regular", read)
    else:
        def probe(*a, **kw):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        monkeypatch.setattr(perfkit.probe, "probe", probe)
        args = ("probe", "--device", "cpu", "--budget-s", "0.1")
    r = call_cli(*args)  # a MemoryError that escaped main would propagate here, as its traceback would show
    assert r.returncode == 1 and r.stdout == ""
    line = r.stderr.splitlines()[-1]
    assert line.startswith("perfkit: out of memory (") and "expected enough free memory for this command" in line
    assert ("CUDA out of memory" in line) == (where == "torch, outside a measurement"), line
    assert [x for x in r.stderr.splitlines() if not x.startswith("probing ")] == [line]
