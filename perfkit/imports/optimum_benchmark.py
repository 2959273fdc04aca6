"""optimum-benchmark's inference scenario (benchmark.json, or benchmark_report.json with benchmark_config.json
beside it) as batch points.

With a per-token backend (pytorch) every tracked iteration is one `generate()` call of batch_size sequences of
sequence_length random prompt tokens, producing exactly max_new_tokens (= min_new_tokens) tokens, timed by a
logits processor that stamps each step: per iteration, `prefill` (call start to the first step's logits),
`decode` (first logits to the call's end) and `generate` (the whole call; prefill + decode). Under perfkit's
definitions that is a point (I = sequence_length, O = max_new_tokens, B = batch_size) whose repeat i has
ttft = prefill[i] and e2e = generate[i], so TPOT = decode[i] / (O - 1): every figure is recomputed from these
samples. The tool's own throughputs are not used (its prefill throughput counts sequences, not tokens; its
generate throughput in 0.6.0 counts decode tokens under a samples/s unit). Its per_token values are the
steps' gaps; in 0.6.0 they accumulate over the session (block k repeats every gap so far), and each
iteration's own O - 1 steps are read off the end of its block where the layout is recognised and agrees with
that iteration's decode time, else left out. A report without per-token tracking (another backend) times
prefill in separate calls, so its ttft and e2e are not of one generate call: refused. See docs/import.md.
"""

from __future__ import annotations

import json
import os

from perfkit.imports.common import (
    NOT_RECORDED,
    Fields,
    PointRecord,
    Source,
    parse_json,
    read_text,
    refusal,
)

TOOL = "optimum-benchmark"
WHAT = ("optimum-benchmark's benchmark.json ({config, report}) of the inference scenario, or its "
        "benchmark_report.json with benchmark_config.json beside it")
_TARGETS = ("prefill", "decode", "generate")
# a step's gaps end at the last step's logits, the decode time at the call's end: the gaps may fall short by
# generate's own work after the last step (~0.2 ms on a CPU), never exceed it
_STEP_SLACK_S = 1e-6


def _document(path: str) -> tuple[Fields, Fields]:
    data = parse_json(path, read_text(path, WHAT), WHAT)
    doc = Fields(path, data, "", WHAT)
    if "config" in data or "report" in data:
        return doc.obj("config"), doc.obj("report")
    if "prefill" in data or "generate" in data or "decode" in data:  # a benchmark_report.json
        beside = os.path.join(os.path.dirname(path), "benchmark_config.json")
        if not os.path.isfile(beside):
            raise refusal(path, "", "is a benchmark report without benchmark_config.json beside it",
                          "benchmark.json, or the report with its config in the same folder")
        config = parse_json(beside, read_text(beside, "optimum-benchmark's benchmark_config.json"),
                            "optimum-benchmark's benchmark_config.json")
        return Fields(beside, config, "", "optimum-benchmark's benchmark_config.json"), doc
    if "backend" in data and "scenario" in data:
        raise refusal(path, "", "is a benchmark config without its report", "benchmark.json or benchmark_report.json")
    raise refusal(path, "config", "is missing", WHAT)


def _latency(report: Fields, target: str) -> list[float]:
    t = report.obj(target, "a target of the report (memory, latency, throughput)")
    lat = t.obj("latency", "per-iteration latencies (latency: true in the scenario)")
    unit = lat.string("unit")
    if unit != "s":
        raise lat.fail("unit", f"is {unit!r}", "'s' (seconds), as optimum-benchmark writes latencies")
    values = lat.numbers("values", "s")
    if "count" in lat.data and lat.integer("count") != len(values):
        raise lat.fail("count", f"is {lat.data['count']} for {len(values)} values", "the number of values")
    return values


def _steps(report: Fields, decode: list[float], o: int) -> tuple[list[list[float]], str]:
    """Each iteration's O - 1 decode steps (s) off per_token, and a note; [] where they cannot be told."""
    if o < 2 or not report.has("per_token"):
        return [], ""
    lat = report.obj("per_token").opt_obj("latency")
    if lat is None:
        return [], ""
    values = lat.numbers("values", "s")
    n, k = len(decode), o - 1
    if len(values) == n * k:  # one block of O - 1 gaps per iteration
        blocks = [values[i * k:(i + 1) * k] for i in range(n)]
    elif len(values) == sum(o * (i + 1) - 1 for i in range(n)):  # 0.6.0: block i repeats every gap so far
        blocks, at = [], 0
        for i in range(n):
            size = o * (i + 1) - 1
            blocks.append(values[at + size - k:at + size])
            at += size
    else:
        return [], (f" Decode steps left out: per_token holds {len(values)} gaps for {n} iterations of {k} steps, "
                    "a layout not recognised.")
    if any(sum(b) > d + _STEP_SLACK_S for b, d in zip(blocks, decode)):
        return [], " Decode steps left out: per_token's gaps of an iteration exceed its decode time."
    return blocks, (" Decode steps: each iteration's last O - 1 per_token gaps (optimum-benchmark 0.6.0 accumulates "
                    "them over the session; its per_token mean and percentiles are therefore not used).")


def _device_name(env: Fields, device: str) -> str:
    if device == "cpu":
        return env.string("cpu").strip() if env.has("cpu") else NOT_RECORDED
    gpus = env.data.get("gpu")
    if isinstance(gpus, list) and gpus and isinstance(gpus[0], str):
        return gpus[0]
    return gpus if isinstance(gpus, str) else NOT_RECORDED


