"""The streaming client: B requests sent together, every chunk of every answer stamped as it arrives.

asyncio with aiohttp (one connection pool per point, keep-alive, explicit timeouts; its C HTTP parser
reads a chunk in a few microseconds, where httpx's stack of async generators cost ~50 µs a chunk and fell
behind at 64 streams: benchmarks/client_timing.py) and httpx-sse's decoders, a maintained parser of the
server-sent-events format (multi-line data, comments, CRLF, a line split across reads), instead of a
hand-written one. Timestamps are `time.perf_counter_ns()` (monotonic) taken as each socket read's bytes
are handed over.

What counts, and the slips other clients make that this one does not:
- the first token is the first chunk that carries one: a role-only chunk (`delta: {role}`) or an empty
  text is not a token, so TTFT is never stamped on it;
- tokens per chunk come from the server's running usage where it sends one per chunk (vLLM's
  `continuous_usage_stats`), else one per non-empty chunk; either way they must add up to the server's
  final count, or the request is refused (a token whose arrival time is unknown cannot be placed);
- usage is read from whichever chunk carries it, with or without choices;
- an event loop that falls behind is measured (a 1 ms ticker's lateness) so that a client-bound figure is
  flagged rather than reported as the server's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

LAG_TICK_S = 0.001

# How much of a server's error text a row keeps: enough to read, never a page of HTML.
MAX_ERROR_CHARS = 300


@dataclasses.dataclass
class RequestRecord:
    """One request, raw: every chunk's arrival (ns, perf_counter) and the tokens it carried."""

    index: int
    send_ns: int = 0
    chunk_ns: list = dataclasses.field(default_factory=list)  # chunks that carried at least one token
    chunk_tokens: list = dataclasses.field(default_factory=list)
    events: int = 0  # every event received, token-carrying or not (role-only, usage-only, keep-alives)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    counts: str = "chunks"  # "usage": per-chunk running usage; "chunks": one token per non-empty chunk
    end_ns: int = 0  # the stream's end (its last byte), after the last token

    @property
    def first_token_ns(self) -> int | None:
        return self.chunk_ns[0] if self.chunk_ns else None

    @property
    def last_token_ns(self) -> int | None:
        return self.chunk_ns[-1] if self.chunk_ns else None

    def tokens_received(self) -> int:
        return sum(self.chunk_tokens)

    def token_arrivals_ns(self) -> list[int]:
        """Each token's arrival: a chunk of k tokens makes k tokens available at once."""
        return [t for t, k in zip(self.chunk_ns, self.chunk_tokens) for _ in range(k)]

    def itl_ms(self) -> list[float]:
        """Inter-token latency per token, not per chunk: the gap before a chunk of k tokens is spread over
        its k tokens (k values of gap/k), and the first chunk's extra tokens arrived with the first (0)."""
        if not self.chunk_ns:
            return []
        out = [0.0] * (self.chunk_tokens[0] - 1)
        for i in range(1, len(self.chunk_ns)):
            gap_ms = (self.chunk_ns[i] - self.chunk_ns[i - 1]) / 1e6
            k = self.chunk_tokens[i]
            out.extend([gap_ms / k] * k)
        return out

    def as_json(self, origin_ns: int) -> dict:
        """The raw record, times in ms from `origin_ns` (the repeat's start)."""
        return {"index": self.index, "send_ms": (self.send_ns - origin_ns) / 1e6,
                "chunk_ms": [(t - origin_ns) / 1e6 for t in self.chunk_ns], "chunk_tokens": self.chunk_tokens,
                "events": self.events, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "finish_reason": self.finish_reason,
                "http_status": self.http_status, "error": self.error, "counts": self.counts,
                "end_ms": (self.end_ns - origin_ns) / 1e6 if self.end_ns else None}


def missing_client_hint() -> str:
    return "served systems need aiohttp and httpx-sse: pip install 'perfkit[serve]'"


def _bounded(text: str, secret: str | None) -> str:
    """A server's message as a row keeps it: one line, the API key (should a server echo it) removed,
    at most MAX_ERROR_CHARS characters. Escaping for the terminal happens where it is printed."""
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
    return text[:MAX_ERROR_CHARS]


