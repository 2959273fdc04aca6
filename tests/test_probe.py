"""`perfkit probe`: the figures' definitions, the record's provenance, and bad input."""

import json
import math
import os

import pytest
import torch
from helpers import call_cli, run_cli

from perfkit import probe, roofline


def test_definitions_with_a_fixed_timer(monkeypatch):
    # Every timed call takes exactly 0.5 s: the figures must be the documented work over 0.5 s.
    monkeypatch.setattr(probe, "_timer", lambda device: (lambda fn: (fn(), 0.5)[1]))
    cpu = torch.device("cpu")
    bw = probe.copy_bandwidth(cpu, n_bytes=4 << 20, repeats=3, budget_s=10)
    assert bw["copy_bytes"] == 4 << 20 and bw["copy_repeats"] == 3
    assert bw["copy_bandwidth_bytes_s"] == 2 * (4 << 20) / 0.5  # read once + written once
    mm = probe.matmul_throughput(cpu, torch.float32, n=64, repeats=3, budget_s=10)
    assert mm["flops"] == 2 * 64**3 / 0.5 and mm["n"] == 64


def test_real_cpu_figures_are_finite_and_positive():
    cpu = torch.device("cpu")
    bw = probe.copy_bandwidth(cpu, n_bytes=8 << 20, repeats=3, budget_s=1)
    mm = probe.matmul_throughput(cpu, torch.float32, n=128, repeats=3, budget_s=1)
    for value in (bw["copy_bandwidth_bytes_s"], bw["copy_bandwidth_median_bytes_s"], mm["flops"], mm["median_flops"]):
        assert math.isfinite(value) and value > 0
    assert bw["copy_bandwidth_bytes_s"] >= bw["copy_bandwidth_median_bytes_s"]  # best repeat >= median


@pytest.mark.slow
def test_cli_probe_writes_a_record_with_provenance(tmp_path):
    r = run_cli("probe", "--device", "cpu", "--dtypes", "float32", "--budget-s", "0.5", "--out", str(tmp_path),
                "--json")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    files = os.listdir(tmp_path / "probes")
    assert files == [f"{printed['run_id']}.json"]
    record = json.loads((tmp_path / "probes" / files[0]).read_text())
    assert record["kind"] == "probe" and record["device"] == "cpu"
    assert set(record["matmul_flops"]) == {"float32"} and record["copy_bandwidth_bytes_s"] > 0
    for field in ("device_name", "torch_version", "git_commit", "created_utc"):
        assert field in record["env"]
    assert record["device_name"] == record["env"]["device_name"]
    assert record["wall_s"] < 60
    assert roofline.load_probe(tmp_path)[0]["run_id"] == printed["run_id"]


@pytest.mark.parametrize("args,needle", [
    (["--device", "tpu"], "device"),
    (["--dtypes", "fp8"], "dtype"),
    (["--budget-s", "0"], "budget"),
    (["--budget-s", "soon"], "budget"),
])
def test_cli_probe_bad_input(tmp_path, args, needle):
    out = tmp_path / "out"
    r = call_cli("probe", "--device", "cpu", *args, "--out", str(out)) if "--device" not in args else \
        call_cli("probe", *args, "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.gpu
def test_gpu_probe_is_below_the_spec_peak():
    from perfkit.hardware import lookup

    record = probe.probe("cuda", ("bfloat16",), budget_s=2)
    spec = lookup(record["device_name"])
    assert record["copy_bandwidth_bytes_s"] > 0 and record["matmul_flops"]["bfloat16"] > 0
    if spec is not None:  # a probe beyond the datasheet would mean a wrong definition or a wrong table entry
        assert record["copy_bandwidth_bytes_s"] < spec.mem_bw_bytes_s
        assert record["matmul_flops"]["bfloat16"] < spec.bf16_flops
