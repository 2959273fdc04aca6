"""The bf16 check that opens the GPU check: the path every real measurement takes, tried before any sweep.

On one full-size model in bfloat16 (llama3-8b: grouped-query attention, so the static step's decode
attention, the SDPA kernel chosen for it and the graph capture are all the real ones), one short greedy
generation each with:
  - `static`, CUDA graph replay (what the sweep's static points measure);
  - `static` with graphs off (the same step run eagerly);
  - `hf-loop` (transformers' eager loop).
It passes when the static backend captured (backend mode "cuda-graph"), its tokens equal the eager static
step's (the graph replays the same kernels), its first token equals hf-loop's (the same prompt forward),
and both of the static step's decode attention functions give transformers' sdpa result (which repeats
K/V heads) on the model's own decode shapes, in its dtype, with a partly filled cache mask. Later tokens
of hf-loop are compared and reported, not required: with random weights the logits of a bf16 model are
near ties, and hf-loop's attention kernels differ from the static step's, so a flip there says nothing
about correctness. Prints one verdict line first, then the details; writes
them as JSON to --out; exit 1 on failure.

    python3 scripts/graph_check.py --out graph-check.json                 # on the GPU
    python3 scripts/graph_check.py --cpu-trial --out graph-check.json     # rehearsal: tiny model, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from perfkit.attention import KernelRecorder, recording
from perfkit.backends import get_backend
from perfkit.measure import synthetic_prompt
from perfkit.models import build_model
from perfkit.timing import clock_for, on_device


def generate(backend_name: str, model, prompt, output_len: int, graphs: bool = True):
    """One greedy generation; returns (tokens on the host, the backend's mode, its note, its decode
    attention function, the SDPA kernel its decode ran)."""
    saved = os.environ.get("PERFKIT_STATIC_GRAPHS")
    os.environ["PERFKIT_STATIC_GRAPHS"] = "1" if graphs else "0"
    try:
        backend = get_backend(backend_name)
        kernels = KernelRecorder()
        with on_device(model.device), torch.inference_mode():
            with recording(kernels):
                backend.prepare(model, prompt.shape[0], prompt.shape[1], output_len)
            tokens = backend.run(model, prompt, output_len, clock_for(model.device, output_len + 1))
        buffers = getattr(backend, "buffers", None)
        return (tokens.cpu(), getattr(backend, "mode", "eager"), getattr(backend, "note", None),
                getattr(buffers, "decode_attention", None), kernels.kernels("decode"))
    finally:
        if saved is None:
            os.environ.pop("PERFKIT_STATIC_GRAPHS", None)
        else:
            os.environ["PERFKIT_STATIC_GRAPHS"] = saved


def decode_attention_error(config, dtype, device, batch: int = 2, cache_len: int = 256) -> dict:
    """Largest |difference| of each decode attention function from transformers' sdpa (the reference, which
    repeats K/V heads), on this model's decode shapes: one query position, a cache filled to 60 %."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from perfkit.static_backend import gqa_decode_sdpa, grouped_decode_sdpa

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn((batch, heads, 1, head_dim), generator=gen).to(device, dtype)
    k, v = (torch.randn((batch, kv_heads, cache_len, head_dim), generator=gen).to(device, dtype) for _ in range(2))
    mask = (torch.arange(cache_len, device=device) < int(cache_len * 0.6)).view(1, 1, 1, cache_len).expand(
        batch, 1, 1, cache_len)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    with torch.inference_mode():
        want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=head_dim ** -0.5)
        return {f.__name__: float((f(module, q, k, v, mask, scaling=head_dim ** -0.5)[0] - want).abs().max())
                for f in (grouped_decode_sdpa, gqa_decode_sdpa)}


def leading_agreement(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two (1, O) generations share."""
    differ = (a[0] != b[0]).nonzero()
    return int(differ[0]) if len(differ) else a.shape[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-trial", action="store_true", help="tiny model, float32, CPU (no graphs to check)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--out", default=None, help="JSON file for the details")
    args = parser.parse_args()

    trial = args.cpu_trial
    model_name = args.model or ("tiny-llama3-8b" if trial else "llama3-8b")
    dtype, device = (torch.float32, "cpu") if trial else (torch.bfloat16, "cuda")
    t0 = time.perf_counter()
    model = build_model(model_name, dtype, device, "sdpa", seed=0)
    build_s = time.perf_counter() - t0
    prompt = synthetic_prompt(1, args.input_len, model.config.vocab_size, seed=0)

    graph_tokens, mode, note, decode_function, decode_kernel = generate("static", model, prompt, args.output_len)
    eager_tokens, *_ = generate("static", model, prompt, args.output_len, graphs=False)
    loop_tokens, *_ = generate("hf-loop", model, prompt, args.output_len)
    # bf16 keeps 8 bits of mantissa: outputs of order 1 agree to a few 1e-3; 2e-2 catches a wrong head
    # pairing or mask (errors of order 1) with room for summation order.
    attention_error = decode_attention_error(model.config, dtype, device)
    tolerance = 2e-2 if dtype != torch.float32 else 1e-4

    checks = {
        "captured": mode == "cuda-graph" or trial,  # a CPU has no graphs: the trial checks the rest
        "graph_equals_eager_static": torch.equal(graph_tokens, eager_tokens),
        "first_token_equals_hf_loop": bool(graph_tokens[0, 0] == loop_tokens[0, 0]),
        "decode_attention_equals_reference": all(e <= tolerance for e in attention_error.values()),
    }
    passed = all(checks.values())
    details = {
        "passed": passed, "checks": checks, "model": model_name, "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "static_mode": mode,
        "static_note": note, "tokens_equal_to_hf_loop": leading_agreement(graph_tokens, loop_tokens),
        "decode_attention": decode_function, "sdpa_decode_kernel": decode_kernel,
        "decode_attention_max_abs_error": attention_error, "tolerance": tolerance,
        "output_len": args.output_len, "input_len": args.input_len, "build_s": round(build_s, 2),
        "static_tokens": graph_tokens[0].tolist(), "hf_loop_tokens": loop_tokens[0].tolist(),
    }
    failed = [name for name, ok in checks.items() if not ok]
    print(f"graph check: {'PASS' if passed else 'FAIL (' + ', '.join(failed) + ')'}: {model_name} "
          f"{details['dtype']} on {details['device']}, static mode {mode}, decode {decode_function} "
          f"on SDPA kernel {decode_kernel}, "
          f"{details['tokens_equal_to_hf_loop']}/{args.output_len} leading tokens equal to hf-loop's"
          + (f"; note: {note}" if note else ""))
    print(json.dumps(details, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(details, f, indent=1)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
