"""llama.cpp's `llama-bench -o json` (a JSON array of tests) and `-o jsonl` (one test a line) as batch points.

Each test times `samples_ns` (one wall-clock duration per repetition, ns) of one of three things, which
perfkit's definitions name as follows (batch 1: llama-bench decodes one sequence; its n_batch is how many
prompt tokens one llama_decode call takes, not a number of sequences):

- pp P (n_prompt P, n_gen 0): the prompt pass of P tokens alone. It yields the first token's logits, so
  under perfkit's definitions it is the ttft of a point (I = P, O = 1), whose e2e is that same time and which
  has no decode step: ttft = e2e = the sample.
- tg N (n_prompt 0, n_gen N): N single-token passes from an empty cache, the first fed a BOS token, timed as
  one: the e2e of generating O = N tokens from a 1-token prompt (I = 1). The first token is not timed apart.
- pg P,N (both): the prompt pass, then N single-token passes, timed together: the e2e of O = N + 1 tokens
  (the prompt pass yields the first) from I = P. The first token is not timed apart.

tg and pg rows are `untimed` "ttft": e2e, output and total throughput follow from the samples; ttft, TPOT,
prefill and decode figures are null, never estimated. A test at n_depth > 0 (tokens put in the cache untimed
before each repetition) is left out: perfkit has no workload whose prompt is partly cached. llama-bench's own
t/s (avg_ts: the mean of per-repetition rates over prompt and generated tokens together) is not used: every
rate is recomputed from the samples. See docs/import.md.
"""

from __future__ import annotations

from perfkit.imports.common import (
    NOT_RECORDED,
    Fields,
    PointRecord,
    Source,
    parse_json,
    parse_jsonl,
    read_text,
    refusal,
)

TOOL = "llama-bench"
WHAT = "llama-bench's -o json output (a JSON array of tests) or -o jsonl (one test object a line)"
# What a test record holds besides what defines the system: the test, its timings, the model, the build and
# the machine. Every other key (n_batch, n_threads, type_k, flash_attn, n_gpu_layers, ...: the set changes
# between llama.cpp versions) is a setting of the system.
_NOT_SETTINGS = {"n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
                 "samples_ns", "samples_ts", "model_filename", "model_type", "model_size", "model_n_params",
                 "build_commit", "build_number", "cpu_info", "gpu_info"}
_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def _records(path: str) -> list[tuple[str, object]]:
    text = read_text(path, WHAT)
    head = text.lstrip()[:1]
    if head == "[":
        data = parse_json(path, text, WHAT)
        return [(f"record {i}", r) for i, r in enumerate(data)]
    if head == "{":
        lines = parse_jsonl(path, text, WHAT)
        return [(f"line {n}", r) for n, r in lines]
    if head == "|":
        raise refusal(path, "", "holds a markdown table (llama-bench's default output)", "-o json or -o jsonl")
    raise refusal(path, "", f"starts with {text.lstrip()[:20]!r}", WHAT)


def _test_name(n_prompt: int, n_gen: int, n_depth: int) -> str:
    name = "+".join(p for p in (f"pp{n_prompt}" if n_prompt else "", f"tg{n_gen}" if n_gen else "") if p)
    return name + (f" @ d{n_depth}" if n_depth else "")


def _dtype(model_type: str) -> str:
    # llama_model_desc: "<arch> <size> <file type>", e.g. "llama 8B Q4_K - Medium", "llama ?B F16"
    parts = model_type.split(" ", 2)
    ftype = parts[2] if len(parts) == 3 else NOT_RECORDED
    return _DTYPES.get(ftype, ftype)


