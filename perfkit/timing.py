"""Clocks that timestamp points in a run of device work, with as little overhead as we can manage.

On a GPU, `mark()` records a CUDA event on the current stream (no host synchronisation) and the times are
resolved after one synchronize at the end, so the measured loop runs exactly as it would untimed. On a CPU
every operation is synchronous, so `time.perf_counter()` at each mark is the device time.
"""

from __future__ import annotations

import contextlib
import time

import torch


class CpuClock:
    def __init__(self, n_marks: int):
        self._stamps = [0.0] * n_marks
        self._n = 0

    def mark(self) -> None:
        self._stamps[self._n] = time.perf_counter()
        self._n += 1

    def marks_made(self) -> int:
        return self._n

    def seconds(self) -> list[float]:
        """Seconds from the first mark to each mark (the first is 0.0)."""
        t0 = self._stamps[0]
        return [t - t0 for t in self._stamps[: self._n]]


class CudaClock:
    def __init__(self, n_marks: int, device: torch.device | None = None):
        # torch creates a CUDA event lazily, at its first record(), on that stream's device: record each
        # one once now, before the timed region, on the device the marks will be made on, so that a mark
        # inside the region only re-records an existing event.
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(n_marks)]
        stream = torch.cuda.current_stream(device)
        for event in self._events:
            event.record(stream)
        self._n = 0

    def mark(self) -> None:
        self._events[self._n].record()
        self._n += 1

    def marks_made(self) -> int:
        return self._n

    def seconds(self) -> list[float]:
        torch.cuda.synchronize()
        e0 = self._events[0]
        return [0.0] + [e0.elapsed_time(e) / 1e3 for e in self._events[1 : self._n]]


def clock_for(device: torch.device, n_marks: int):
    return CudaClock(n_marks, device) if device.type == "cuda" else CpuClock(n_marks)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def on_device(device: torch.device):
    """Make `device` the current CUDA device for the block (a no-op elsewhere).

    CUDA events record on the *current* device's stream and torch.cuda.synchronize() waits for the
    current device: measuring on cuda:1 while cuda:0 is current would time host dispatch against an idle
    stream. Every timed region runs inside this.
    """
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
