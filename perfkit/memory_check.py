"""Memory checked before building: a model (or a point) that cannot fit is recorded as out of memory
*predicted*, with the numbers, and never built.

On a CPU host, running out of memory is not an exception: the kernel's OOM killer ends the whole sweep
with SIGKILL (and again on every resume), so the kit must learn that llama2-13b does not fit in 24 GB
before it allocates, not after. The check sets the weights' bytes (perfkit.roofline: the parameter count
of the architecture times the dtype's size) and, per point, the KV cache and an activation estimate
against the memory available now: the host's MemAvailable (/proc/meminfo) or the free CUDA memory.

Where it guesses, it guesses high, and says so: the activation estimate counts fp32 logits for every
prompt position and four MLP-width buffers per token, more than an inference pass keeps alive at once,
and HEADROOM_BYTES is kept free for the allocator, the runtime and the rest of the process. A point it
refuses might just have fitted; a point it lets through has a margin.
"""

from __future__ import annotations

HEADROOM_BYTES = 1 << 30  # 1 GiB left free: allocator slack, the interpreter, libraries, the OS's own


class PredictedOutOfMemory(MemoryError):
    """Out of memory, predicted before allocating: a MemoryError, so a sweep records the point as "oom"."""


def available_bytes(device: str) -> int | None:
    """Memory that can be allocated now on `device`: free CUDA memory, or the host's MemAvailable (Linux);
    None where it cannot be read (the check then passes: it never refuses on a guess of the machine)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def activation_bytes(model: str, dtype: str, batch: int, input_len: int) -> int:
    """A conservative bound on a prompt pass's live activations: fp32 logits for every position, plus four
    MLP-width and four hidden-width buffers per token in the model's dtype."""
    from perfkit import roofline as rl

    a = rl.arch(model)
    tokens = batch * input_len
    return tokens * (4 * a.vocab + rl.dtype_bytes(dtype) * (4 * a.intermediate + 4 * a.hidden))


def check_build(model: str, dtype: str, device: str) -> None:
    """Raise PredictedOutOfMemory where `model`'s weights in `dtype` (and the headroom) exceed what `device`
    has available now."""
    from perfkit import roofline as rl

    free = available_bytes(device)
    if free is None:
        return
    weights = rl.weight_bytes(model, dtype)
    if weights + HEADROOM_BYTES > free:
        raise PredictedOutOfMemory(
            f"out of memory predicted, not built: {model} in {dtype} needs {_gb(weights)} of weights "
            f"+ {_gb(HEADROOM_BYTES)} headroom, {_gb(free)} available on {device} (perfkit.memory_check)")


def check_point(model: str, dtype: str, device: str, batch: int, input_len: int, output_len: int) -> None:
    """With the model built: raise PredictedOutOfMemory where the point's KV cache (I + O tokens per
    sequence) and activation estimate (and the headroom) exceed what `device` has available now."""
    from perfkit import roofline as rl

    free = available_bytes(device)
    if free is None:
        return
    kv = rl.kv_bytes_per_token(model, dtype) * batch * (input_len + output_len)
    act = activation_bytes(model, dtype, batch, input_len)
    if kv + act + HEADROOM_BYTES > free:
        raise PredictedOutOfMemory(
            f"out of memory predicted, not run: batch {batch} needs {_gb(kv)} of KV cache + {_gb(act)} of "
            f"activations (a conservative estimate) + {_gb(HEADROOM_BYTES)} headroom, {_gb(free)} available on "
            f"{device} with the model built (perfkit.memory_check)")


def together_problem(builds: list[tuple[str, str, str]]) -> str | None:
    """Why these (model, dtype, device) builds cannot all be held at once, or None: the sum of their weights
    (and one headroom per process that holds one) against what each device has available now. An
    interleaved sweep (perfkit.sweep.interleave) asks before it builds; unknown memory never refuses."""
    from perfkit import roofline as rl

    need: dict[str, int] = {}
    for model, dtype, device in builds:
        need[device] = need.get(device, 0) + rl.weight_bytes(model, dtype) + HEADROOM_BYTES
    for device, needed in need.items():
        free = available_bytes(device)
        if free is not None and needed > free:
            held = [f"{m} in {d}" for m, d, dev in builds if dev == device]
            return (f"{' and '.join(held)} need {_gb(needed)} of weights and headroom together, {_gb(free)} "
                    f"available on {device}")
    return None
