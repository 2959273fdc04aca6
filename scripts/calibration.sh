#!/usr/bin/env bash
# The calibration page: perfkit's endpoint mode and AIPerf measure one vLLM server with the same load, AIPerf's
# runs are imported (perfkit import aiperf) and the two are compared level by level, so where both tools time
# the same thing their verdicts should read "within noise". `make calibration`; about 10 minutes on 2 cores,
# a quiet machine (no tests or other benchmarks running). Not part of make test.
#
#   bash scripts/calibration.sh [--fresh]        # results in results/calibration/, then make reports
#
# The server: vLLM's CPU build (make servers) serving perfkit's tiny checkpoint (float32), pinned to core 0
# with one thread. Each client runs alone, pinned to core 1, so a client never takes the server's core: on
# two shared cores a client that competes with the server for CPU times its own queueing, not the server's.
# The load: completions API, streaming, I = 64 and O = 16 tokens exactly (ignore_eos), closed loop at
# concurrency 1 and 4, 200 measured requests after 20 warm-up requests, for both tools. perfkit runs first,
# then AIPerf at each concurrency, on the same server start. AIPerf 0.13.0 is installed in its own venv
# (build/tools/aiperf: torch pinned to the CPU build first, as everywhere in this project). The server's
# prefix cache is off: AIPerf's synthetic prompts are all alike on the tiny vocabulary (its corpus words are
# unknown to it), perfkit's are seeded random ids, and a cache would spare one tool's prefill and not the
# other's. A third opinion: the server's own histograms (/metrics), read before and after each client's run,
# give its mean TTFT, time per output token and request latency for exactly that run's requests
# (server-metrics.json).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-.venv-servers/vllm/bin/python}
AIPERF_VENV=${AIPERF_VENV:-build/tools/aiperf}
OUT=${OUT:-results/calibration}
WORK=build/calibration
MODEL=$WORK/tiny-served
PORT=${PORT:-8011}
I=64 O=16 REQUESTS=200 WARMUP=20
LEVELS=(1 4)

for tool in "$PY" "$VLLM_PY"; do
  [ -x "$tool" ] || { echo "calibration: $tool is missing, expected make setup and make servers first" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "calibration: needs 2 cores (server on one, client on the other), found $(nproc)" >&2; exit 2; }
if [ "${1:-}" = "--fresh" ] || [ ! -d "$OUT" ]; then rm -rf "$OUT"; fi
if [ -e "$OUT/points" ] || [ -e "$OUT/loads" ]; then
  echo "calibration: $OUT already holds a run, expected --fresh to measure it again" >&2; exit 2
fi

if [ ! -x "$AIPERF_VENV/bin/aiperf" ]; then
  echo "== installing AIPerf 0.13.0 into $AIPERF_VENV"
  python3 -m venv "$AIPERF_VENV"
  "$AIPERF_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$AIPERF_VENV/bin/python" -m pip install --quiet torch==2.13.0
  echo "torch==2.13.0" > "$AIPERF_VENV/constraints.txt"
  "$AIPERF_VENV/bin/python" -m pip install --quiet -c "$AIPERF_VENV/constraints.txt" 'aiperf==0.13.0'
fi

mkdir -p "$WORK" "$OUT"
$PY -c "from perfkit.tiny_checkpoint import write_checkpoint; write_checkpoint('$MODEL')"

