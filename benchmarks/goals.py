"""perfkit's speed goals on a GPU, measured (a benchmark that prints its figures, not a test that passes or fails).

On a GPU (the goals are stated for an H100 in bf16, llama3-8b with random weights):
  1. B=1, I=128, O=128: decode tokens/s with `static` (goal >= 150; transformers eager ~35), beside hf-loop,
     and where the two backends' bf16 tokens first diverge.
  2. B=1, I=2048: ttft of `static` within 1.3x the prefill bound at the probed bf16 matrix throughput.
  3. I=128, O=128: multi-user total max throughput (B·O/e2e, best B > 1) with `static` (goal >= 15,000).
  4. `static` / `hf-loop` ratios over the gpu-check grid (I=2048, O=16, B=1,8,32,128).
Every measured row goes to --out (a results directory, with its probe under probes/), so the report
layer can render it; the printed table is a summary of those rows.

On a CPU the goals cannot be measured (they are about an H100): it says so, prints the bounds the
roofline gives for them on the H100's spec, and measures what a CPU can: tiny-llama3-8b `static` vs
`hf-loop` tokens and speed.

    python3 benchmarks/goals.py --out results/goals            # GPU: ~4 minutes on an H100
    python3 benchmarks/goals.py --quick                        # fewer points

perfkit must be importable (installed, or PYTHONPATH=. from the repository root, as scripts/gpu-check.sh
sets it). The bf16 CUDA-graph check of the full-size model is scripts/graph_check.py, run before this.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

from perfkit import roofline
from perfkit.hardware import by_name, lookup
from perfkit.measure import is_out_of_memory, measure_point
from perfkit.models import build_model
from perfkit.provenance import environment, new_run_id
from perfkit.rows import failed_row, point_fields, to_row, with_provenance
from perfkit.workload import Point, System

MODEL = "llama3-8b"


class Runner:
    def __init__(self, model, model_name, device, out, deadline):
        self.model, self.model_name, self.device, self.out, self.deadline = model, model_name, device, out, deadline
        self.env = environment(device)
        self.run_id = new_run_id()
        self.rows = []
        if out:
            from perfkit.results import write_run

            write_run(out, self.run_id, {**self.env, "run_id": self.run_id, "command": sys.argv})

    def point(self, backend, batch, input_len, output_len, warmup=1, repeats=2):
        """Measure one point; returns (row, measurement or None). OOM is a recorded outcome.

        Every point of a label uses the same warm-up and repeats: a results directory holds one definition
        per label (readers refuse a mixture), and goals' --out is read like any other."""
        if time.monotonic() > self.deadline:
            print(f"  (time budget spent: skipping {backend} B={batch} I={input_len} O={output_len})")
            return None, None
        dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        system = System(backend, backend, dtype, self.device, "sdpa")
        point = Point(self.model_name, input_len, output_len, batch)
        m = None
        try:
            m = measure_point(self.model, system, point, warmup=warmup, repeats=repeats)
            row = to_row(m)
        except Exception as exc:  # noqa: BLE001 - one failed point must not lose the figures of the others
            status = "oom" if is_out_of_memory(exc) else "error"
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            row = failed_row(system, point, status, f"{type(exc).__name__}: {first_line}")
        finally:
            gc.collect()
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        key = {**point_fields(system, point.model, point.input_len, point.output_len, point.batch, warmup, repeats, 0),
               "run_id": self.run_id}
        row = with_provenance(row, self.run_id, self.env, key)
        if self.out:
            from perfkit.results import write_point

            write_point(self.out, row)
        self.rows.append(row)
        if row["status"] == "ok":
            print(f"  {backend:<8} B={batch:<4} I={input_len:<5} O={output_len:<4} ttft {row['ttft_ms']:8.2f} ms  "
                  f"tpot {row['tpot_ms']:7.2f} ms  decode {row['decode_tok_s']:9.1f} tok/s  "
                  f"output {row['output_tok_s']:9.1f} tok/s  setup {row['setup_ms']:7.0f} ms"
                  + (f"  {row['j_per_token']:.3f} J/tok at {row['avg_power_w']:.0f} W"
                     if row.get("j_per_token") is not None and row.get("avg_power_w") is not None else ""),
                  flush=True)
        else:
            print(f"  {backend:<8} B={batch:<4} I={input_len:<5} O={output_len:<4} {row['status']}: {row['error']}",
                  flush=True)
        return row, m


def first_divergence(a: torch.Tensor, b: torch.Tensor) -> list:
    """Per sequence, the index of the first generated token where a and b differ (None: identical)."""
    out = []
    for x, y in zip(a, b):
        diff = (x != y).nonzero()
        out.append(int(diff[0]) if len(diff) else None)
    return out


