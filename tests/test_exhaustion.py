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
