"""Harness overhead: perfkit's measured decode time against a bare loop making the same forward calls.

Both sides run the same model, prompt and number of decode steps; the bare loop is timed once around the
whole decode loop with nothing inside it but the forward, the argmax and the next-token feed. perfkit's
figure is the sum of its per-step times (a clock mark and a token store per step, as in a real
measurement). The two are interleaved, repeat by repeat, so that drift in the machine's load hits both
alike, with the order alternating; the printed ratio is the median of the per-pair ratios, with their IQR
as the noise floor it can be read against. Target: <= 1.02.

    python benchmarks/overhead.py [--model tiny-llama2-13b] [--device cpu] [--output-len 64] [--repeats 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from transformers import DynamicCache

from perfkit.measure import Point, System, default_dtype, measure_point, synthetic_prompt
from perfkit.models import build_model, cache_keyword, parse_dtype
from perfkit.timing import clock_for


def bare_decode_s(model, prompt, output_len):
    """Prefill untimed, then time the decode loop as one block: the least a harness can add.

    The same kind of clock as perfkit's (CUDA events on a GPU, perf_counter on a CPU), with just two
    marks, so the two sides differ only in what perfkit does per step.
    """
    device = model.device
    with torch.inference_mode():
        step = {cache_keyword(model): DynamicCache(config=model.config), "use_cache": True}
        ids = prompt.to(device)
        token = model(input_ids=ids, logits_to_keep=1, **step).logits[:, -1].argmax(-1)
        clock = clock_for(device, 2)
        clock.mark()
        for _ in range(output_len - 1):
            token = model(input_ids=token[:, None], **step).logits[:, -1].argmax(-1)
        clock.mark()
        return clock.seconds()[1]


def main() -> int:
    from perfkit.cli import restore_interrupt

    restore_interrupt()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama2-13b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    dtype = args.dtype or default_dtype(args.device)
    model = build_model(args.model, parse_dtype(dtype), args.device)
    system = System("overhead", "hf-loop", dtype, args.device)
    point = Point(args.model, args.input_len, args.output_len, args.batch)
    prompt = synthetic_prompt(args.batch, args.input_len, model.config.vocab_size)

    measure_point(model, system, point, warmup=1, repeats=1)  # warm both paths
    bare_decode_s(model, prompt, args.output_len)
    ours, bare = [], []
    for i in range(args.repeats):
        # Alternate which side goes first, so that neither always runs right after the other's set-up.
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            if side == 0:
                m = measure_point(model, system, point, warmup=0, repeats=1)
                ours.append(sum(m.step_s[0]))
            else:
                bare.append(bare_decode_s(model, prompt, args.output_len))
    pair_ratios = [a / b for a, b in zip(ours, bare)]
    ratio = statistics.median(pair_ratios)
    q1, _, q3 = statistics.quantiles(pair_ratios, n=4)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"model {args.model} {dtype} on {device}: B={args.batch} I={args.input_len} O={args.output_len}, "
          f"{args.repeats} interleaved repeats")
    print(f"decode time: perfkit median {statistics.median(ours) * 1e3:.2f} ms, "
          f"bare loop median {statistics.median(bare) * 1e3:.2f} ms")
    print(f"pairwise ratio spread (IQR): {q1:.4f} .. {q3:.4f}  (the machine's noise, not perfkit's overhead)")
    print(f"harness overhead ratio (perfkit / bare, median of pairs): {ratio:.4f}  "
          f"(target <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
