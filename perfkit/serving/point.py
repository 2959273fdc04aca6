"""One served point: B streaming requests of exactly I prompt tokens asking for exactly O, and what they
measure under the in-process definitions.

A repeat's `ttft` is the time from just before the first request is sent until every request has its
first token; its `e2e` until every request has its last; its decode steps are the gaps between "every
request has token k" and "... token k+1". So summary, compare, the batch search and the SLO views read a
served row exactly as an in-process one. Unlike an in-process ttft, a served one includes HTTP, the
server's tokenization and queueing. Per request, TTFT, TPOT = (e2e - TTFT)/(O - 1) and the per-token ITL
are kept as percentiles, and every request's raw record is kept in the row (`requests_json`).

A request that is not exact (another prompt length than I, fewer or more tokens than O, an error) makes
the point fail with the reason and what to set: a short answer is never counted.
"""

from __future__ import annotations

import dataclasses
import json
import math

from perfkit.serving.client import BatchResult, RequestRecord
from perfkit.serving.endpoint import Endpoint, shown_url
from perfkit.workload import Point, System

# The event loop's lateness (p99 over the timed batches) past which a row is flagged client-bound: the
# client, not the server, may have set its figures. Chunks of a fast server arrive every few ms per stream.
CLIENT_LAG_P99_MS = 5.0


class ServedPointError(RuntimeError):
    """A served point that cannot be counted: the first failing request, and what to set."""


def completion_body(endpoint: Endpoint, model: str, prompt, output_len: int, continuous_usage: bool) -> dict:
    """One request's JSON: greedy, streamed, exactly `output_len` tokens asked for, usage included.

    `max_tokens` (not `max_completion_tokens`, which `transformers serve` ignores); the engine's own
    exact-length fields (ignore_eos, min_tokens) come from the system's extra_body, which may also
    override any field set here."""
    options = {"include_usage": True}
    if continuous_usage:
        options["continuous_usage_stats"] = True
    body = {"model": endpoint.model_name(model), "max_tokens": output_len, "temperature": 0.0, "stream": True,
            "stream_options": options}
    if endpoint.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(endpoint.extra())
    return body


def _short_answer(i: int, r: RequestRecord, output_len: int, tokens: int) -> str:
    why = r.finish_reason or "no finish reason"
    if tokens < output_len:
        if r.finish_reason == "length":
            hint = ("a length cap below max_tokens: the server's context (max_model_len) or its own max_tokens "
                    "limit")
        else:
            hint = ("this server needs exact lengths forced: extra_body ignore_eos: true (vLLM, SGLang, llama.cpp) or "
                    "min_tokens (see docs/endpoints.md)")
        return f"request {i} stopped ({why}) after {tokens} of {output_len} tokens: {hint}"
    return f"request {i} returned {tokens} tokens, {output_len} asked for (max_tokens not honoured)"


