"""What oneDNN's instruction-set limit does to the two shapes of a bf16 LLM on this CPU: the known answer
behind params/cpu-full-size.yaml.

A prompt pass is a matrix product of many rows (compute bound: the BF16 dot-product instructions, or AMX,
should make it several times faster); a decode step at batch 1 is a matrix-vector product (bandwidth
bound: each weight is read once, so the instructions should matter little). Each ISA runs in its own
interpreter (ONEDNN_MAX_CPU_ISA acts only if set before torch loads). Prints GB/s of weights read for the
decode shapes (batch 1 and 2) and TFLOP/s for the prompt shape, per ISA, with the CPU model.

    python benchmarks/cpu_isa.py [--isas AVX512_CORE_BF16,AVX512_CORE]   (on an AMX machine: AVX512_CORE_AMX,...)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from perfkit.provenance import cpu_model

# One shape of llama3-8b / mistral-7b: the MLP's up projection (hidden 4096 -> intermediate 14336).
K, N = 4096, 14336

CHILD = f"""
import time, torch
torch.set_num_threads(os.cpu_count() or 1)
lin = torch.nn.functional.linear
def seconds(m, reps):
    a = torch.randn(m, {K}, dtype=torch.bfloat16); w = torch.randn({N}, {K}, dtype=torch.bfloat16)
    for _ in range(3): lin(a, w)  # oneDNN builds and caches its kernel on the first calls
    t = time.perf_counter()
    for _ in range(reps): lin(a, w)
    return (time.perf_counter() - t) / reps
for m in (1, 2):
    print(f"  decode shape, batch {{m}}: {{{K} * {N} * 2 / seconds(m, 30) / 1e9:6.1f}} GB/s of weights")
print(f"  prompt shape, 128 tokens: {{2 * 128 * {K} * {N} / seconds(128, 5) / 1e12:6.3f}} TFLOP/s")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isas", default="AVX512_CORE_BF16,AVX512_CORE")
    args = ap.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores; linear {K} -> {N} in bfloat16")
    for isa in args.isas.split(","):
        print(f"ONEDNN_MAX_CPU_ISA={isa}")
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
        subprocess.run([sys.executable, "-c", "import os\n" + CHILD], env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
