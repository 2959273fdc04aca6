"""Peak memory of a measured point: device memory on a GPU, the process's resident set on a CPU."""

from __future__ import annotations

import resource

import torch


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Context manager: `.peak_bytes` after exit.

    GPU: torch's allocator high-water mark (what the tensors needed; the caching allocator may hold more).
    CPU: the process's peak resident set (VmHWM). Linux lets us reset that mark by writing 5 to
    /proc/self/clear_refs, so the figure belongs to this point, not to whatever ran before; where that is
    not allowed the figure is the process-lifetime peak, and `.scope` says so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.scope = "point"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.scope = "process"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            hwm_kib = _read_status_kib("VmHWM")
            if hwm_kib is None:
                hwm_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                self.scope = "process"
            self.peak_bytes = hwm_kib * 1024
        return False
