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
    text = str(text)
    if secret:  # before folding whitespace: a key with a tab or two spaces would no longer match after
        text = text.replace(secret, "***")
    return " ".join(text.split())[:MAX_ERROR_CHARS]


def masked(text, secret: str | None):
    """`text` with the API key replaced by ***, for what a row or a message keeps of a server's words."""
    if text is None or not secret:
        return text
    return str(text).replace(secret, "***")


def _message_of(body: bytes) -> str:
    """The `message` of an OpenAI-style error body ({"error": {"message"}} or {"detail"}), else the text."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return body.decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        return json.dumps(err)[:MAX_ERROR_CHARS * 2]
    return str(data)


class _Unreadable(Exception):
    """A chunk that is JSON but not a completion chunk: its message says which field."""


def _text(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Unreadable(f"a text is a {type(value).__name__}, not a string")
    return value


def _count(usage: dict, field: str) -> int | None:
    """A usage count: absent (None), or an integer >= 0 (a bool, a string, a negative count is refused)."""
    value = usage.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Unreadable(f"usage.{field} is {str(value)[:20]!r}, not a count")
    return value


class _Stream:
    """Reads one streamed answer into its RequestRecord."""

    def __init__(self, api: str, record: RequestRecord, secret: str | None):
        self.api, self.r, self.secret = api, record, secret
        self.mode = None  # "usage" or "chunks", once the first token arrives
        self.running = 0  # the last running completion count a chunk carried

    def event(self, data: str, now_ns: int) -> bool:
        """One event's data; False at the stream's end ([DONE]) or at a chunk that cannot be read (the
        request's error then says why)."""
        r = self.r
        r.events += 1
        if data.strip() == "[DONE]":
            return False
        try:
            return self._chunk(data, now_ns)
        except _Unreadable as exc:
            r.error = _bounded(f"a chunk cannot be read ({exc}): {data[:80]!r}", self.secret)
        except (ValueError, RecursionError) as exc:  # not JSON, or nested past the parser's depth
            r.error = _bounded(f"a chunk is not JSON ({type(exc).__name__}): {data[:80]!r}", self.secret)
        return False

    def _chunk(self, data: str, now_ns: int) -> bool:
        r = self.r
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise _Unreadable("not a JSON object")
        if chunk.get("error") is not None:  # an engine's error mid-stream (vLLM sends one as an event)
            err = chunk["error"]
            r.error = _bounded(err.get("message", err) if isinstance(err, dict) else err, self.secret)
            return False
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise _Unreadable("choices is not a list")
        text = ""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if self.api == "chat":
                delta = choice.get("delta") or {}
                if not isinstance(delta, dict):
                    raise _Unreadable("delta is not an object")
                text = _text(delta.get("content")) + _text(delta.get("reasoning_content"))
            else:
                text = _text(choice.get("text"))
            if choice.get("finish_reason"):
                r.finish_reason = str(choice["finish_reason"])[:40]
        usage = chunk.get("usage")
        done = None
        if usage is not None:
            if not isinstance(usage, dict):
                raise _Unreadable("usage is not an object")
            prompt = _count(usage, "prompt_tokens")
            if prompt is not None:
                r.prompt_tokens = prompt
            done = _count(usage, "completion_tokens")
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
        # identity: the client reads the raw stream as it arrives (a compressed one would be read as garbage)
        async with session.post(url, json=body, headers={**headers, "Accept-Encoding": "identity"}) as response:
            record.http_status = response.status
            if response.status != 200:
                blob = await response.content.read(8192)
                record.error = _bounded(f"HTTP {response.status}: {_message_of(blob)}", secret)
                return
            kind = response.headers.get("Content-Type", "")
            if not kind.startswith("text/event-stream"):
                blob = await response.content.read(200)
                record.error = _bounded(f"the answer is not an event stream (Content-Type {kind[:60]!r}, it begins "
                                        f"{blob[:80]!r}): expected a streaming OpenAI-compatible server", secret)
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
                if record.events == 0 and record.error is None:
                    record.error = "the event stream ended without a single event"
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
