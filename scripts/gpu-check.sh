#!/usr/bin/env bash
# The GPU check: run from the repository root on the device machine with its own python3 (torch,
# transformers, pandas, pyarrow, PyYAML, tqdm, nvidia-ml-py; no Jupyter), results and a log under $OUT.
#
#   PERFKIT_GIT_COMMIT=<sha> bash scripts/gpu-check.sh                   # on the GPU ($OUT set): ~7-8 minutes
#   OUT=/tmp/trial bash scripts/gpu-check.sh --cpu-trial                 # rehearsal on a CPU: ~1-2 minutes
#
# What comes back from the device machine is at most 8 files no more than 2 folders below $OUT, so the
# work happens in a scratch folder and $OUT holds two files: gpu-check.log (everything printed) and
# gpu-check.tgz (the scratch folder: results/, each step's output, CSV tables), re-packed atomically after
# every step, so a run killed at its time limit still brings back every finished step.
#
# Steps, in the order that answers the most first (each bounded by `timeout`, killed 5 s after its cap if
# SIGINT did not stop it; each leaves its output even if a later one fails; the caps add up to 535 s, at
# most 585 s with every kill delay, inside the 600 s a device command may run):
#   1. provenance of the machine (cuDNN version included)            -> env.json                    25 s
#   2. perfkit probe: achievable bandwidth and matrix FLOP/s           -> results/gpu-check/probes/   30 s
#   3. scripts/graph_check.py: llama3-8b in bf16, static captures a CUDA graph and its tokens equal the
#      eager static step's and its first token hf-loop's (a failure is announced at the top of the
#      log; the rest still runs)                                       -> graph-check.json            50 s
#   4. benchmarks/goals.py: the speed goals for llama3-8b            -> results/goals/, goals.txt   80 s
#   5. params/gpu-check.yaml under a 3.4-minute budget: the three full-size models in bf16, hf-loop vs
#      static, I 128 and 2048, O 128, batch 1 everywhere first, then 16 and 64 -> results/gpu-check/ 220 s
#   6. params/gpu-check-oom.yaml: llama2-13b out of memory at B=96, I=2048, recorded as data for both
#      backends (the message says set-up or prompt pass), then B=96 at I=128 -> results/gpu-check-oom/ 50 s
#   7. benchmarks/overhead.py: harness overhead against a bare loop   -> overhead.txt                30 s
#   8. the test suite's CUDA tests (pytest -m gpu; the device has pytest) -> gpu-tests.txt            30 s
#   9. perfkit summary (tables, speed of light) and perfkit compare static vs hf-loop
#                                                                      -> summary/, compare/ (CSV)  10+10 s
# On this side: tar -xzf gpu-check.tgz -C /tmp/gc && cp -r /tmp/gc/results/* results/ && make reports.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/perfkit-gpu-check.XXXXXX")
LOG="$OUT/gpu-check.log"
if [ "${1:-}" = "--cpu-trial" ]; then
  PARAMS=params/gpu-check-trial.yaml; OOM_PARAMS=params/gpu-check-oom-trial.yaml; OOM_FAULT=oom:96
  SWEEP_MIN=1.5; GOALS_MIN=1; OVERHEAD_MODEL=tiny-llama2-13b; SIDE=cpu; TRIAL=--cpu-trial
else
  # Sized for a 15-minute device window, start-up included, and the 10-minute limit of one command. The
  # steps after the sweep can be redone on the CPU side from the results (perfkit summary / compare).
  PARAMS=params/gpu-check.yaml; OOM_PARAMS=params/gpu-check-oom.yaml; OOM_FAULT=
  SWEEP_MIN=3.4; GOALS_MIN=1.1; OVERHEAD_MODEL=llama3-8b; SIDE=gpu; TRIAL=
fi
export PERFKIT_GIT_COMMIT=${PERFKIT_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a step killed at its cap keeps what it printed
RESULTS="$WORK/results/$(basename "$PARAMS" .yaml)"
status=0

pack() {  # the scratch folder as $OUT/gpu-check.tgz, replaced only once the new archive is whole; each
  # pack writes its own temporary file, so two packs (the exit trap and a step's) never share one
  local part
  part=$(mktemp "$OUT/gpu-check.tgz.XXXXXX") && tar -C "$WORK" -czf "$part" . && mv -f "$part" "$OUT/gpu-check.tgz"
}
trap pack EXIT

step() {  # step NAME TIMEOUT_S CMD...: run, keep its output in NAME.txt, keep going; a failure makes the exit non-zero
  local name=$1 limit=$2; shift 2
  echo "=== $(date -u +%H:%M:%S) $name: $*"
  local t0=$SECONDS
  # --foreground keeps the step in the script's process group, so whoever kills the group kills it too
  timeout --foreground --signal=INT --kill-after=5 "$limit" "$@" 2>&1 | tee "$WORK/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  echo "$name exit $rc after $((SECONDS - t0)) s" >> "$WORK/steps.txt"
  [ $rc -eq 0 ] || status=1
  pack
}

{
  echo "perfkit gpu-check, commit $PERFKIT_GIT_COMMIT, params $PARAMS, $(date -u +%FT%TZ), scratch $WORK"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step env 25 sh -c "\"$PY\" -m perfkit env --json > \"$WORK/env.json\" && cat \"$WORK/env.json\""
  step probe 30 "$PY" -m perfkit probe --dtypes bfloat16,float32 --out "$RESULTS"
  step graph-check 50 "$PY" scripts/graph_check.py $TRIAL --out "$WORK/graph-check.json"
  step goals 80 "$PY" benchmarks/goals.py --out "$WORK/results/goals" --max-minutes "$GOALS_MIN" --quick
  step sweep 220 "$PY" -m perfkit sweep "$PARAMS" --out "$RESULTS" --max-minutes "$SWEEP_MIN" --no-progress
  step oom 50 env ${OOM_FAULT:+PERFKIT_SWEEP_FAULT=$OOM_FAULT} "$PY" -m perfkit sweep "$OOM_PARAMS" \
    --out "$WORK/results/$(basename "$OOM_PARAMS" .yaml)" --no-progress
  step overhead 30 "$PY" benchmarks/overhead.py --model "$OVERHEAD_MODEL" --output-len 32 --repeats 7
  # the tests that need CUDA (tiny models): CUDA-event timing, graph capture and replay tokens, NVML energy
  step gpu-tests 30 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_static.py \
    tests/test_energy.py tests/test_probe.py
  step summary 10 "$PY" -m perfkit summary "$RESULTS" --points --csv "$WORK/summary"
  step compare 10 "$PY" -m perfkit compare "$RESULTS:$SIDE-static" "$RESULTS:$SIDE-hf-loop" --csv "$WORK/compare"
  echo "gpu-check finished with status $status; results packed in $OUT/gpu-check.tgz"
  exit "$status"
} 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
# What a reader must see first: the bf16 graph check's verdict and every step that failed, at the top.
{
  echo "=== summary: $(grep -m1 '^graph check:' "$WORK/graph-check.txt" 2>/dev/null || echo 'graph check: did not report')"
  grep -v ' exit 0 ' "$WORK/steps.txt" 2>/dev/null | sed 's/^/=== FAILED step: /'
  echo "=== overall exit $rc"
  cat "$LOG"
} > "$LOG.new" && mv -f "$LOG.new" "$LOG"
exit "$rc"
