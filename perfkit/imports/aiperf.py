"""AIPerf's `profile` artifacts (profile_export.jsonl, one record per request, with profile_export_aiperf.json
beside it for the version, the command line and the load) as a load level.

Each record of the profiling phase (warm-up records, also in the file, are left out and counted) gives its
send time (`request_start_ns`, epoch ns), AIPerf's `time_to_first_token` (first content response - send),
`request_latency` (last content response - send), the gaps between its content chunks (`inter_chunk_latency`,
per chunk) and its token counts (AIPerf's client tokenizer, and the server's usage). perfkit takes TTFT and e2e
per request from `time_to_first_token` and `request_latency` (there is no per-chunk timestamp in the file, so
they are AIPerf's own figures, under perfkit's definitions), and computes the rest: TPOT = (e2e - TTFT)/(O - 1)
(AIPerf's inter_token_latency divides by O minus the first chunk's tokens), ITL per token where every request's
O tokens came in O chunks, the window from the first send to the last token, throughput over it, percentiles.
`request_end_ns` is kept in the raw record, not used: in AIPerf's source (RecordProcessor.
_create_metric_record_metadata) it is the wall clock of the same last content response that `request_latency`
ends at, yet files of AIPerf 0.13.0 put it up to 1.4 ms later in some records, so what it marks depends on the
version. A `concurrency` phase is a closed loop of N users; a `poisson` phase without a cap below its request
count an open loop at its rate; other arrival types (gamma, constant, user-centric, schedules, ramps) are no
perfkit level and are refused. See docs/import.md.
"""

from __future__ import annotations

import os

from perfkit.imports.common import (
    NOT_RECORDED,
    Fields,
    LevelRecord,
    Request,
    Source,
    masked_command_text,
    parse_json,
    parse_jsonl,
    read_text,
    refusal,
    utc_of_epoch_s,
)

TOOL = "aiperf"
RECORDS = "profile_export.jsonl"
AGGREGATE = "profile_export_aiperf.json"
WHAT = "AIPerf's profile_export.jsonl (one per-request record a line: metadata, metrics, error)"
AGG_WHAT = "AIPerf's profile_export_aiperf.json (schema 1.x: aiperf_version, input_config, run_info)"


def _paths(path: str) -> tuple[str, str]:
    """(the per-request records, the aggregate) of an artifact directory, or of either file in it."""
    if os.path.isdir(path):
        folder = path
    elif os.path.basename(path) == AGGREGATE:
        folder = os.path.dirname(path)
        records = os.path.join(folder, RECORDS)
        if not os.path.isfile(records):
            raise refusal(path, "", f"is AIPerf's aggregate without {RECORDS} beside it",
                          "the per-request records (--export-level records, the default)")
        return records, path
    else:
        return path, os.path.join(os.path.dirname(path), AGGREGATE)
    return os.path.join(folder, RECORDS), os.path.join(folder, AGGREGATE)


def _metric(m: Fields, key: str, unit: str):
    metric = m.obj(key, f"a metric {{value, unit}} in {unit}")
    got = metric.string("unit")
    if got != unit:
        raise metric.fail("unit", f"is {got!r}", f"{unit!r}")
    return metric


def _time_ms(m: Fields, key: str) -> float:
    return _metric(m, key, "ms").number("value", "ms")


def _tokens(m: Fields, key: str) -> int | None:
    return _metric(m, key, "tokens").integer("value") if m.has(key) else None


def _level(agg: Fields, n: int) -> tuple[str, float, str]:
    phases = agg.obj("input_config").array("phases", "the run's phases (warmup, profiling)")
    profiling = [i for i, p in enumerate(phases) if isinstance(p, dict) and p.get("kind") == "profiling"]
    if len(profiling) != 1:
        raise agg.fail("input_config.phases", f"holds {len(profiling)} profiling phases", "exactly one")
    p = Fields(agg.file, phases[profiling[0]], f"input_config.phases[{profiling[0]}]")
    kind = p.string("type")
    for ramp in ("concurrency_ramp", "rate_ramp", "rate_series", "prefill_concurrency"):
        if p.has(ramp):
            raise p.fail(ramp, f"is {p.data[ramp]!r}", "none (a load that changes during the run is no one level)")
    if kind == "concurrency":
        users = p.integer("concurrency", 1)
        return "users", float(users), f"a concurrency phase: a closed loop of {users} users"
    if kind == "poisson":
        rate = p.number("rate", "requests/s", minimum=1e-12)
        cap = p.opt_integer("concurrency", 1)
        if cap is not None and cap < n:
            raise p.fail("concurrency", f"is {cap} with a Poisson rate", "no cap (a capped rate is neither perfkit's "
                         "open loop nor its closed loop)")
        return "rate", rate, f"a poisson phase: Poisson arrivals at {rate:g} req/s"
    raise p.fail("type", f"is {kind!r}", "'concurrency' (perfkit's closed loop) or 'poisson' (its open loop)")


