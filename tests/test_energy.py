"""Energy per repeat: NVML counter plumbing (faked on the CPU), arithmetic, and nulls where there is no counter."""

import types

import pytest
import torch

from perfkit import energy, metrics
from perfkit.measure import measure_point
from perfkit.rows import to_row
from perfkit.workload import Point, System


def test_cpu_has_no_energy_counter():
    meter = energy.EnergyMeter("cpu")
    assert not meter.available and meter.read() is None
    assert energy.repeat_energy(None, (5, 1.0)) == (None, None)
    cols = metrics.energy_columns([None, None], [None, None], 10)
    assert cols == {"energy_j": None, "avg_power_w": None, "j_per_token": None, "energy_j_samples": []}


def test_energy_arithmetic():
    # 1,500 mJ over 0.5 s is 1.5 J at 3 W.
    assert energy.repeat_energy((10_000, 2.0), (11_500, 2.5)) == (1.5, 3.0)
    cols = metrics.energy_columns([2.0, 4.0, 3.0], [100.0, 300.0, 200.0], 10)
    assert cols["energy_j"] == 3.0 and cols["avg_power_w"] == 200.0 and cols["j_per_token"] == pytest.approx(0.3)
    assert cols["energy_j_samples"] == [2.0, 4.0, 3.0]


class _FakeNvml(types.ModuleType):
    """Counts 250 mJ per read, like a board drawing power while the repeat runs."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__("pynvml")
        self.mj = 1_000_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.mj += 250
        return self.mj


def test_meter_reads_the_nvml_counter(monkeypatch):
    fake = _FakeNvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    monkeypatch.setattr(energy, "_nvml_handle", lambda device: "handle")
    meter = energy.EnergyMeter("cuda:0")
    assert meter.available
    joules, watts = energy.repeat_energy(meter.read(), meter.read())
    assert joules == 0.25 and watts > 0


def test_measure_point_records_energy_per_repeat(monkeypatch, tiny_models):
    class FakeMeter:
        def __init__(self, device):
            self.reads = 0

        def read(self):
            self.reads += 1
            return 1000 * self.reads, 0.1 * self.reads  # 1 J and 0.1 s between consecutive reads

    import perfkit.measure as measure

    monkeypatch.setattr(measure, "EnergyMeter", FakeMeter)
    m = measure_point(tiny_models["tiny-llama3-8b"], System(), Point("tiny-llama3-8b", 8, 4, 2), warmup=0, repeats=3)
    row = to_row(m)
    assert row["energy_j_samples"] == [1.0, 1.0, 1.0]
    assert row["energy_j"] == 1.0 and row["avg_power_w"] == pytest.approx(10.0)
    assert row["j_per_token"] == pytest.approx(1.0 / 8)  # B·O = 8 generated tokens


def test_cpu_rows_have_null_energy_and_mix_with_gpu_rows(tmp_path, tiny_models):
    from perfkit.results import load_results, write_point

    m = measure_point(tiny_models["tiny-llama3-8b"], System(), Point("tiny-llama3-8b", 8, 3, 1), warmup=0, repeats=2)
    cpu = to_row(m)
    assert cpu["energy_j"] is None and cpu["avg_power_w"] is None and cpu["j_per_token"] is None
    gpu = dict(cpu, energy_j=2.0, avg_power_w=350.0, j_per_token=0.5, energy_j_samples=[2.0, 2.0])
    write_point(str(tmp_path), dict(cpu, point_key="a", run_id="r"))
    write_point(str(tmp_path), dict(gpu, point_key="b", run_id="r"))
    df = load_results(str(tmp_path))
    assert len(df) == 2 and sorted(df["energy_j"].dropna().tolist()) == [2.0]


@pytest.mark.gpu
def test_gpu_energy_is_positive_when_nvml_is_there():
    pytest.importorskip("pynvml")
    meter = energy.EnergyMeter("cuda")
    if not meter.available:
        pytest.skip("this GPU has no NVML energy counter")
    a = torch.randn(4096, 4096, device="cuda")
    before = meter.read()
    for _ in range(200):
        a = a @ a / 64
    torch.cuda.synchronize()
    joules, watts = energy.repeat_energy(before, meter.read())
    assert joules > 0 and watts > 0