def _utc(test_time: str | None) -> str | None:
    import datetime as dt

    if not test_time:
        return None
    try:
        t = dt.datetime.fromisoformat(test_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(path: str) -> tuple[list[PointRecord], list[str]]:
    """(the points, the tests left out with why) of one llama-bench file; ImportRefused where it is not one."""
    records = _records(path)
    if not records:
        raise refusal(path, "", "holds no test", WHAT)
    points, left_out = [], []
    for where, data in records:
        r = Fields(path, data, where, "a llama-bench test object")
        samples = r.numbers("samples_ns", "ns")
        n_prompt, n_gen = r.integer("n_prompt"), r.integer("n_gen")
        n_depth = r.integer("n_depth") if "n_depth" in r.data else 0  # builds before -d had none
        build, number = r.string("build_commit"), r.integer("build_number")
        model_file, model_type = r.string("model_filename"), r.string("model_type")
        test = _test_name(n_prompt, n_gen, n_depth)
        if not samples or any(s <= 0 for s in samples):
            raise r.fail("samples_ns", f"is {samples[:4]!r}", "one positive duration (ns) per repetition")
        if n_prompt + n_gen == 0:
            raise r.fail("n_prompt", "and n_gen are both 0", "a test of prompt or generated tokens")
        # the file's own summary must describe its samples: a mean of other samples is another test's file
        avg = r.integer("avg_ns") if "avg_ns" in r.data else None
        if avg is not None and abs(avg - sum(samples) / len(samples)) > 1:
            raise r.fail("avg_ns", f"is {avg} but samples_ns average {sum(samples) / len(samples):.0f}",
                         "the mean of samples_ns")
        if "samples_ts" in r.data and len(r.array("samples_ts")) != len(samples):
            raise r.fail("samples_ts", f"holds {len(r.array('samples_ts'))} values for {len(samples)} samples_ns",
                         "one rate per repetition")
        if n_depth:
            left_out.append(f"{path}: {where} ({test}) left out: {n_depth} tokens were put in the KV cache, untimed, "
                            "before each repetition, and perfkit has no workload whose prompt is partly cached")
            continue
        backends = r.string("backends") if "backends" in r.data else NOT_RECORDED
        cpu_info = r.string("cpu_info") if "cpu_info" in r.data else NOT_RECORDED
        gpu_info = r.string("gpu_info") if "gpu_info" in r.data else ""
        on_cpu = backends == "CPU" or not gpu_info
        ms = [s / 1e6 for s in samples]
        if n_gen == 0:
            i_len, o_len, ttft = n_prompt, 1, ms
            note = (f"llama-bench {test}: the prompt pass of {n_prompt} tokens, timed alone (no sampling); under "
                    "perfkit's definitions the ttft of a point with O = 1 (the pass yields the first token), whose "
                    "e2e is the same time and which has no decode step.")
        elif n_prompt == 0:
            i_len, o_len, ttft = 1, n_gen, None
            note = (f"llama-bench {test}: {n_gen} single-token passes from an empty cache (the first fed BOS or a "
                    f"random token), timed as one: the e2e of O = {n_gen} tokens from a 1-token prompt. The first "
                    "token was not timed "
                    "apart: ttft, TPOT, prefill and decode figures are left out (null); llama-bench's own t/s "
                    "(avg_ts) counts the first token and is not perfkit's decode rate.")
        else:
            i_len, o_len, ttft = n_prompt, n_gen + 1, None
            note = (f"llama-bench {test}: the prompt pass of {n_prompt} tokens then {n_gen} single-token passes, timed "
                    f"together: the e2e of O = {n_gen + 1} tokens (the prompt pass yields the first). The first token "
                    "was not timed apart: ttft, TPOT, prefill and decode figures are left out (null).")
        note += " Rates recomputed from samples_ns; llama-bench's avg_ts (a mean of per-repetition rates) not used."
        settings = {k: v for k, v in sorted(r.data.items()) if k not in _NOT_SETTINGS}
        source = Source(TOOL, f"{build} (build {number})", NOT_RECORDED, path, _utc(r.opt_string("test_time")))
        columns = {"dtype": _dtype(model_type), "backend": f"llama.cpp ({backends})", "attn_implementation": None,
                   "device": "cpu" if on_cpu else backends.lower(), "device_name": cpu_info if on_cpu else gpu_info,
                   "warmup": None, "seed": None, "peak_mem_bytes": None, "backend_mode": None}
        points.append(PointRecord(f"{where} ({test})", source, model_file, i_len, o_len, 1, ms, ttft, [], columns,
                                  settings, note))
    return points, left_out
