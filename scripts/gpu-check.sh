#!/usr/bin/env bash
# The GPU check: run from the repository root on the device machine with its own python3 (torch,
# transformers, pandas, pyarrow, PyYAML, tqdm, nvidia-ml-py; no Jupyter), results and a log under $OUT.
#
#   PERFKIT_GIT_COMMIT=<sha> OUT=/path/to/out bash scripts/gpu-check.sh          # on the GPU: ~7 minutes
#   OUT=/tmp/trial bash scripts/gpu-check.sh --cpu-trial                         # rehearsal on a CPU: ~2 minutes
#
# Steps (each bounded, each leaves its output even if a later one fails):
#   1. provenance of the machine                      -> $OUT/env.json
#   2. perfkit probe: achievable bandwidth and FLOP/s  -> $OUT/results/gpu-check/probes/
#   3. the sweep of params/gpu-check.yaml: three full-size models in bf16, hf-loop vs static, input 128
#      and 2048, output 128, batch 1 and 16 and a search step that records llama2-13b's OOM
#                                                     -> $OUT/results/gpu-check/
#   4. benchmarks/goals.py: issue 5's goals for llama3-8b (static decode tok/s, ttft vs prefill bound,
#      multi-user max throughput, where bf16 tokens of the backends diverge)
#                                                     -> $OUT/results/goals/, $OUT/goals.txt
#   5. benchmarks/overhead.py: harness overhead against a bare decode loop -> $OUT/overhead.txt
#   6. `perfkit summary`: the study's tables and speed of light     -> $OUT/summary.txt, $OUT/summary/*.csv
#   7. `perfkit compare` static vs hf-loop (ratios, bootstrap intervals) -> $OUT/compare.txt and CSVs
# Bring $OUT back, copy its results/ into the repository's results/, and render reports on the CPU side.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
if [ "${1:-}" = "--cpu-trial" ]; then
  PARAMS=params/gpu-check-trial.yaml; SWEEP_MIN=2; GOALS_MIN=1; OVERHEAD_MODEL=tiny-llama2-13b; SIDE=cpu
else
  # Sized for the device's 15 minutes, start-up included, and its 10-minute limit per command: the
  # step caps below add up to 9.5 minutes; ~7 minutes expected.
  PARAMS=params/gpu-check.yaml; SWEEP_MIN=3; GOALS_MIN=1.25; OVERHEAD_MODEL=llama3-8b; SIDE=gpu
fi
export PERFKIT_GIT_COMMIT=${PERFKIT_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RESULTS="$OUT/results/$(basename "$PARAMS" .yaml)"
status=0

step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.txt too, keep going; a failure makes the exit non-zero
  local name=$1 limit=$2; shift 2
  echo "=== $(date -u +%H:%M:%S) $name: $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}

{
  echo "perfkit gpu-check, commit $PERFKIT_GIT_COMMIT, params $PARAMS, $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 30 "$PY" -m perfkit env --json > "$OUT/env.json" || status=1
  cat "$OUT/env.json"; echo
  step probe 60 "$PY" -m perfkit probe --dtypes bfloat16,float32 --out "$RESULTS"
  step sweep $((SWEEP_MIN * 60 + 60)) "$PY" -m perfkit sweep "$PARAMS" --out "$RESULTS" --max-minutes "$SWEEP_MIN" --no-progress
  step goals 120 "$PY" benchmarks/goals.py --out "$OUT/results/goals" --max-minutes "$GOALS_MIN" --quick
  step overhead 60 "$PY" benchmarks/overhead.py --model "$OVERHEAD_MODEL" --output-len 32 --repeats 7
  step summary 30 "$PY" -m perfkit summary "$RESULTS" --points --csv "$OUT/summary"
  step compare 30 "$PY" -m perfkit compare "$RESULTS:$SIDE-static" "$RESULTS:$SIDE-hf-loop" --csv "$OUT/compare-static-vs-hf-loop"
  echo "gpu-check finished with status $status"
  exit "$status"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