echo "== vLLM on core 0"
VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
  DO_NOT_TRACK=1 taskset -c 0 "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --dtype float32 \
  --max-model-len 2048 --no-enable-prefix-caching --host 127.0.0.1 --port "$PORT" > "$WORK/vllm.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 400); do
  if curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; then break; fi
  kill -0 $SERVER 2>/dev/null || { echo "calibration: vLLM exited, see $WORK/vllm.log" >&2; tail -20 "$WORK/vllm.log" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health" > /dev/null || { echo "calibration: vLLM not ready after 400 s" >&2; exit 1; }

metrics() { curl -sf "http://127.0.0.1:$PORT/metrics" > "$WORK/metrics-$1.txt"; }

echo "== perfkit's endpoint mode on core 1"
# one level per invocation, so that the server's histograms can be read around each: the first holds the
# 1-user level (and the sweep's batch point, 4 requests, and its probe request), the second resumes and
# measures only the 4-user level
sed 's/users: \[1, 4\]/users: [1]/' params/calibration.yaml > "$WORK/calibration-1.yaml"
grep -q 'users: \[1\]' "$WORK/calibration-1.yaml" || { echo "calibration: params/calibration.yaml has no users: [1, 4]" >&2; exit 2; }
metrics before-perfkit-1
taskset -c 1 $PY -m perfkit sweep "$WORK/calibration-1.yaml" --out "$OUT" --no-progress
metrics after-perfkit-1
taskset -c 1 $PY -m perfkit sweep params/calibration.yaml --out "$OUT" --no-progress
metrics after-perfkit-4

prev=after-perfkit-4
for c in "${LEVELS[@]}"; do
  echo "== AIPerf at concurrency $c on core 1"
  rm -rf "$WORK/aiperf-c$c"
  # AIPerf 0.13.0 refuses a local tokenizer path under HF_HUB_OFFLINE=1; the path is local, nothing is fetched
  taskset -c 1 env -u HF_HUB_OFFLINE HF_HUB_DISABLE_TELEMETRY=1 "$AIPERF_VENV/bin/aiperf" profile \
    --model "$MODEL" --tokenizer "$MODEL" --url "http://127.0.0.1:$PORT" --endpoint-type completions --streaming \
    --synthetic-input-tokens-mean $I --synthetic-input-tokens-stddev 0 --output-tokens-mean $O \
    --output-tokens-stddev 0 --extra-inputs ignore_eos:true --concurrency "$c" --request-count $REQUESTS \
    --warmup-request-count $WARMUP --random-seed 0 --no-server-metrics --no-gpu-telemetry --ui none \
    --artifact-dir "$WORK/aiperf-c$c" > "$WORK/aiperf-c$c.log" 2>&1
  metrics "after-aiperf-$c"
  mkdir -p "$OUT/aiperf-raw/c$c"
  cp "$WORK/aiperf-c$c/profile_export.jsonl" "$WORK/aiperf-c$c/profile_export_aiperf.json" "$OUT/aiperf-raw/c$c/"
done
curl -sf "http://127.0.0.1:$PORT/version" > "$OUT/aiperf-raw/server-version.json" || true

echo "== perfkit again, after AIPerf (A B B A at the tools' level: a server that drifted shows here)"
rm -rf "$WORK/perfkit-again"
taskset -c 1 $PY -m perfkit sweep "$WORK/calibration-1.yaml" --out "$WORK/perfkit-again" --no-progress
metrics after-again-1
taskset -c 1 $PY -m perfkit sweep params/calibration.yaml --out "$WORK/perfkit-again" --no-progress
metrics after-again-4
$PY -m perfkit summary "$WORK/perfkit-again" > "$WORK/perfkit-again.txt"

echo "== the server's own view of each run (/metrics deltas)"
$PY - "$WORK" "$OUT/server-metrics.json" <<'PYEOF'
import json, re, sys
work, out = sys.argv[1], sys.argv[2]
# histograms: (mean of the run's requests) = delta of _sum / delta of _count; counters: their delta
HISTOGRAMS = ("time_to_first_token_seconds", "request_time_per_output_token_seconds", "inter_token_latency_seconds",
              "e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
              "request_decode_time_seconds")
COUNTERS = ("request_success_total", "prefix_cache_hits_total", "prompt_tokens_total", "generation_tokens_total")

def read(name):
    totals = {}
    for line in open(f"{work}/metrics-{name}.txt"):
        m = re.match(r"vllm:([a-z_]+?)(\{[^}]*\})? ([-0-9.e+]+)$", line.strip())
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals

phases = [("perfkit, 1 user (and its batch point)", "before-perfkit-1", "after-perfkit-1"),
          ("perfkit, 4 users", "after-perfkit-1", "after-perfkit-4"),
          ("AIPerf, 1 user", "after-perfkit-4", "after-aiperf-1"), ("AIPerf, 4 users", "after-aiperf-1", "after-aiperf-4"),
          ("perfkit again, 1 user (and its batch point)", "after-aiperf-4", "after-again-1"),
          ("perfkit again, 4 users", "after-again-1", "after-again-4")]
result = {}
for label, a, b in phases:
    x, y = read(a), read(b)
    row = {}
    for h in HISTOGRAMS:
        n = y.get(h + "_count", 0) - x.get(h + "_count", 0)
        if n > 0:
            row[h.replace("_seconds", "_mean_ms")] = 1e3 * (y.get(h + "_sum", 0) - x.get(h + "_sum", 0)) / n
            row[h.replace("_seconds", "_count")] = n
    for c in COUNTERS:
        row[c] = y.get(c, 0) - x.get(c, 0)
    result[label] = row
with open(out, "w") as f:
    json.dump(result, f, indent=1)
for label, row in result.items():
    print(f"{label:40s} requests {row['request_success_total']:.0f}: TTFT {row.get('time_to_first_token_mean_ms', float('nan')):.2f} ms, "
          f"TPOT {row.get('request_time_per_output_token_mean_ms', float('nan')):.3f} ms, "
          f"e2e {row.get('e2e_request_latency_mean_ms', float('nan')):.2f} ms, queue "
          f"{row.get('request_queue_time_mean_ms', float('nan')):.2f} ms, prefix-cache hits {row['prefix_cache_hits_total']:.0f}")
PYEOF

echo "== import and compare"
$PY -m perfkit import aiperf "$OUT"/aiperf-raw/c*/profile_export.jsonl --system aiperf --out "$OUT"
$PY -m perfkit compare "$OUT:aiperf" "$OUT:perfkit-endpoint" | tee "$WORK/compare.txt"
$PY - "$WORK/perfkit-again" "$OUT/perfkit-again-levels.json" <<'PYEOF'
import json, sys
from perfkit.loads import read_loads
cols = ["load_label", "requests", "output_tok_s", "ttft_p50_ms", "tpot_p50_ms", "e2e_p50_ms", "client_lag_p99_ms"]
levels = read_loads(sys.argv[1])[cols].to_dict("records")
json.dump(levels, open(sys.argv[2], "w"), indent=1)
for row in levels:
    print("perfkit again:", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
PYEOF
