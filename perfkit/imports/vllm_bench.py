"""`vllm bench serve --save-result --save-detailed` JSON (one run: one file) as a load level.

The detailed file keeps, per request in dispatch order, its send time (`start_times`, perf_counter seconds), its
TTFT (`ttfts`: first non-empty text - send), its latency (`latencies`: last chunk - send), the gaps between its
chunks (`itls`, one per chunk after the first: per chunk, not per token), its token counts and its error. The
level is read off the file's arguments: `--request-rate inf` with `--max-concurrency N` is a closed loop of N
users (a semaphore of N: each finished request lets the next one go), without a cap it is every request at once
(a closed loop of num_prompts users, each sending one); a finite rate with burstiness 1 is perfkit's open loop
at that Poisson rate, where the cap, if any, never held a request back (no request arrived while max_concurrency
were in flight: else the level is neither loop, and is refused). Every figure is recomputed from the per-request
arrays: the window from the first send to the last token, TPOT = (latency - TTFT)/(O - 1), ITL per token where
each request's O tokens came in O chunks. vLLM's own aggregates (duration, throughputs, its per-chunk ITL
percentiles) are not used. See docs/import.md.
"""

from __future__ import annotations

import math

from perfkit.imports.common import (
    NOT_RECORDED,
    Fields,
    LevelRecord,
    Request,
    Source,
    as_int,
    as_number,
    parse_json,
    read_text,
    refusal,
)

TOOL = "vllm-bench"
WHAT = "the JSON of vllm bench serve --save-result --save-detailed (one object with per-request arrays)"
_PER_REQUEST = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "errors")
_APIS = {"vllm": "completions", "openai": "completions", "openai-chat": "chat", "sglang": "completions",
         "lmdeploy": "completions", "llama.cpp": "completions"}


def _rate(f: Fields) -> float:
    value = f.raw("request_rate", "a number of requests per second or 'inf'")
    if value in ("inf", "Infinity") or (isinstance(value, float) and math.isinf(value) and value > 0):
        return math.inf
    return as_number(value, f.file, f.path("request_rate"), "requests/s", minimum=1e-12)


def _in_flight_at_arrival(starts: list[float], ends: list[float], arrivals: list[float]) -> int:
    """The most requests in flight when a request arrived (before it waited on the client's cap): for each
    arrival t_i, the other requests j with starts[j] <= t_i < ends[j]. Every end is at or after its start, so
    that count is (starts <= t_i) - (ends <= t_i), two binary searches over the sorted times, less request i
    itself where its own interval holds t_i."""
    import numpy as np

    if not len(arrivals):
        return 0
    s, e, t = (np.asarray(x, dtype=float) for x in (starts, ends, arrivals))
    counts = np.searchsorted(np.sort(s), t, side="right") - np.searchsorted(np.sort(e), t, side="right")
    counts -= (s <= t) & (t < e)
    return int(counts.max())


