"""Energy of each timed repeat, from the GPU board's own energy counter (NVML).

NVML's `nvmlDeviceGetTotalEnergyConsumption` (Volta and later) is a monotonic counter of the millijoules
the board has used since the driver loaded. Reading it before and after a repeat gives that repeat's
energy with no sampling of our own and nothing added to the timed loop: one host call before the
repeat starts and one after its final synchronize. The counter is the whole board's (memory, idle
draw, anything else running on the GPU), and NVIDIA updates it every few tens of milliseconds, so a
repeat much shorter than that reads coarsely: read energy_j of short points as indicative, not exact.

On a CPU, or without nvidia-ml-py (pynvml), or on a GPU without the counter, every figure is None.
"""

from __future__ import annotations

import time

import torch


def _nvml_handle(device: torch.device):
    import pynvml

    pynvml.nvmlInit()
    index = device.index if device.index is not None else torch.cuda.current_device()
    # CUDA and NVML may number devices differently (CUDA_VISIBLE_DEVICES): match by UUID when torch has it.
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class EnergyMeter:
    """`read()` → (millijoules so far, perf_counter seconds); `available` is False where there is no counter."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.available = False
        self._handle = None
        if self.device.type != "cuda":
            return
        try:
            import pynvml

            self._handle = _nvml_handle(self.device)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)  # raises where not supported
            self.available = True
        except Exception:  # noqa: BLE001 - no pynvml, no driver, no counter: energy is simply unknown
            self._handle = None

    def read(self) -> tuple[int, float] | None:
        if not self.available:
            return None
        import pynvml

        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)), time.perf_counter()


def repeat_energy(before, after) -> tuple[float, float] | tuple[None, None]:
    """(joules, average watts) between two `read()`s; (None, None) when either is missing."""
    if before is None or after is None:
        return None, None
    joules = (after[0] - before[0]) / 1e3
    seconds = after[1] - before[1]
    return joules, (joules / seconds if seconds > 0 else None)