def parse(path: str) -> tuple[list[LevelRecord], list[str]]:
    records_path, agg_path = _paths(path)
    if not os.path.exists(records_path):
        read_text(records_path, WHAT)  # refused as no such file
    if not os.path.isfile(agg_path):
        raise refusal(records_path, "", f"has no {AGGREGATE} beside it",
                      "AIPerf's artifact directory as written (the aggregate records the version, command and load)")
    agg = Fields(agg_path, parse_json(agg_path, read_text(agg_path, AGG_WHAT), AGG_WHAT), "", AGG_WHAT)
    schema = agg.string("schema_version")
    if schema.split(".")[0] != "1":
        raise agg.fail("schema_version", f"is {schema!r}", "1.x (the layout this importer reads)")
    lines = parse_jsonl(records_path, read_text(records_path, WHAT), WHAT)
    measured, warmup, failed = [], 0, []
    for n, data in lines:
        r = Fields(records_path, data, f"line {n}", "an AIPerf per-request record")
        md = r.obj("metadata")
        phase = md.string("benchmark_phase")
        if phase == "warmup":
            warmup += 1
            continue
        if phase != "profiling":
            raise md.fail("benchmark_phase", f"is {phase!r}", "'warmup' or 'profiling'")
        if r.has("error") or (md.has("was_cancelled") and md.boolean("was_cancelled")):
            err = r.data.get("error") or {}
            failed.append(f"line {n}: {err.get('type', 'cancelled') if isinstance(err, dict) else err}: "
                          f"{' '.join(str(err.get('message', '')).split())[:200] if isinstance(err, dict) else ''}")
            continue
        measured.append((n, r, md))
    if not measured:
        raise refusal(records_path, "", "holds no successful profiling record", "at least one measured request")
    total = len(measured) + len(failed)
    for key in ("request_count", "completed_request_count"):
        if agg.has(key):
            counted = agg.obj(key).number("avg", "requests")
            expected = len(measured) if key == "completed_request_count" else total
            if key == "request_count" and counted not in (float(len(measured)), float(total)):
                raise agg.fail(key + ".avg", f"is {counted:g} for {total} profiling records in {RECORDS}",
                               "the number of profiling records")
            if key == "completed_request_count" and counted != expected:
                raise agg.fail(key + ".avg", f"is {counted:g} for {len(measured)} successful records",
                               "the number of successful profiling records")
    kind, value, level_note = _level(agg, total)
    requests, lengths, client_counts, server_counts = [], set(), True, True
    for n, r, md in measured:
        m = r.obj("metrics")
        start_ns = md.integer("request_start_ns")
        ttft, e2e = _time_ms(m, "time_to_first_token"), _time_ms(m, "request_latency")
        if ttft > e2e:
            raise m.fail("time_to_first_token", f"is {ttft:g} ms, after the request's latency {e2e:g} ms",
                         "a first token no later than the last")
        osl, isl = _tokens(m, "output_sequence_length"), _tokens(m, "input_sequence_length")
        usage_o, usage_i = _tokens(m, "usage_completion_tokens"), _tokens(m, "usage_prompt_tokens")
        client_counts &= osl is not None and isl is not None
        server_counts &= usage_o is not None and usage_i is not None
        gaps = None
        if m.has("inter_chunk_latency"):
            gaps = _metric(m, "inter_chunk_latency", "ms").numbers("value", "ms")
            if abs(sum(gaps) - (e2e - ttft)) > 1e-3 * max(1.0, e2e):
                raise m.fail("inter_chunk_latency", f"adds up to {sum(gaps):.4g} ms, but request_latency - "
                             f"time_to_first_token is {e2e - ttft:.4g} ms", "the gaps from the first to the last chunk")
        raw = {"line": n, "request_start_ns": start_ns, "request_end_ns": md.data.get("request_end_ns"),
               "time_to_first_token_ms": ttft, "request_latency_ms": e2e, "inter_chunk_latency_ms": gaps,
               "input_sequence_length": isl, "output_sequence_length": osl, "usage_prompt_tokens": usage_i,
               "usage_completion_tokens": usage_o, "x_request_id": md.data.get("x_request_id")}
        requests.append((start_ns, ttft, e2e, (isl, osl), (usage_i, usage_o), gaps, raw))
    # the server's count where every request has one (perfkit's own rows are checked against it), else AIPerf's
    # client tokenizer's
    which = 4 if server_counts else 3
    if not server_counts and not client_counts:
        raise refusal(records_path, f"line {measured[0][0]}.metrics.output_sequence_length", "is missing",
                      "token counts for every request")
    lengths = {req[which] for req in requests}
    if len(lengths) > 1:
        raise refusal(records_path, "metrics", f"hold {len(lengths)} (input, output) lengths, "
                      f"{sorted(lengths)[:3]}", "one input and one output length for every request (stddev 0 and "
                      "ignore_eos), as a perfkit load level has")
    i_len, o_len = next(iter(lengths))
    if not i_len or not o_len:
        raise refusal(records_path, "metrics", f"give lengths {i_len} and {o_len}", "at least one token each")
    origin = min(req[0] for req in requests)
    out = [Request((s - origin) / 1e6, ttft, e2e, i_len, o_len, gaps, raw)
           for s, ttft, e2e, _, _, gaps, raw in sorted(requests, key=lambda q: q[0])]
    all_zero = sum(1 for q in requests if q[5] and not any(q[5]))
    notes = [level_note]
    if all_zero:
        notes.append(f"{all_zero} of {len(requests)} requests had every chunk gap 0 ms (the whole stream in one "
                     "read of AIPerf's client): their TTFT equals their e2e, a client-side artefact")
    if failed:
        notes.append(f"{len(failed)} profiling requests failed")
    run = agg.opt_obj("run_info")
    command = masked_command_text(run.string("cli_command")) if run and run.has("cli_command") else NOT_RECORDED
    config = agg.obj("input_config")
    endpoint = config.opt_obj("endpoint")
    models = config.opt_obj("models")
    model_name = None
    if models and isinstance(models.data.get("items"), list) and models.data["items"]:
        first = models.data["items"][0]
        model_name = first.get("name") if isinstance(first, dict) else None
    if not isinstance(model_name, str):
        raise refusal(agg_path, "input_config.models.items[0].name", "is missing", "the model AIPerf asked for")
    urls = endpoint.data.get("urls") if endpoint else None
    url = urls[0] if isinstance(urls, list) and urls and isinstance(urls[0], str) else None
    settings = {"endpoint": {k: v for k, v in sorted((endpoint.data if endpoint else {}).items()) if k != "urls"},
                "tokenizer": (config.data.get("tokenizer") or {}).get("name")
                if isinstance(config.data.get("tokenizer"), dict) else None}
    from perfkit.serving.endpoint import shown_url

    note = ("AIPerf profile: " + "; ".join(notes) + ". Per request: TTFT = AIPerf's time_to_first_token (first "
            "content response - send) and e2e = its request_latency (last content response - send), taken as "
            "recorded (the file has no per-chunk timestamps); TPOT = (e2e - TTFT)/(O - 1), ITL per token (from "
            "inter_chunk_latency where every chunk carried one token), the window (first send to last token), "
            "throughputs and percentiles recomputed. AIPerf's inter_token_latency, throughputs and aggregates not "
            "used. Token counts: " + ("the server's usage" if server_counts else "AIPerf's client tokenizer (the "
                                      "records carry no server usage)") + ".")
    source = Source(TOOL, agg.string("aiperf_version") if agg.has("aiperf_version") else NOT_RECORDED, command,
                    records_path, utc_of_epoch_s(origin / 1e9), also_read=(agg_path,))
    columns = {"dtype": NOT_RECORDED, "device_name": "unknown (served)",
               "endpoint_api": endpoint.data.get("type") if endpoint else None, "served_model": model_name,
               "server_url": shown_url(url) if url else None, "server_version": None, "duration_s": None,
               "stopped_by_duration": None, "client_bound": None,
               "seed": (run.data.get("random_seed") if run and isinstance(run.data.get("random_seed"), int) else None)}
    error = f"a profiling request failed in AIPerf ({failed[0]})" if failed else None
    return [LevelRecord(f"the profiling phase ({kind} {value:g})", source, model_name, i_len, o_len, kind, value, out,
                        warmup, None, columns, settings, note, error)], []