def parse(path: str) -> tuple[list[LevelRecord], list[str]]:
    data = parse_json(path, read_text(path, WHAT), WHAT)
    f = Fields(path, data, "", WHAT)
    for key in _PER_REQUEST:
        if key not in data:
            raise f.fail(key, "is missing (a file saved without --save-detailed, or not vllm bench serve's)", WHAT)
    n = f.integer("num_prompts", 1)
    completed, failed = f.integer("completed"), f.integer("failed")
    arrays = {k: f.array(k) for k in _PER_REQUEST}
    has_starts = "start_times" in data
    if has_starts:
        arrays["start_times"] = f.array("start_times")
    for key, values in arrays.items():
        if len(values) != n:
            raise f.fail(key, f"holds {len(values)} entries for num_prompts {n}", "one per request")
    if completed + failed != n:
        raise f.fail("completed", f"is {completed} with failed {failed} of num_prompts {n}", "completed + failed = "
                     "num_prompts")
    errors = [e for e in arrays["errors"]]
    for i, e in enumerate(errors):
        if not isinstance(e, str):
            raise refusal(path, f"errors[{i}]", f"is {e!r}", "a string ('' for a request that succeeded)")
    ok = [i for i, e in enumerate(errors) if not e]
    if len(ok) != completed:
        raise f.fail("completed", f"is {completed} but {len(ok)} requests have no error", "the requests without one")
    in_lens = [as_int(v, path, f"input_lens[{i}]") for i, v in enumerate(arrays["input_lens"])]
    out_lens = [as_int(v, path, f"output_lens[{i}]") for i, v in enumerate(arrays["output_lens"])]
    for key, total in (("total_input_tokens", in_lens), ("total_output_tokens", out_lens)):
        if key in data and f.integer(key) != sum(total[i] for i in ok):
            raise f.fail(key, f"is {data[key]} but the requests' counts add up to {sum(total[i] for i in ok)}",
                         "their sum")
    if "ramp_up_strategy" in data and data["ramp_up_strategy"] is not None:
        raise f.fail("ramp_up_strategy", f"is {data['ramp_up_strategy']!r}", "none (a rate that changes during the "
                     "run is no one load level)")
    rate = _rate(f)
    cap = f.opt_integer("max_concurrency", 1)
    burstiness = f.number("burstiness", "") if "burstiness" in data else 1.0
    if not ok:
        raise refusal(path, "errors[0]", f"is {errors[0][:120]!r} and no request succeeded",
                      "at least one request measured")
    lengths = {(in_lens[i], out_lens[i]) for i in ok}
    if len(lengths) > 1:
        raise f.fail("output_lens", f"hold {len(lengths)} (input, output) lengths, {sorted(lengths)[:3]}",
                     "one input and one output length for every request (--random-range-ratio 0 and --ignore-eos), "
                     "as a perfkit load level has")
    i_len, o_len = next(iter(lengths))
    if o_len < 1 or i_len < 1:
        raise f.fail("output_lens", f"are {o_len} (input {i_len})", "at least one token each")
    ttfts = [as_number(v, path, f"ttfts[{i}]", "s") for i, v in enumerate(arrays["ttfts"])]
    lats = [as_number(v, path, f"latencies[{i}]", "s") for i, v in enumerate(arrays["latencies"])]
    starts = [as_number(v, path, f"start_times[{i}]", "s") for i, v in enumerate(arrays["start_times"])] \
        if has_starts else None
    queues = [as_number(v, path, f"queue_times[{i}]", "s") for i, v in enumerate(f.array("queue_times"))] \
        if "queue_times" in data else None
    requests = []
    for i in ok:
        gaps = arrays["itls"][i]
        if not isinstance(gaps, list):
            raise refusal(path, f"itls[{i}]", f"is a {type(gaps).__name__}", "a list of gaps (s)")
        gaps_ms = [as_number(g, path, f"itls[{i}][{k}]", "s") * 1e3 for k, g in enumerate(gaps)]
        if ttfts[i] > lats[i]:
            raise refusal(path, f"ttfts[{i}]", f"is {ttfts[i]:.6g} s, after the request's latency {lats[i]:.6g} s",
                          "a first token no later than the last")
        if abs(sum(gaps_ms) - (lats[i] - ttfts[i]) * 1e3) > 1.0:  # ms: the chunks' gaps span first to last
            raise refusal(path, f"itls[{i}]", f"add up to {sum(gaps_ms):.3f} ms, but latency - ttft is "
                          f"{(lats[i] - ttfts[i]) * 1e3:.3f} ms", "the gaps between its first and last chunk")
        raw = {"ttft_s": ttfts[i], "latency_s": lats[i], "itls_s": gaps, "input_len": in_lens[i],
               "output_len": out_lens[i], "start_time_s": starts[i] if starts else None,
               "queue_time_s": queues[i] if queues else None}
        requests.append(Request(starts[i] * 1e3 if starts else None, ttfts[i] * 1e3, lats[i] * 1e3, in_lens[i],
                                out_lens[i], gaps_ms, raw))
    notes = []
    if math.isinf(rate):
        kind, value = "users", float(cap if cap is not None and cap < n else n)
        notes.append(f"--request-rate inf with --max-concurrency {cap}: a closed loop of {int(value)} users" if cap
                     else f"--request-rate inf without a cap: all {n} requests at once, a closed loop of {n} users "
                          "sending one request each")
    else:
        if burstiness != 1.0:
            raise f.fail("burstiness", f"is {burstiness:g} (gamma-distributed gaps)", "1 (Poisson arrivals), as "
                         "perfkit's rate levels have")
        kind, value = "rate", rate
        if cap is not None and cap < n:
            if starts is None or queues is None:
                raise f.fail("start_times", "is missing with a --max-concurrency cap", "send and queue times, to tell "
                             "whether the cap held requests back")
            ends = [s + lat for s, lat in zip(starts, lats)]
            busiest = _in_flight_at_arrival(starts, ends, [s - q for s, q in zip(starts, queues)])
            if busiest >= cap:
                raise f.fail("max_concurrency", f"is {cap} and a request arrived while {busiest} were in flight",
                             "a cap that never held a request back (else the level is neither perfkit's open loop "
                             "nor its closed loop)")
            notes.append(f"Poisson arrivals at {rate:g} req/s; --max-concurrency {cap} never held a request back "
                         f"(at most {busiest} in flight when one arrived)")
        else:
            notes.append(f"Poisson arrivals at {rate:g} req/s")
    window_s = None
    if starts is None:
        window_s = f.number("duration", "s", minimum=1e-12)
        notes.append("the file has no start_times (an older vLLM): the window is vLLM's own duration (benchmark "
                     "start to the last answer), not the first send to the last token")
    error = None
    if failed:
        first = next(i for i, e in enumerate(errors) if e)
        error = f"request {first} failed in vllm bench serve: {' '.join(errors[first].split())[:300]}"
    backend = f.string("backend") if "backend" in data else NOT_RECORDED
    settings = {k: data.get(k) for k in ("backend", "endpoint_type", "tokenizer_id")}
    date = data.get("date")
    note = ("vllm bench serve: " + "; ".join(notes) + ". Per request: TTFT = ttfts (first non-empty text - send), "
            "e2e = latencies, TPOT = (e2e - TTFT)/(O - 1), ITL per token from itls where every chunk carried one "
            "token; the window, throughputs and percentiles recomputed from them (vLLM's duration, throughputs and "
            "per-chunk ITL not used). Token counts are vLLM's: the server's usage where it sent one, else its "
            f"client tokenizer's count of the text (the file does not say which). Run date {date!r} (local time).")
    source = Source(TOOL, NOT_RECORDED, NOT_RECORDED, path, None)
    columns = {"dtype": NOT_RECORDED, "device_name": "unknown (served)", "endpoint_api": _APIS.get(backend, backend),
               "served_model": f.opt_string("model_id"), "server_url": None, "server_version": None,
               "duration_s": None, "stopped_by_duration": None, "client_bound": None}
    model = f.string("model_id")
    return [LevelRecord(f"the run ({kind} {value:g})", source, model, i_len, o_len, kind, value, requests, None,
                        window_s, columns, settings, note, error)], []