def profile_decode(model, device) -> None:
    """Where a static decode step's time goes: the top CUDA kernels over one B=1, I=128, O=32 request."""
    from torch.profiler import ProfilerActivity, profile

    from perfkit.backends import get_backend
    from perfkit.measure import synthetic_prompt
    from perfkit.timing import CudaClock, synchronize

    backend = get_backend("static")
    backend.prepare(model, 1, 128, 32)
    prompt = synthetic_prompt(1, 128, model.config.vocab_size)
    with torch.inference_mode():
        backend.run(model, prompt, 32, CudaClock(33))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            backend.run(model, prompt, 32, CudaClock(33))
            synchronize(model.device)
    print(f"\nprofile of one static request (mode {backend.mode}), top kernels by CUDA time:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


def verdict(ok) -> str:
    return "unknown" if ok is None else ("MET" if ok else "not met")


def probe_device(device: str, out: str | None) -> tuple[dict, float, float]:
    """The device's probed copy bandwidth and bf16 matmul throughput (the bounds the goals are read against)."""
    from perfkit.probe import probe, write_probe

    print(f"probing {device}...", flush=True)
    rec = probe(device, ("bfloat16",), budget_s=2)
    if out:
        write_probe(out, rec)
    bw, mm = rec["copy_bandwidth_bytes_s"], rec["matmul_flops"]["bfloat16"]
    spec = lookup(rec["device_name"])
    spec_text = (f"{spec.name}: {spec.mem_bw_bytes_s / 1e12:.2f} TB/s, {spec.bf16_flops / 1e12:.0f} TFLOP/s"
                 if spec else "unknown")
    print(f"device {rec['device_name']}: probed copy {bw / 1e12:.2f} TB/s, bf16 matmul {mm / 1e12:.0f} TFLOP/s; "
          f"spec {spec_text}")
    return rec, bw, mm


def goal_decode(r: Runner, bw: float) -> dict:
    """Goal 1: B=1, I=128, O=128 decode tokens/s, static beside hf-loop, and where their tokens diverge."""
    print("\ngoal 1: B=1, I=128, O=128 decode tokens/s")
    static, ms = r.point("static", 1, 128, 128)
    loop, mh = r.point("hf-loop", 1, 128, 128)
    return {"static": static, "hf_loop": loop,
            "divergence": first_divergence(ms.tokens, mh.tokens) if ms is not None and mh is not None else None,
            "generated": ms.tokens.shape[1] if ms is not None else None,
            "sol_tok_s": bw / roofline.decode_bytes_per_step(MODEL, "bfloat16", 1, 128, 128)}


def goal_ttft(r: Runner, mm: float) -> tuple[float | None, float]:
    """Goal 2: ttft at B=1, I=2048 against the prefill bound at the probed matmul throughput."""
    print("\ngoal 2: B=1, I=2048 ttft vs the prefill bound at the probed matmul throughput")
    row, _ = r.point("static", 1, 2048, 4)
    return row and row.get("ttft_ms"), roofline.prefill_flops(MODEL, 1, 2048) / mm * 1e3


def goal_multi_user(r: Runner, batches: list[int]) -> tuple[int, float] | None:
    """Goal 3: I=128, O=128 multi-user total max throughput with static, climbing until it stops gaining 3%."""
    print("\ngoal 3: I=128, O=128 multi-user total max throughput (static)")
    best = None
    for b in batches:
        row, _ = r.point("static", b, 128, 128)
        if row is None or row["status"] != "ok":
            break
        if best is not None and row["output_tok_s"] < best[1] * 1.03:
            return max(best, (b, row["output_tok_s"]), key=lambda t: t[1])
        best = (b, row["output_tok_s"]) if best is None or row["output_tok_s"] > best[1] else best
    return best


def static_vs_hf_loop(r: Runner, batches: list[int]) -> list[tuple]:
    """Goal 4: static / hf-loop ratios of ttft, tpot and output throughput (I=2048, O=16)."""
    print("\ngoal 4: static / hf-loop over the gpu-check grid (I=2048, O=16)")
    ratios = []
    for b in batches:
        st, _ = r.point("static", b, 2048, 16)
        hf, _ = r.point("hf-loop", b, 2048, 16)
        if st and hf and st["status"] == hf["status"] == "ok":
            ratios.append((b, st["ttft_ms"] / hf["ttft_ms"], st["tpot_ms"] / hf["tpot_ms"],
                           hf["output_tok_s"] / st["output_tok_s"]))
    return ratios


def print_goals(device_name: str, decode: dict, ttft: tuple, best, ratios: list) -> None:
    print(f"\n=== speed goals on {device_name} (bf16, {MODEL}, random weights) ===")
    s1, h1 = decode["static"], decode["hf_loop"]
    st_tok, hf_tok = s1 and s1.get("decode_tok_s"), h1 and h1.get("decode_tok_s")
    print(f"1. decode B=1 I=128 O=128: static {st_tok or float('nan'):.1f} tok/s (goal >= 150: "
          f"{verdict(None if st_tok is None else st_tok >= 150)}); hf-loop {hf_tok or float('nan'):.1f} tok/s; "
          f"speed of light at the probed bandwidth {decode['sol_tok_s']:.1f} tok/s")
    if decode["divergence"] is not None:
        print(f"   first generated token where static and hf-loop differ, per sequence: {decode['divergence']} "
              f"(None: all {decode['generated']} identical; bf16 rounding may differ after many steps)")
    ttft_ms, bound_ms = ttft
    print(f"2. ttft B=1 I=2048: static {ttft_ms or float('nan'):.2f} ms, prefill bound (probed) {bound_ms:.2f} ms, "
          f"ratio {(ttft_ms or float('nan')) / bound_ms:.2f}x "
          f"(goal <= 1.3x: {verdict(None if ttft_ms is None else ttft_ms / bound_ms <= 1.3)})")
    if best:
        print(f"3. multi-user total max throughput I=128 O=128: {best[1]:.0f} tok/s at B={best[0]} "
              f"(goal >= 15,000: {verdict(best[1] >= 15000)})")
    else:
        print("3. multi-user total max throughput: not measured")
    if s1 and h1 and s1["status"] == h1["status"] == "ok":
        ratios = [("1 (I=128,O=128)", s1["ttft_ms"] / h1["ttft_ms"], s1["tpot_ms"] / h1["tpot_ms"],
                   h1["output_tok_s"] / s1["output_tok_s"])] + ratios
    print("4. static vs hf-loop (< 1: static better)\n"
          "   B                 Ratio_ttft  Ratio_tpot  Ratio_Throughput(output)")
    for b, rt, rp, rthr in ratios:
        print(f"   {str(b):<18}{rt:10.3f}  {rp:10.3f}  {rthr:10.3f}")


def gpu(args) -> int:
    rec, bw, mm = probe_device(args.device, args.out)
    t0 = time.perf_counter()
    model = build_model(MODEL, torch.bfloat16, args.device)
    print(f"built {MODEL} bf16 in {time.perf_counter() - t0:.1f} s", flush=True)
    r = Runner(model, MODEL, args.device, args.out, time.monotonic() + args.max_minutes * 60)
    decode = goal_decode(r, bw)
    ttft = goal_ttft(r, mm)
    best = goal_multi_user(r, [64, 256, 512] if args.quick else [64, 128, 256, 512, 1024])
    ratios = static_vs_hf_loop(r, [1, 32] if args.quick else [1, 8, 32, 128])
    if args.profile:
        profile_decode(model, args.device)
    print_goals(rec["device_name"], decode, ttft, best, ratios)
    if args.out:
        print(f"\nrows and probe written to {args.out}")
    return 0


def cpu(args) -> int:
    print("The speed goals are H100 figures (llama3-8b, bf16): they cannot be measured on this CPU.")
    h100 = by_name("H100 SXM")
    step = roofline.decode_bytes_per_step(MODEL, "bfloat16", 1, 128, 128)
    print(f"What the roofline says about them on an {h100.name} spec sheet (bounds, not measurements):")
    print(f"  decode B=1 I=128 O=128: {step / 1e9:.2f} GB read per step -> at most "
          f"{h100.mem_bw_bytes_s / step:.0f} tok/s at {h100.mem_bw_bytes_s / 1e12:.2f} TB/s (goal 150)")
    print(f"  prefill B=1 I=2048: {roofline.prefill_flops(MODEL, 1, 2048) / 1e12:.2f} TFLOP -> at least "
          f"{roofline.prefill_flops(MODEL, 1, 2048) / h100.bf16_flops * 1e3:.1f} ms "
          f"at {h100.bf16_flops / 1e12:.0f} TFLOP/s")
    print("\nWhat this CPU can measure: tiny-llama3-8b, float32, static vs hf-loop (same tokens, no CUDA graphs):")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    name = "tiny-llama3-8b"
    model = build_model(name, torch.float32, "cpu")
    r = Runner(model, name, "cpu", args.out, time.monotonic() + args.max_minutes * 60)
    s, ms = r.point("static", 1, 32, 16)
    h, mh = r.point("hf-loop", 1, 32, 16)
    if ms is not None and mh is not None:
        print(f"  tokens identical: {torch.equal(ms.tokens, mh.tokens)};  Ratio_tpot static/hf-loop "
              f"{s['tpot_ms'] / h['tpot_ms']:.3f} (< 1: static faster)")
    return 0


def main(argv=None) -> int:
    from perfkit.cli import restore_interrupt

    restore_interrupt()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="results directory for the measured rows and the probe")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer points (about half the time)")
    p.add_argument("--profile", action="store_true", help="also profile one static request (top CUDA kernels)")
    p.add_argument("--max-minutes", type=float, default=6.0, help="stop measuring new points after this long")
    args = p.parse_args(argv)
    return gpu(args) if args.device.startswith("cuda") else cpu(args)


if __name__ == "__main__":
    sys.exit(main())
