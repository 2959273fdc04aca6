"""GuideLLM's benchmarks.json (`guidellm benchmark ... --outputs json`) as load levels, one per benchmark.

Every successful request of a benchmark keeps its timings (epoch seconds): `request_start` (sent),
`first_token_iteration` (the first stream iteration carrying tokens), `last_token_iteration` (the last one) and
`request_end` (the stream closed, after the usage chunk), and its token counts. perfkit computes from these:
TTFT = first token - send, e2e = last token - send (not request_end), TPOT = (e2e - TTFT)/(O - 1), the window
from the first send to the last token, throughput over it, p50/p90/p99. GuideLLM's own names differ: its
`inter_token_latency_ms` is that TPOT, its `time_per_output_token_ms` is e2e / O (the first token included); neither
is used. The file has no per-chunk times, so perfkit's per-token ITL (a distribution over gaps) is left out
(null). A `synchronous` benchmark is a closed loop of 1 user, `concurrent` one of `streams` users, `poisson` an
open loop at its rate; `throughput` and `constant` (evenly spaced arrivals) are no perfkit level and are left out
with a note, as are a sweep's benchmarks of those kinds, and a `poisson` benchmark whose `max_concurrency` is
below its number of requests (a cap that may have held arrivals back). See docs/import.md.
"""

from __future__ import annotations

from perfkit.imports.common import (
    NOT_RECORDED,
    Fields,
    LevelRecord,
    Request,
    Source,
    parse_json,
    read_text,
    utc_of_epoch_s,
)

TOOL = "guidellm"
WHAT = "GuideLLM's benchmarks.json (metadata, config, benchmarks with their requests)"
_APIS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


def _level(where: str, strategy: Fields) -> tuple[str, float, str] | str:
    """(kind, value, note) of a benchmark's strategy, or why it is no perfkit level."""
    kind = strategy.string("type_")
    if kind == "synchronous":
        return "users", 1.0, "synchronous: a closed loop of 1 user"
    if kind == "concurrent":
        streams = strategy.integer("streams", 1)
        return "users", float(streams), f"concurrent: a closed loop of {streams} users"
    if kind == "poisson":
        rate = strategy.number("rate", "requests/s", minimum=1e-12)
        return "rate", rate, f"poisson: Poisson arrivals at {rate:g} req/s"
    if kind == "throughput":
        return (f"{where} (throughput) left out: every request issued at once up to max_concurrency, workers taking "
                "them as they free up, is neither perfkit's closed loop of N users nor its open loop")
    if kind == "constant":
        return (f"{where} (constant) left out: evenly spaced arrivals are not perfkit's Poisson open loop")
    return f"{where} ({kind}) left out: a strategy with no perfkit load level"


def _request(path: str, where: str, data) -> Request:
    r = Fields(path, data, where, "a GuideLLM request record")
    t = r.obj("info").obj("timings")
    send, first, last = (t.number(k, "s (epoch)") for k in ("request_start", "first_token_iteration",
                                                              "last_token_iteration"))
    if not send <= first <= last:
        raise t.fail("first_token_iteration", f"is {first - send:+.6f} s from the send and the last token "
                     f"{last - send:+.6f} s", "send <= first token <= last token")
    i_len, o_len = r.integer("prompt_tokens"), r.integer("output_tokens")
    iterations = t.opt_integer("token_iterations")
    raw = {k: t.data.get(k) for k in ("request_start", "first_token_iteration", "last_token_iteration",
                                      "request_end", "token_iterations", "request_iterations")}
    raw.update({"request_id": r.data.get("request_id"), "prompt_tokens": i_len, "output_tokens": o_len,
                "time_to_first_token_ms": r.data.get("time_to_first_token_ms"),
                "inter_token_latency_ms": r.data.get("inter_token_latency_ms"),
                "time_per_output_token_ms": r.data.get("time_per_output_token_ms"), "token_iterations": iterations})
    return Request(send * 1e3, (first - send) * 1e3, (last - send) * 1e3, i_len, o_len, None, raw)