def _peak_mem_bytes(report: Fields, device: str) -> int | None:
    peaks = []
    for target in ("prefill", "decode"):
        mem = report.obj(target).opt_obj("memory")
        if mem is None:
            continue
        key = "max_ram" if device == "cpu" else "max_allocated"
        if mem.has(key):
            unit = mem.string("unit") if mem.has("unit") else "MB"
            if unit != "MB":
                raise mem.fail("unit", f"is {unit!r}", "'MB'")
            peaks.append(mem.number(key, "MB"))
    return int(max(peaks) * 1e6) if peaks else None  # optimum-benchmark's MB is 10^6 bytes


def parse(path: str) -> tuple[list[PointRecord], list[str]]:
    config, report = _document(path)
    scenario, backend = config.obj("scenario"), config.obj("backend")
    name = scenario.string("name")
    if name != "inference":
        raise scenario.fail("name", f"is {name!r}", "'inference' (the only scenario that times generation)")
    task = backend.string("task")
    if task != "text-generation":
        raise backend.fail("task", f"is {task!r}", "'text-generation' (a decoder generating tokens)")
    if not report.has("per_token"):
        raise refusal(report.file, "per_token", "is missing (a backend that times prefill in separate calls)",
                      "per-token tracking (the pytorch backend), so each iteration's ttft and e2e are of one call")
    shapes = scenario.obj("input_shapes")
    batch, seq = shapes.integer("batch_size", 1), shapes.integer("sequence_length", 1)
    kwargs = scenario.obj("generate_kwargs")
    o = kwargs.integer("max_new_tokens", 1)
    if kwargs.integer("min_new_tokens") != o:
        raise kwargs.fail("min_new_tokens", f"is {kwargs.data['min_new_tokens']} with max_new_tokens {o}",
                          "equal to max_new_tokens, so every generate made exactly O tokens")
    for key in ("num_beams", "num_return_sequences"):
        if key in kwargs.data and kwargs.integer(key) != 1:
            raise kwargs.fail(key, f"is {kwargs.data[key]}", "1 (perfkit's points generate one sequence per prompt)")
    prefill, decode, generate = (_latency(report, t) for t in _TARGETS)
    if not (len(prefill) == len(decode) == len(generate)) or not generate:
        raise refusal(report.file, "generate.latency.values",
                      f"holds {len(generate)} values, prefill {len(prefill)} and decode {len(decode)}",
                      "one of each per tracked iteration")
    for i, (p, d, g) in enumerate(zip(prefill, decode, generate)):
        # one generate call per iteration: its prefill and decode split its time
        if abs(p + d - g) > 1e-6 * max(g, 1e-3):
            raise refusal(report.file, f"generate.latency.values[{i}]", f"is {g:.6g} s but prefill + decode is "
                          f"{p + d:.6g} s", "their sum (one generate call per iteration)")
    steps, step_note = _steps(report, decode, o)
    env = config.obj("environment")
    device = backend.string("device")
    version = env.string("optimum_benchmark_version") if env.has("optimum_benchmark_version") else NOT_RECORDED
    if env.has("optimum_benchmark_commit"):
        version += f" (commit {env.string('optimum_benchmark_commit')})"
    backend_name = backend.string("name")
    launcher = config.opt_obj("launcher")
    settings = {
        "backend": {k: v for k, v in sorted(backend.data.items())
                    if k not in ("version", "model", "processor", "_target_", "seed")},
        "launcher": {k: v for k, v in sorted((launcher.data if launcher else {}).items()) if k != "_target_"},
        "generate_kwargs": {k: v for k, v in sorted(kwargs.data.items()) if k not in ("max_new_tokens",
                                                                                      "min_new_tokens")},
        "input_shapes": {k: v for k, v in sorted(shapes.data.items()) if k not in ("batch_size", "sequence_length")},
    }
    note = (f"optimum-benchmark {name}/{backend_name}: per iteration, ttft = its prefill latency (call start to the "
            "first step's logits), e2e = its generate latency (the whole call); TPOT = decode / (O - 1) and every "
            "rate recomputed from these. The tool's own throughputs are not used." + step_note)
    columns = {"dtype": backend.string("torch_dtype") if backend.has("torch_dtype") else "model default (not recorded)",
               "backend": f"optimum-benchmark {backend_name}",
               "attn_implementation": backend.opt_string("attn_implementation"),
               "device": device, "device_name": _device_name(env, device),
               "torch_version": backend.string("version") if backend_name == "pytorch" and backend.has("version")
               else None,
               "transformers_version": env.opt_string("transformers_version"),
               "warmup": scenario.opt_integer("warmup_runs"), "seed": backend.opt_integer("seed"),
               "peak_mem_bytes": _peak_mem_bytes(report, device), "peak_mem_scope": "process",
               "backend_mode": None}
    # a report's config is read from beside it: one more file the point comes from
    source = Source(TOOL, version, NOT_RECORDED, path, None,
                    also_read=tuple(sorted({config.file, report.file} - {path})))
    model = backend.string("model")
    record = PointRecord(f"{config.string('name') if config.has('name') else 'benchmark'}", source, model, seq, o,
                         batch, [g * 1e3 for g in generate], [p * 1e3 for p in prefill],
                         [[s * 1e3 for s in b] for b in steps], columns, settings, note)
    _check_json(settings, path)
    return [record], []


def _check_json(settings: dict, path: str) -> None:
    """The settings travel as JSON: a value that would not serialise is another kind of file."""
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise refusal(path, "config.backend", f"holds a value that is not plain JSON ({exc})",
                      "the config optimum-benchmark writes") from None

