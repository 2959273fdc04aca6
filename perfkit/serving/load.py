"""Steady load on a served system: N users in a closed loop, or requests arriving at a Poisson rate.

A batch-at-once point asks what B requests sent together cost. A load level asks what a server sustains:
- `users` N: N users, each sending its next request the moment its last one ends (a closed loop);
- `rate` R: requests arriving at R per second on average, with exponential gaps drawn from the sweep's
  seed (an open loop: arrivals do not wait for answers, up to MAX_IN_FLIGHT at once).
A level sends `warmup_requests` + `requests` requests (or stops issuing at `duration_s`); the first
`warmup_requests` by send time are left out. The measured window runs from the first measured request's
send to the last measured request's last token; throughput is the measured requests' output tokens over
that window. Every measured request must be exact (I prompt and O output tokens), as in a point.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

from perfkit.serving.client import LagMonitor, RequestRecord, new_client, stream_one

MAX_IN_FLIGHT = 4096  # an open loop's bound on requests outstanding at once (as batch sizes are bounded)


@dataclasses.dataclass(frozen=True)
class LoadLevel:
    kind: str  # "users" or "rate"
    value: float  # users (an integer) or requests per second
    requests: int  # measured requests
    warmup_requests: int = 0
    duration_s: float | None = None  # stop issuing new requests after this long (None: after the count)

    def label(self) -> str:
        if self.kind == "users":
            return f"{int(self.value)} user{'' if int(self.value) == 1 else 's'}"
        return f"{self.value:g} req/s"


@dataclasses.dataclass
class LoadRun:
    level: LoadLevel
    records: list[RequestRecord]  # every request sent, in send order; the first warmup_requests left out
    lags_ms: list[float]
    stopped_by_duration: bool

    def measured(self) -> list[RequestRecord]:
        return self.records[self.level.warmup_requests:]


def run_load(url: str, headers: dict, body_for, api: str, level: LoadLevel, request_timeout_s: float, seed: int,
             secret: str | None = None) -> LoadRun:
    """Send the level's requests (body_for(i) is request i's JSON) and return their records."""
    total = level.warmup_requests + level.requests

    async def main():
        monitor = LagMonitor()
        ticker = asyncio.ensure_future(monitor.run())
        records: list[RequestRecord] = []
        start = time.monotonic()
        stopped = False

        def past_duration() -> bool:
            return level.duration_s is not None and time.monotonic() - start >= level.duration_s

        async def send(client, i):
            r = RequestRecord(i)
            records.append(r)
            if i == level.warmup_requests:
                monitor.active = True  # the lag that matters is the measured window's
            await stream_one(client, url, headers, body_for(i), r, api, secret)

        concurrency = int(level.value) if level.kind == "users" else MAX_IN_FLIGHT
        try:
            async with new_client(min(concurrency, MAX_IN_FLIGHT), request_timeout_s) as client:
                if level.kind == "users":
                    counter = iter(range(total))

                    async def user():
                        nonlocal stopped
                        for i in counter:  # one shared counter: each request index is sent once
                            if past_duration():
                                stopped = True
                                return
                            await send(client, i)

                    await asyncio.gather(*(user() for _ in range(int(level.value))))
                else:
                    rng = random.Random(seed)
                    tasks, due = [], time.monotonic()
                    for i in range(total):
                        due += rng.expovariate(level.value)
                        delay = due - time.monotonic()
                        if level.duration_s is not None:  # never sleep past the level's end
                            delay = min(delay, start + level.duration_s - time.monotonic())
                        if delay > 0:
                            await asyncio.sleep(delay)
                        if past_duration():
                            stopped = True
                            break
                        tasks.append(asyncio.ensure_future(send(client, i)))
                        if len(tasks) - sum(t.done() for t in tasks) >= MAX_IN_FLIGHT:
                            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    await asyncio.gather(*tasks)
        finally:
            ticker.cancel()
        records.sort(key=lambda r: r.send_ns)
        return LoadRun(level, records, monitor.lags_ms, stopped)

    return asyncio.run(main())


def load_row(system, model: str, input_len: int, output_len: int, run: LoadRun, server: dict) -> dict:
    """A load level's row (perfkit.rows.LOAD_SCHEMA) from its run; ServedPointError where a measured
    request is not exact (perfkit.serving.point.check_request) or none was measured."""
    import json

    from perfkit.serving.endpoint import shown_url
    from perfkit.serving.point import CLIENT_LAG_P99_MS, ServedPointError, check_request, percentile

    measured = run.measured()
    if not measured:
        raise ServedPointError(f"{run.level.label()}: no request was measured (duration_s ended the level during "
                               "its warm-up), expected a longer duration or fewer warm-up requests")
    for r in measured:
        check_request(r.index, r, input_len, output_len)
    start = min(r.send_ns for r in measured)
    end = max(r.last_token_ns for r in measured)
    window_s = (end - start) / 1e9
    n = len(measured)
    ttft = [(r.first_token_ns - r.send_ns) / 1e6 for r in measured]
    e2e = [(r.last_token_ns - r.send_ns) / 1e6 for r in measured]
    tpot = [(r.last_token_ns - r.first_token_ns) / 1e6 / (output_len - 1) for r in measured] if output_len > 1 else []
    itl = [x for r in measured for x in r.itl_ms()]
    tpot_p50 = percentile(tpot, 50)
    lag_p99 = percentile(run.lags_ms, 99)
    lv = run.level
    e = system.endpoint
    return {
        "system": system.label, "model": model, "dtype": system.dtype, "backend": system.backend,
        "input_len": input_len, "output_len": output_len, "load_kind": lv.kind, "load_value": float(lv.value),
        "load_label": lv.label(), "requests": n, "warmup_requests": lv.warmup_requests,
        "duration_s": lv.duration_s, "stopped_by_duration": run.stopped_by_duration, "status": "ok", "error": None,
        "window_s": window_s, "request_rate_s": n / window_s, "output_tok_s": n * output_len / window_s,
        "total_tok_s": n * (input_len + output_len) / window_s,
        "interactivity_tok_s": 1000.0 / tpot_p50 if tpot_p50 else None,
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p90_ms": percentile(ttft, 90), "ttft_p99_ms": percentile(ttft, 99),
        "tpot_p50_ms": tpot_p50, "tpot_p90_ms": percentile(tpot, 90), "tpot_p99_ms": percentile(tpot, 99),
        "itl_p50_ms": percentile(itl, 50), "itl_p99_ms": percentile(itl, 99),
        "e2e_p50_ms": percentile(e2e, 50), "e2e_p99_ms": percentile(e2e, 99),
        "ttft_ms_samples": ttft, "tpot_ms_samples": tpot, "e2e_ms_samples": e2e,
        "client_lag_p99_ms": lag_p99, "client_lag_max_ms": max(run.lags_ms) if run.lags_ms else None,
        "client_bound": bool(lag_p99 is not None and lag_p99 > CLIENT_LAG_P99_MS),
        "endpoint_api": e.api, "served_model": e.model_name(model), "server_url":
            shown_url(server["url"]) if server.get("url") else None,
        "server_version": server.get("version"),
        "requests_json": json.dumps([r.as_json(start) for r in run.records], separators=(",", ":")),
    }


def failed_load_row(system, model: str, input_len: int, output_len: int, level: LoadLevel, error: str) -> dict:
    return {"system": system.label, "model": model, "dtype": system.dtype, "backend": system.backend,
            "input_len": input_len, "output_len": output_len, "load_kind": level.kind,
            "load_value": float(level.value), "load_label": level.label(), "requests": 0,
            "warmup_requests": level.warmup_requests, "duration_s": level.duration_s, "status": "error",
            "error": error}