def parse(path: str) -> tuple[list[LevelRecord], list[str]]:
    data = parse_json(path, read_text(path, WHAT), WHAT)
    doc = Fields(path, data, "", WHAT)
    meta = doc.obj("metadata")
    version = meta.string("guidellm_version") if meta.has("guidellm_version") else NOT_RECORDED
    spec = doc.obj("config").obj("spec")
    backend = spec.obj("backend")
    model = backend.string("model")
    api = backend.opt_string("request_format")
    tokenizer = spec.data.get("tokenizer")
    settings = {"backend": {k: backend.data.get(k) for k in ("kind", "request_format", "stream", "extras",
                                                             "max_tokens", "http2")},
                "tokenizer": tokenizer.get("model") if isinstance(tokenizer, dict) else tokenizer}
    from perfkit.serving.endpoint import shown_url

    target = backend.opt_string("target")
    benches = doc.array("benchmarks", "a list of benchmarks")
    if not benches:
        raise doc.fail("benchmarks", "is empty", "at least one benchmark")
    levels, left_out = [], []
    for b_index, bench in enumerate(benches):
        where = f"benchmarks[{b_index}]"
        b = Fields(path, bench, where, "a GuideLLM benchmark")
        level = _level(where, b.obj("config").obj("strategy"))
        if isinstance(level, str):
            left_out.append(f"{path}: {level}")
            continue
        kind, value, level_note = level
        reqs = b.obj("requests")
        lists = {k: reqs.array(k) for k in ("successful", "errored", "incomplete")}
        totals = b.obj("metrics").obj("request_totals")
        for k, values in lists.items():
            # a file written with --output-sampling keeps a sample of the requests: a window over a sample is no
            # window, and percentiles over it are another distribution
            if totals.integer(k) != len(values):
                raise totals.fail(k, f"is {totals.data[k]} but requests.{k} holds {len(values)}",
                                  "every request in the file (no --output-sampling)")
        if kind == "rate":
            # a cap below the requests' number can hold arrivals back, and the file cannot tell whether it did:
            # GuideLLM splits the cap into per-worker semaphores, each request holding its slot from before its
            # arrival time is drawn until it resolves, and records no semaphore state (AIPerf's importer's rule)
            cap = b.obj("config").obj("strategy").opt_integer("max_concurrency", 1)
            n = sum(len(v) for v in lists.values())
            if cap is not None and cap < n:
                left_out.append(f"{path}: {where} (poisson {value:g}) left out: max_concurrency {cap} below its {n} "
                                "requests may have held arrivals back, and the file cannot show it did not; a capped "
                                "rate is neither perfkit's open loop nor its closed loop")
                continue
            if cap is not None:
                level_note += f" (max_concurrency {cap}, no fewer than its {n} requests: it held none back)"
        measured = [_request(path, f"{where}.requests.successful[{i}]", r) for i, r in enumerate(lists["successful"])]
        if not measured:
            raise reqs.fail("successful", "is empty", "at least one measured request")
        lengths = {(r.input_tokens, r.output_tokens) for r in measured}
        if len(lengths) > 1:
            raise reqs.fail("successful", f"hold {len(lengths)} (input, output) lengths, {sorted(lengths)[:3]}",
                            "one input and one output length for every request (fixed prompt and output token "
                            "counts, ignore_eos), as a perfkit load level has")
        i_len, o_len = next(iter(lengths))
        if not i_len or not o_len:
            raise reqs.fail("successful", f"give lengths {i_len} and {o_len}", "at least one token each")
        notes = [level_note]
        if lists["incomplete"]:
            notes.append(f"{len(lists['incomplete'])} requests cancelled unfinished at the benchmark's end (left out, "
                         "as GuideLLM leaves them out)")
        # GuideLLM's own doubts about its run travel with the level
        for w in (b.array("warnings", "a list of GuideLLM's warnings") if b.has("warnings") else []):
            if isinstance(w, dict) and isinstance(w.get("message"), str):
                notes.append(f"GuideLLM warned: {' '.join(w['message'].split())[:200]}")
        error = None
        if lists["errored"]:
            first = Fields(path, lists["errored"][0], f"{where}.requests.errored[0]", "a GuideLLM request record")
            info = first.opt_obj("info")
            msg = info.data.get("error") if info else None
            error = f"{len(lists['errored'])} requests failed in GuideLLM (first: {' '.join(str(msg).split())[:200]})"
        measured.sort(key=lambda r: r.send_ms)
        origin = measured[0].send_ms
        for r in measured:
            r.send_ms -= origin
        note = ("GuideLLM: " + "; ".join(notes) + ". Per request from its timings: TTFT = first_token_iteration - "
                "request_start, e2e = last_token_iteration - request_start, TPOT = (e2e - TTFT)/(O - 1) (GuideLLM's "
                "inter_token_latency_ms; its time_per_output_token_ms, e2e / O, not used); the window (first send to "
                "last token), throughputs and percentiles recomputed. ITL per token left out (null): the file has no "
                "per-chunk times. Token counts are GuideLLM's (the server's usage where it prefers and got it, else "
                "its tokenizer's).")
        source = Source(TOOL, version, NOT_RECORDED, path, utc_of_epoch_s(origin / 1e3))
        columns = {"dtype": NOT_RECORDED, "device_name": "unknown (served)", "endpoint_api": _APIS.get(api, api),
                   "served_model": model, "server_url": shown_url(target) if target else None,
                   "server_version": None, "duration_s": None, "stopped_by_duration": None, "client_bound": None}
        levels.append(LevelRecord(f"{where} ({kind} {value:g})", source, model, i_len, o_len, kind, value, measured,
                                  None, None, columns, settings, note, error))
    return levels, left_out
