"""The bf16 check that opens the GPU check: the path every real measurement takes, tried before any sweep.

On one full-size model in bfloat16 (llama3-8b: grouped-query attention, so the static step's decode
attention, the SDPA kernel chosen for it and the graph capture are all the real ones), one short greedy
generation each with:
  - `static`, CUDA graph replay (what the sweep's static points measure);
  - `static` with graphs off (the same step run eagerly);
  - `hf-loop` (transformers' eager loop).
It passes when the static backend captured (backend mode "cuda-graph"), its tokens equal the eager static
step's (the graph replays the same kernels), and its first token equals hf-loop's (the same prompt
forward). Later tokens of hf-loop are compared and reported, not required: with random weights the
logits of a bf16 model are near ties, and hf-loop's attention kernels differ from the static step's, so
a flip there says nothing about correctness. Prints one verdict line first, then the details; writes
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

from perfkit.backends import get_backend
from perfkit.measure import synthetic_prompt
from perfkit.models import build_model
from perfkit.timing import clock_for, on_device


def generate(backend_name: str, model, prompt, output_len: int, graphs: bool = True):
    """One greedy generation; returns (tokens on the host, the backend's mode, its note)."""
    saved = os.environ.get("PERFKIT_STATIC_GRAPHS")
    os.environ["PERFKIT_STATIC_GRAPHS"] = "1" if graphs else "0"
    try:
        backend = get_backend(backend_name)
        with on_device(model.device), torch.inference_mode():
            backend.prepare(model, prompt.shape[0], prompt.shape[1], output_len)
            tokens = backend.run(model, prompt, output_len, clock_for(model.device, output_len + 1))
        return tokens.cpu(), getattr(backend, "mode", "eager"), getattr(backend, "note", None)
    finally:
        if saved is None:
            os.environ.pop("PERFKIT_STATIC_GRAPHS", None)
        else:
            os.environ["PERFKIT_STATIC_GRAPHS"] = saved


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

    graph_tokens, mode, note = generate("static", model, prompt, args.output_len)
    eager_tokens, _, _ = generate("static", model, prompt, args.output_len, graphs=False)
    loop_tokens, _, _ = generate("hf-loop", model, prompt, args.output_len)

    checks = {
        "captured": mode == "cuda-graph" or trial,  # a CPU has no graphs: the trial checks the rest
        "graph_equals_eager_static": torch.equal(graph_tokens, eager_tokens),
        "first_token_equals_hf_loop": bool(graph_tokens[0, 0] == loop_tokens[0, 0]),
    }
    passed = all(checks.values())
    details = {
        "passed": passed, "checks": checks, "model": model_name, "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "static_mode": mode,
        "static_note": note, "tokens_equal_to_hf_loop": leading_agreement(graph_tokens, loop_tokens),
        "output_len": args.output_len, "input_len": args.input_len, "build_s": round(build_s, 2),
        "static_tokens": graph_tokens[0].tolist(), "hf_loop_tokens": loop_tokens[0].tolist(),
    }
    failed = [name for name, ok in checks.items() if not ok]
    print(f"graph check: {'PASS' if passed else 'FAIL (' + ', '.join(failed) + ')'}: {model_name} "
          f"{details['dtype']} on {details['device']}, static mode {mode}, "
          f"{details['tokens_equal_to_hf_loop']}/{args.output_len} leading tokens equal to hf-loop's"
          + (f"; note: {note}" if note else ""))
    print(json.dumps(details, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(details, f, indent=1)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