def _message_of(body: bytes) -> str:
    """The `message` of an OpenAI-style error body ({"error": {"message"}} or {"detail"}), else the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        return json.dumps(err)[:MAX_ERROR_CHARS * 2]
    return str(data)


class _Stream:
    """Reads one streamed answer into its RequestRecord."""

    def __init__(self, api: str, record: RequestRecord, secret: str | None):
        self.api, self.r, self.secret = api, record, secret
        self.mode = None  # "usage" or "chunks", once the first token arrives
        self.running = 0  # the last running completion count a chunk carried

    def event(self, data: str, now_ns: int) -> bool:
        """One event's data; False at the stream's end ([DONE])."""
        r = self.r
        r.events += 1
        if data.strip() == "[DONE]":
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            r.error = _bounded(f"a chunk is not JSON: {data[:80]!r}", self.secret)
            return False
        if not isinstance(chunk, dict):
            r.error = _bounded(f"a chunk is not a JSON object: {data[:80]!r}", self.secret)
            return False
        if "error" in chunk:  # an engine's error mid-stream (vLLM sends one as an event)
            err = chunk["error"]
            r.error = _bounded(err.get("message", err) if isinstance(err, dict) else err, self.secret)
            return False
        choices = chunk.get("choices") or []
        text = ""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if self.api == "chat":
                delta = choice.get("delta") or {}
                text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            else:
                text = choice.get("text") or ""
            if choice.get("finish_reason"):
                r.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        done = None
        if isinstance(usage, dict):
            if isinstance(usage.get("prompt_tokens"), int):
                r.prompt_tokens = usage["prompt_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                done = usage["completion_tokens"]
        # How tokens are counted is decided at the first chunk that carries one: the running usage if that
        # chunk has it (then every chunk does), else one token per non-empty chunk. A final chunk's usage
        # (with or without choices) then only gives the total to check against.
        if self.mode is None and choices and (text or (done or 0) > 0):
            self.mode = r.counts = "usage" if done is not None else "chunks"
        tokens = 0
        if self.mode == "usage" and choices and done is not None:
            tokens = done - self.running
        elif self.mode == "chunks" and text:
            tokens = 1
        if done is not None:
            self.running = max(self.running, done)
            r.completion_tokens = done
        if tokens > 0:
            r.chunk_ns.append(now_ns)
            r.chunk_tokens.append(tokens)
        return True


async def stream_one(session, url: str, headers: dict, body: dict, record: RequestRecord, api: str,
                     secret: str | None) -> None:
    """Send one streaming request and fill `record`. Never raises for the server's faults: they go to
    record.error (HTTP status and message, a cut stream, a timeout).

    Bytes are stamped as each socket read hands them over (aiohttp's iter_any), then split into lines and
    events by httpx-sse's decoders; every event of one read carries that read's stamp: they arrived
    together."""
    import codecs

    import aiohttp
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    reader = _Stream(api, record, secret)
    text = codecs.getincrementaldecoder("utf-8")("replace")
    lines, events = SSELineDecoder(), SSEDecoder()
    record.send_ns = time.perf_counter_ns()
    try:
        async with session.post(url, json=body, headers=headers) as response:
            record.http_status = response.status
            if response.status != 200:
                blob = await response.content.read(8192)
                record.error = _bounded(f"HTTP {response.status}: {_message_of(blob)}", secret)
                return
            going = True
            async for data in response.content.iter_any():
                now = time.perf_counter_ns()
                for line in lines.decode(text.decode(data)):
                    sse = events.decode(line)
                    if sse is not None and not reader.event(sse.data, now):
                        going = False
                        break
                if not going:
                    break
            record.end_ns = time.perf_counter_ns()
            if going:  # the stream ended without [DONE] (transformers serve sends none): its last event
                for line in lines.flush() + [""]:
                    sse = events.decode(line)
                    if sse is not None:
                        reader.event(sse.data, record.end_ns)
            else:  # read the body's end after [DONE], untimed, so the connection is kept for the next request
                async for _ in response.content.iter_any():
                    pass
    except asyncio.TimeoutError:
        record.error = _bounded(f"timed out after {record.tokens_received()} tokens", secret)
    except aiohttp.ClientError as exc:  # connection refused or reset, a stream cut off mid-way
        record.error = _bounded(f"{type(exc).__name__} after {record.tokens_received()} tokens: {exc}", secret)


class LagMonitor:
    """How late the event loop wakes a 1 ms ticker while timed requests run: the client's own delay."""

    def __init__(self):
        self.lags_ms: list[float] = []
        self.active = False

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            if self.active:
                self.lags_ms.append(max(0.0, (loop.time() - t - LAG_TICK_S) * 1e3))


@dataclasses.dataclass
class BatchResult:
    start_ns: int  # just before the first request of the repeat was sent
    records: list[RequestRecord]


async def _batch(client, url, headers, bodies, api, secret) -> BatchResult:
    records = [RequestRecord(i) for i in range(len(bodies))]
    start = time.perf_counter_ns()
    await asyncio.gather(*(stream_one(client, url, headers, b, r, api, secret) for b, r in zip(bodies, records)))
    return BatchResult(start, records)


def new_client(concurrency: int, request_timeout_s: float):
    """One aiohttp session for a point or a load level: a pool of `concurrency` connections (so B requests
    go out at once, none waits for a connection), keep-alive, no proxies from the environment."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=10.0)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                 auto_decompress=False)


def run_batches(url: str, headers: dict, bodies: list[dict], api: str, warmup: int, repeats: int,
                request_timeout_s: float, secret: str | None = None):
    """`warmup` untimed then `repeats` timed batches of `bodies`, all requests of a batch at once.

    Returns (warm-up seconds, [BatchResult per repeat], event-loop lags in ms during the timed batches)."""

    async def main():
        monitor = LagMonitor()
        ticker = asyncio.ensure_future(monitor.run())
        try:
            async with new_client(len(bodies), request_timeout_s) as client:
                t = time.perf_counter()
                for _ in range(warmup):
                    await _batch(client, url, headers, bodies, api, secret)
                warmup_s = time.perf_counter() - t
                out = []
                for _ in range(repeats):
                    monitor.active = True
                    out.append(await _batch(client, url, headers, bodies, api, secret))
                    monitor.active = False
                return warmup_s, out, monitor.lags_ms
        finally:
            ticker.cancel()

    return asyncio.run(main())
