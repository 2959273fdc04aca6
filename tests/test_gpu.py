"""GPU-only checks: skipped without CUDA (the CPU machines), run where a GPU is present."""

import time

import pytest
import torch

from perfkit.measure import measure_point
from perfkit.timing import CudaClock
from perfkit.workload import Point, System

pytestmark = pytest.mark.gpu  # skipped without CUDA by tests/conftest.py


def test_cuda_clock_times_device_work_not_host_dispatch():
    # torch.cuda._sleep spins the GPU for a number of cycles; the host returns at once. The event clock
    # must report the device's time, and report it the same with or without a host stall after it.
    clock = CudaClock(2)
    torch.cuda.synchronize()
    host_start = time.perf_counter()
    clock.mark()
    torch.cuda._sleep(50_000_000)
    clock.mark()
    gpu_s = clock.seconds()[1]  # synchronizes: the device has passed both marks
    host_s = time.perf_counter() - host_start
    assert gpu_s > 0.005
    # Whatever the load on the host, the device cannot take longer between the marks than the host saw
    # from before the first was recorded to after the second was passed: a clock reading 2x fails here.
    assert gpu_s <= host_s, (gpu_s, host_s)


def test_tiny_model_on_cuda_reports_device_memory():
    from perfkit.models import build_model

    model = build_model("tiny-llama3-8b", torch.bfloat16, "cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    m = measure_point(model, System("gpu", "hf-loop", "bfloat16", "cuda"), Point("tiny-llama3-8b", 64, 8, 2),
                      warmup=1, repeats=2)
    assert m.peak_mem_bytes >= sum(p.numel() * p.element_size() for p in model.parameters())
    assert all(len(s) == 7 for s in m.step_s)