def check_request(i: int, r: RequestRecord, input_len: int, output_len: int) -> None:
    """Raise ServedPointError unless request `i` got exactly `input_len` prompt and `output_len` output
    tokens, and every output token has an arrival time."""
    if r.error is not None:
        raise ServedPointError(f"request {i}: {r.error}")
    received = r.tokens_received()
    total = r.completion_tokens if r.completion_tokens is not None else received
    if total != output_len:
        raise ServedPointError(_short_answer(i, r, output_len, total))
    if received != total:
        raise ServedPointError(f"request {i}: its chunks carry {received} tokens by count ({r.counts}) but the "
                               f"server's usage says {total}: the arrival of each token is unknown, expected one "
                               "token per chunk or a running usage per chunk (vLLM: continuous_usage_stats)")
    if r.prompt_tokens is None:
        raise ServedPointError(f"request {i}: the server reported no prompt token count (usage.prompt_tokens), "
                               "expected stream_options.include_usage to be honoured, so the prompt length can be "
                               "checked")
    if r.prompt_tokens != input_len:
        raise ServedPointError(f"request {i}: the server counted {r.prompt_tokens} prompt tokens, {input_len} "
                               "sent: expected the same (a BOS token or chat template the server adds? see "
                               "docs/endpoints.md)")


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclasses.dataclass
class ServedMeasurement:
    point: Point
    system: System
    ttft_s: list[float]
    e2e_s: list[float]
    step_s: list[list[float]]
    warmup_s: float
    batches: list[BatchResult]
    lags_ms: list[float]
    prompt_mode: str
    server: dict  # {"url", "version", "models"}: what the server said of itself

    def row(self) -> dict:
        from perfkit.metrics import point_metrics
        from perfkit.rows import identity

        p = self.point
        row = identity(self.system, p, "ok", None)
        row.update(point_metrics(p.batch, p.input_len, p.output_len, self.ttft_s, self.e2e_s))
        ttft, tpot, itl = [], [], []
        for b in self.batches:
            for r in b.records:
                ttft.append((r.first_token_ns - r.send_ns) / 1e6)
                if p.output_len > 1:
                    tpot.append((r.last_token_ns - r.first_token_ns) / 1e6 / (p.output_len - 1))
                itl.extend(r.itl_ms())
        lag_p99 = percentile(self.lags_ms, 99)
        e = self.system.endpoint
        row.update({
            "peak_mem_bytes": None, "peak_mem_scope": "server (not seen by the client)",
            "warmup_ms": self.warmup_s * 1e3, "setup_ms": 0.0, "backend_mode": "served",
            "generated_tokens": p.batch * p.output_len,
            "ttft_ms_samples": [t * 1e3 for t in self.ttft_s], "e2e_ms_samples": [t * 1e3 for t in self.e2e_s],
            "decode_step_ms_samples": [[t * 1e3 for t in steps] for steps in self.step_s],
            "endpoint_api": e.api, "served_model": e.model_name(p.model), "prompt_mode": self.prompt_mode,
            "server_url": self.server.get("url"), "server_version": self.server.get("version"),
            "server_models": self.server.get("models"), "server_log": self.server.get("log"),
            "req_ttft_p50_ms": percentile(ttft, 50), "req_ttft_p90_ms": percentile(ttft, 90),
            "req_ttft_p99_ms": percentile(ttft, 99), "req_tpot_p50_ms": percentile(tpot, 50),
            "req_tpot_p90_ms": percentile(tpot, 90), "req_tpot_p99_ms": percentile(tpot, 99),
            "req_itl_p50_ms": percentile(itl, 50), "req_itl_p90_ms": percentile(itl, 90),
            "req_itl_p99_ms": percentile(itl, 99),
            "client_lag_p99_ms": lag_p99, "client_lag_max_ms": max(self.lags_ms) if self.lags_ms else None,
            "client_bound": bool(lag_p99 is not None and lag_p99 > CLIENT_LAG_P99_MS),
            "requests_json": json.dumps([[r.as_json(b.start_ns) for r in b.records] for b in self.batches],
                                        separators=(",", ":")),
        })
        return row


def measurement_of(system: System, point: Point, warmup_s: float, batches: list[BatchResult], lags_ms: list[float],
                   prompt_mode: str, server: dict) -> ServedMeasurement:
    """Check every request of every repeat (check_request) and read the point's figures off them."""
    ttft_s, e2e_s, step_s = [], [], []
    for b in batches:
        for i, r in enumerate(b.records):
            check_request(i, r, point.input_len, point.output_len)
        arrivals = [r.token_arrivals_ns() for r in b.records]
        # token k of every request: the batch's k-th mark, as an in-process decode step ends
        marks = [max(a[k] for a in arrivals) for k in range(point.output_len)]
        ttft_s.append((marks[0] - b.start_ns) / 1e9)
        e2e_s.append((marks[-1] - b.start_ns) / 1e9)
        step_s.append([(marks[k] - marks[k - 1]) / 1e9 for k in range(1, point.output_len)])
    return ServedMeasurement(point, system, ttft_s, e2e_s, step_s, warmup_s, batches, lags_ms, prompt_mode,
                             {**server, "url": shown_url(server["url"]) if server.get("url") else None})
