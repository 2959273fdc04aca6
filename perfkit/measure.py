"""Measure one workload point: W warm-up runs, then R timed repeats of prefill + greedy decode.

Physics, briefly. The prompt phase (prefill) pushes B·I tokens through every weight matrix at once: it
is bound by matrix throughput, so ttft grows with B·I. The token phase (decode) produces one token per
sequence per step and must read every weight (and the KV cache so far) from memory each step: at small
batch it is bound by memory bandwidth, so a step costs about the same for B = 1 as for B = 8, and batch
buys throughput almost for free until the arithmetic catches up. That is why the study separates the
two phases and searches over batch size for max throughput.

Contract. `measure_point` takes a model that is already built (a sweep builds each model once) and
returns a `PointMeasurement`: the raw per-repeat samples (ttft, e2e and every decode step, seconds), the
peak memory, the warm-up time and the generated tokens of the last repeat. `to_row` turns it into one
results row with the metrics of `perfkit.metrics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from perfkit.attention import KernelRecorder, recording
from perfkit.backends import get_backend
from perfkit.energy import EnergyMeter, repeat_energy
from perfkit.errors import UsageError, shown
from perfkit.memory import PeakMemory
from perfkit.models import context_length, parse_dtype, resolve_model
from perfkit.timing import clock_for, on_device, synchronize
from perfkit.workload import Point, System


@dataclasses.dataclass
class PointMeasurement:
    point: Point
    system: System
    ttft_s: list[float]
    e2e_s: list[float]
    step_s: list[list[float]]  # per repeat, output_len − 1 decode step times
    warmup_s: float
    setup_s: float  # backend set-up (cache allocation, graph capture): never inside ttft
    peak_mem_bytes: int | None
    peak_mem_scope: str
    tokens: torch.Tensor  # (batch, output_len) of the last repeat
    backend_mode: str = "eager"  # how decode ran: "eager", or "cuda-graph" where the backend replayed a graph
    energy_j: list | None = None  # per repeat, from the board's NVML counter; None entries where unavailable
    power_w: list | None = None  # per repeat, energy over the wall time between the two counter reads
    sdpa_prefill_backend: str | None = None  # the SDPA kernel(s) the prompt pass ran (perfkit.attention)
    sdpa_decode_backend: str | None = None  # the SDPA kernel(s) the decode steps ran; None where not seen


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {shown(device)}: expected cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} asked for, but CUDA is not available on this machine: "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {shown(device)}: expected cpu or cuda[:N]")
    return dev


def validate(system: System, point: Point) -> None:
    """Check everything about a point before any model is built. Raises UsageError."""
    resolve_model(point.model)
    parse_dtype(system.dtype)
    get_backend(system.backend)
    check_device(system.device)
    for field in ("input_len", "output_len", "batch"):
        value = getattr(point, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{field.replace('_', '-')} must be a positive integer, got {shown(value)}")
    ctx = context_length(point.model)
    if point.input_len + point.output_len > ctx:
        raise UsageError(
            f"input-len {point.input_len} + output-len {point.output_len} = {point.input_len + point.output_len} "
            f"exceeds {point.model}'s context of {ctx} tokens"
        )


def synthetic_prompt(batch: int, input_len: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids on the host: exactly input_len per sequence, no padding."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, input_len), generator=gen, dtype=torch.long)


def _one_repeat(backend, model, prompt, output_len, device):
    clock = clock_for(device, output_len + 1)
    tokens = _run_naming_phase(backend, model, prompt, output_len, clock)
    marks = clock.seconds()
    if len(marks) != output_len + 1:
        raise RuntimeError(f"backend {backend.name} marked {len(marks)} times, expected {output_len + 1}")
    steps = [b - a for a, b in zip(marks[1:], marks[2:])]
    return marks[1], marks[-1], steps, tokens


def measure_point(model, system: System, point: Point, warmup: int = 1, repeats: int = 3,
                  seed: int = 0) -> PointMeasurement:
    """Time `point` on an already built `model`. Raises torch.OutOfMemoryError as is (a sweep records it)."""
    if repeats < 1 or warmup < 0:
        raise UsageError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    with PointSession(model, system, point, warmup, seed) as session:
        for _ in range(repeats):
            session.repeat()
        return session.finish()


class PointSession:
    """One point on a built model, opened (backend set-up and warm-up, untimed) and then timed one repeat at
    a time; `finish()` gives the PointMeasurement. measure_point runs its repeats back to back; an
    interleaved sweep (perfkit.sweep.interleave) alternates the repeats of several systems' sessions, each
    in its own process, so that whatever drifts on the machine meanwhile lands on every side alike.

    The memory peak and the device context span the session: its figure covers set-up, warm-up and every
    repeat, as in measure_point. Use it as a context manager (the exit closes what `finish` did not)."""

    def __init__(self, model, system: System, point: Point, warmup: int = 1, seed: int = 0):
        if warmup < 0:
            raise UsageError(f"need warmup >= 0, got warmup={warmup}")
        self.point, self.system, self.device = point, system, model.device
        self.model, self.backend = model, get_backend(system.backend)
        self.prompt = synthetic_prompt(point.batch, point.input_len, model.config.vocab_size, seed)
        self.ttft_s, self.e2e_s, self.step_s, self.energy_j, self.power_w = [], [], [], [], []
        self.tokens = None
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(on_device(self.device))
            self._stack.enter_context(torch.inference_mode())
            self._mem = self._stack.enter_context(PeakMemory(self.device))
            # Set-up and warm-up are untimed: there, and only there, the SDPA kernel of each call is recorded.
            self._kernels = KernelRecorder()
            with recording(self._kernels):
                with _out_of_memory_names("in set-up (the backend's cache and graph, before any prompt)"):
                    self.setup_s = self.backend.prepare(model, point.batch, point.input_len, point.output_len)
                t1 = time.perf_counter()
                for _ in range(warmup):
                    self.untimed_run()
                self.warmup_s = time.perf_counter() - t1
            self._meter = EnergyMeter(self.device)
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> PointSession:
        return self

    def __exit__(self, *exc) -> bool:
        self._stack.close()
        return False

    def untimed_run(self) -> None:
        """One run of the point that is not timed (a warm-up)."""
        _run_naming_phase(self.backend, self.model, self.prompt, self.point.output_len,
                          clock_for(self.device, self.point.output_len + 1))
        synchronize(self.device)

    def repeat(self) -> float:
        """One timed repeat; returns its ttft (s)."""
        # One counter read on each side of the repeat, outside the timed loop; _one_repeat has
        # synchronized the device before it returns, so the second read covers all of its work.
        before = self._meter.read()
        ttft, e2e, steps, self.tokens = _one_repeat(self.backend, self.model, self.prompt, self.point.output_len,
                                                    self.device)
        joules, watts = repeat_energy(before, self._meter.read())
        self.energy_j.append(joules)
        self.power_w.append(watts)
        self.ttft_s.append(ttft)
        self.e2e_s.append(e2e)
        self.step_s.append(steps)
        return ttft

    def finish(self) -> PointMeasurement:
        """The measurement of the repeats so far (at least one); closes the session."""
        if not self.ttft_s:
            raise UsageError("a point session finished before any timed repeat")
        tokens = self.tokens.to("cpu")
        self._stack.close()  # the memory peak is read on the way out
        # A backend that may fall back (static: no graph past a sliding window, or a failed capture) says how
        # it ran; the row keeps it, so a figure is never read as a graph-replay figure when it was not one.
        mode = getattr(self.backend, "mode", "eager")
        return PointMeasurement(self.point, self.system, self.ttft_s, self.e2e_s, self.step_s, self.warmup_s,
                                self.setup_s, self._mem.peak_bytes, self._mem.scope, tokens, mode, self.energy_j,
                                self.power_w, self._kernels.kernels("prefill"), self._kernels.kernels("decode"))


# Out-of-memory that does not arrive as torch.OutOfMemoryError: cuBLAS/cuDNN workspace allocations and
# some kernels report it as a plain RuntimeError with one of these messages; so does torch's host (CPU)
# allocator, "[enforce fail at alloc_cpu.cpp:...] DefaultCPUAllocator: can't allocate memory: you tried to
# allocate N bytes" ("not enough memory" on Windows).
_OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                 "cudaErrorMemoryAllocation", "DefaultCPUAllocator: can't allocate memory",
                 "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means the device or the host ran out of memory: torch.OutOfMemoryError, Python's
    MemoryError (a host allocation outside torch), or a RuntimeError saying so (_OOM_MESSAGES)."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MESSAGES))


@contextlib.contextmanager
def _out_of_memory_names(where):
    """Re-raise an out-of-memory error (either form) as torch.OutOfMemoryError saying where it happened;
    the sweep records the message. `where`: a phrase, or a function giving one at the time of the error."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        phrase = where() if callable(where) else where
        raise torch.OutOfMemoryError(f"out of memory {phrase}: {' '.join(str(exc).split())[:1500]}") from None


def _run_naming_phase(backend, model, prompt, output_len, clock):
    """One run; out of memory names the phase it happened in (prompt pass or decode)."""
    # the clock is marked at the prompt's start and at the first token: two marks mean the prompt was done
    with _out_of_memory_names(lambda: "in the prompt pass" if clock.marks_made() < 2 else "in decode"):
        return backend.run(model, prompt, output_len, clock)
