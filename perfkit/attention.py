"""Which fused attention kernel PyTorch's scaled_dot_product_attention (SDPA) actually runs.

SDPA picks one of several kernels per call (cuDNN, FlashAttention, memory-efficient, or the unfused
"math" fallback) from the dtype, the shapes, the mask and the device. Two machines that differ only in
that choice can differ several-fold in attention time, so every row records the kernel its prompt pass and
its decode steps used — "where it can be known": the choice is read with PyTorch's own selector
(`torch._fused_sdp_choice`, the function SDPA itself consults) on the very arguments of each call, during
untimed work only (set-up and warm-up), never inside a timed region or a CUDA graph capture.
"""

from __future__ import annotations

import contextlib

import torch

# torch.nn.attention.SDPBackend's values, as the selector returns them
_KERNEL_NAMES = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def sdpa_kernel_choice(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False) -> str:
    """The kernel SDPA would run for these arguments: cudnn, flash, efficient, math (or "unknown")."""
    try:
        choice = torch._fused_sdp_choice(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    except Exception:  # noqa: BLE001 - a torch without the selector, or arguments it refuses: say we do not know
        return "unknown"
    return _KERNEL_NAMES.get(int(choice), "unknown")


class KernelRecorder:
    """Collects the SDPA kernel of every call made inside `observe()`, by phase.

    A call whose query holds more than one position per sequence is the prompt pass ("prefill"); one
    position is a decode step. (The static backend's grouped decode stands a K/V head's query heads as
    rows of one query, so it tells the recorder the phase itself through `phase()`.)
    """

    def __init__(self):
        self.seen: dict[str, set[str]] = {"prefill": set(), "decode": set()}
        self._forced_phase: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str):
        saved, self._forced_phase = self._forced_phase, name
        try:
            yield
        finally:
            self._forced_phase = saved

    def kernels(self, phase: str) -> str | None:
        """"cudnn", or "cudnn+math" where calls of one phase went to several kernels; None if none seen."""
        return "+".join(sorted(self.seen[phase])) or None

    @contextlib.contextmanager
    def observe(self):
        functional = torch.nn.functional
        real = functional.scaled_dot_product_attention
        recorder = self

        def recording_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                           enable_gqa=False):
            capturing = query.is_cuda and torch.cuda.is_current_stream_capturing()
            if not capturing:  # the selector runs on the host; keep it out of a graph capture all the same
                phase = recorder._forced_phase or ("prefill" if query.shape[-2] > 1 else "decode")
                recorder.seen[phase].add(sdpa_kernel_choice(query, key, value, attn_mask, dropout_p, is_causal,
                                                            scale, enable_gqa))
            return real(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

        functional.scaled_dot_product_attention = recording_sdpa
        try:
            yield self
        finally:
            functional.scaled_dot_product_attention = real


# The recorder of the point being set up or warmed up, if any (set by perfkit.measure; read by the static
# backend to label its grouped decode calls).
_active: KernelRecorder | None = None


@contextlib.contextmanager
def recording(recorder: KernelRecorder):
    global _active
    saved, _active = _active, recorder
    try:
        with recorder.observe():
            yield recorder
    finally:
        _active = saved


def forget_kernels(phase: str) -> None:
    """Inside a recording: drop what a phase recorded so far (a retried capture replaces the failed one's)."""
    if _active is not None:
        _active.seen[phase].clear()


def decode_phase():
    """Inside a recording: label the calls of the block as decode calls. Elsewhere: nothing."""
    return _active.phase("decode") if _active is not None else contextlib.nullcontext()


def cudnn_version() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:  # a cuDNN library that does not match the one torch was built with
        return None
