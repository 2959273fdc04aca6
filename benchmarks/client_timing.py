"""Streaming client timing: how late perfkit's client stamps a chunk, and how many chunks/s it can take.

A local OpenAI-completions SSE server (its own process) stamps every chunk just before its socket write; the
client's RequestRecord.chunk_ns stamps the same chunk when parsed. error = client stamp - server stamp (one
monotonic clock for both processes): the client's whole per-chunk delay, kernel loopback included.
"flood": the server sends as fast as it can, so rate = the client's capacity and error = its backlog.
"paced": a fixed aggregate rate spread evenly over the streams; kept up = received ~ offered, current at the end.
Goals: median error < 1 ms, and no throughput loss up to 20,000 chunks/s on one core.

    python benchmarks/client_timing.py [--quick] [--levels 1,64,512] [--rate 20000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import multiprocessing as mp
import os
import platform
import time

from perfkit.serving.client import run_batches

# The chunk as vLLM sends it for /v1/completions: the same size and fields to parse as in a real run.
CHUNK = json.dumps({"id": "cmpl-bench", "object": "text_completion", "created": 1700000000, "model": "bench",
                    "choices": [{"index": 0, "text": " w1", "logprobs": None, "finish_reason": None,
                                 "stop_reason": None}], "usage": None}, separators=(",", ":"))
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
GOAL_ERR_MS = 1.0
GOAL_RATE = 20_000


def _frame(payload: str) -> bytes:
    """One SSE event as one HTTP/1.1 chunk."""
    data = f"data: {payload}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNK_FRAME = _frame(CHUNK)
# [DONE] and the body's terminating zero-length chunk in one write, as a server ending a stream would send them.
DONE_FRAME = _frame("[DONE]") + b"0\r\n\r\n"


def _last_frame(prompt_tokens: int, n: int) -> bytes:
    return _frame(json.dumps({"id": "cmpl-bench", "object": "text_completion", "created": 1700000000,
                              "model": "bench", "choices": [{"index": 0, "text": " w1", "logprobs": None,
                                                             "finish_reason": "length", "stop_reason": None}],
                              "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                        "total_tokens": prompt_tokens + n}}, separators=(",", ":")))


# ---------------------------------------------------------------------------------------------- the server


class _Paced:
    __slots__ = ("writer", "log", "n", "k", "interval", "last", "done")

    def __init__(self, writer, log, n, interval, last, done):
        self.writer, self.log, self.n, self.k = writer, log, n, 0
        self.interval, self.last, self.done = interval, last, done


async def _serve(ctl) -> None:
    loop = asyncio.get_running_loop()
    logs: dict[str, list[int]] = {}  # prompt (request id) -> send stamp of each chunk, in chunk order
    heap: list = []  # paced streams: (due ns, seq, _Paced)
    wake = asyncio.Event()
    groups: dict[str, list] = {}  # a batch's requests waiting for the rest of it
    late: list[int] = []  # paced sends: how far after its due time each chunk left (the server's own lag)
    stats = {"connections": 0, "seq": 0}
    stop = loop.create_future()

    async def pacer():
        # One scheduler for every paced stream, not a sleeping task per stream: at 20k chunks/s a wake-up per
        # chunk would cost the server more than the sends. Due times are absolute, so a late tick catches up
        # and the offered rate holds; epoll sleeps in whole ms, so chunks leave in ~1 ms ticks (each stamped
        # on its own, immediately before its write).
        while True:
            if not heap:
                wake.clear()
                await wake.wait()
                continue
            now = time.perf_counter_ns()
            if heap[0][0] > now:
                # at most 1 ms, so that a newly arrived stream due sooner than the heap's head is not held up
                await asyncio.sleep(min(heap[0][0] - now, 1_000_000) / 1e9)
                continue
            while heap and heap[0][0] <= now:
                due, seq, s = heapq.heappop(heap)
                s.k += 1
                frame = s.last if s.k == s.n else CHUNK_FRAME
                t = time.perf_counter_ns()
                s.log.append(t)
                late.append(t - due)
                s.writer.write(frame)
                if s.k < s.n:
                    heapq.heappush(heap, (due + s.interval, seq, s))
                else:
                    s.writer.write(DONE_FRAME)
                    s.done.set_result(None)

    async def handle(reader, writer):
        stats["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                if method != "POST" or path != "/v1/completions":
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                n, key = int(body["max_tokens"]), str(body["prompt"])
                interval, phase = int(body.get("bench_interval_ns", 0)), int(body.get("bench_phase_ns", 0))
                log = logs[key] = []  # the timed batch reuses the warm-up's ids: the last request's log stays
                last = _last_frame(len(key.split()), n)
                writer.write(HEAD)
                # A batch starts streaming once all its requests are in, as an engine admits a batch: otherwise
                # the time the client takes to send 512 requests would dilute the offered rate.
                group, size = str(body.get("bench_group", key)), int(body.get("bench_streams", 1))
                waiting = groups.setdefault(group, [])
                start = loop.create_future()
                waiting.append(start)
                if len(waiting) == size:
                    del groups[group]
                    t0 = time.perf_counter_ns()
                    for f in waiting:
                        f.set_result(t0)
                t0 = await start
                if interval > 0:
                    done = loop.create_future()
                    stats["seq"] += 1
                    heapq.heappush(heap, (t0 + phase, stats["seq"], _Paced(writer, log, n, interval, last, done)))
                    wake.set()
                    await done
                else:
                    for k in range(n):
                        log.append(time.perf_counter_ns())
                        writer.write(last if k == n - 1 else CHUNK_FRAME)
                        # Yield after every chunk so that the streams interleave as an engine's would (one
                        # chunk per stream per step), rather than one stream's whole answer in one burst.
                        if writer.transport.get_write_buffer_size() > 65536:
                            await writer.drain()
                        else:
                            await asyncio.sleep(0)
                    writer.write(DONE_FRAME)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def on_ctl():
        msg = ctl.recv()
        if msg == "dump":
            ctl.send({"logs": dict(logs), "late_ns": list(late), "connections": stats["connections"]})
            logs.clear()
            late.clear()
        elif msg == "stop" and not stop.done():
            stop.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    pace = asyncio.ensure_future(pacer())
    loop.add_reader(ctl.fileno(), on_ctl)
    ctl.send(server.sockets[0].getsockname()[1])
    async with server:
        await stop
    pace.cancel()


def _server_main(ctl) -> None:
    asyncio.run(_serve(ctl))


# ---------------------------------------------------------------------------------------------- the client


def _schedstat() -> tuple[int, int]:
    """(ns on a CPU, ns waiting for one) of this process's main thread: the second is what other work on
    the machine took from it, which tells a slow client from a starved one."""
    try:
        with open("/proc/self/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run), int(wait)
    except (OSError, ValueError):
        return 0, 0


def _pct(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_point(url: str, ctl, mode: str, streams: int, n: int, rate: float, profiler=None) -> dict:
    """One run_batches call (warm-up + one timed batch) and its chunk-by-chunk match against the server log."""
    # Paced: each stream sends every streams/rate s, phases spread evenly, so the aggregate is `rate` chunks/s.
    interval = int(streams / rate * 1e9) if mode == "paced" else 0
    group = f"{mode}{streams}"
    bodies = [{"model": "bench", "prompt": f"{group}-{i}", "max_tokens": n, "stream": True, "bench_group": group,
               "bench_streams": streams, "bench_interval_ns": interval, "bench_phase_ns": interval * i // streams}
              for i in range(streams)]
    sched0, cpu0, wall0 = _schedstat(), time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    _, batches, lags = run_batches(url, headers={}, bodies=bodies, api="completions", warmup=1, repeats=1,
                                   request_timeout_s=60)
    if profiler:
        profiler.disable()
    call_s, cpu_s, sched1 = time.perf_counter() - wall0, time.process_time() - cpu0, _schedstat()
    ctl.send("dump")
    dump = ctl.recv()
    logs, batch = dump["logs"], batches[0]
    errors, early, late, arrivals, sends = [], [], [], [], []  # early/late: each stream's first and last tenth
    mismatched, failed = 0, [r.error for r in batch.records if r.error]
    for body, r in zip(bodies, batch.records, strict=True):
        log = logs.get(body["prompt"], [])
        if len(log) != len(r.chunk_ns) or not log:
            mismatched += 1
            continue
        e = [(c - s) / 1e6 for c, s in zip(r.chunk_ns, log, strict=True)]
        errors.extend(e)
        tenth = max(1, len(e) // 10)
        early.extend(e[:tenth])
        late.extend(e[-tenth:])
        arrivals.extend(r.chunk_ns)
        sends.extend(log)
    for v in (errors, early, late, lags):
        v.sort()
    chunks, nan = len(arrivals), float("nan")
    wall_s = (max((r.end_ns for r in batch.records), default=batch.start_ns) - batch.start_ns) / 1e9

    def span(v):
        return (max(v) - min(v)) / 1e9 if len(v) > 1 else nan

    server_late = sorted(dump["late_ns"])
    return {"mode": mode, "streams": streams, "n": n, "chunks": chunks, "wall_s": wall_s,
            "rate": chunks / wall_s if wall_s > 0 else nan,  # the brief's figure: chunks / the timed batch's wall
            "recv_rate": chunks / span(arrivals), "send_rate": chunks / span(sends),
            "err_med": _pct(errors, 0.5), "err_p99": _pct(errors, 0.99), "err_max": errors[-1] if errors else nan,
            "backlog_ms": _pct(late, 0.5) - _pct(early, 0.5), "end_err": _pct(late, 0.5), "lag_p99": _pct(lags, 0.99),
            "server_late_p99": _pct(server_late, 0.99) / 1e6 if server_late else nan,
            # CPU of the whole call (warm-up batch + timed batch + connection set-up) over both batches' chunks
            "cpu_us": cpu_s / (2 * chunks) * 1e6 if chunks else nan, "cpu_pct": 100 * cpu_s / call_s,
            # the share of the call the client spent runnable but not running: CPU taken by other processes
            "starved_pct": 100 * (sched1[1] - sched0[1]) / 1e9 / call_s,
            "accepted": dump["connections"], "failed": failed, "mismatched": mismatched}


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    import httpx
    import httpx_sse

    sse = getattr(httpx_sse, "__version__", "?")
    return (f"{model}, {cores} cores available (load average {load} before the run), Python "
            f"{platform.python_version()}, httpx {httpx.__version__}, httpx-sse {sse}")


def _problems(p: dict) -> str:
    out = []
    if p["failed"]:
        out.append(f"{len(p['failed'])} failed: {p['failed'][0]}")
    if p["mismatched"]:
        out.append(f"{p['mismatched']} streams whose chunk count differs from the server's")
    return ("   !! " + "; ".join(out)) if out else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny run (a few seconds)")
    ap.add_argument("--levels", default="1,64,512", help="concurrent streams, comma-separated")
    ap.add_argument("--rate", type=float, default=GOAL_RATE, help="paced mode's aggregate chunks/s")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the client (all runs; figures are then inflated by the profiler)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    # Chunks per timed batch: flood long enough to reach a steady state, paced 3 s of the offered rate (long
    # enough for a client that falls behind to show a growing backlog).
    flood_total, paced_s = (2_000, 0.25) if args.quick else (32_768, 3.0)

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    # A separate process, so the server's sends never wait on the client's event loop (and vice versa).
    server = ctx.Process(target=_server_main, args=(child,), daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise SystemExit("the local server did not start")
        url = f"http://127.0.0.1:{parent.recv()}/v1/completions"
        print(f"machine: {machine()}")
        print(f"server: {url}, its own process; {'quick' if args.quick else 'full'} run; each point = "
              "run_batches(warmup=1, repeats=1), figures from the timed batch; times in ms")
        print("CPU% / starved%: the client's CPU time / waiting for a CPU (taken by other processes), "
              "share of the call's wall time\n")

        print("flood: the server sends as fast as it can; error here is mostly queueing (the client's backlog)")
        print(f"{'streams':>7} {'chunks/req':>10} {'chunks':>7} {'wall s':>7} {'client/s':>9} {'arrive/s':>9} "
              f"{'server/s':>9} {'err med':>8} {'err p99':>8} {'err max':>8} {'lag p99':>8} {'us/chunk':>8} "
              f"{'CPU%':>5} {'starved%':>8} {'conns':>5}")
        flood, accepted = [], 0  # the server's running count of accepted connections
        for s in levels:
            n = max(16, flood_total // s)
            p = run_point(url, parent, "flood", s, n, float("inf"), profiler)
            p["conns"], accepted = p["accepted"] - accepted, p["accepted"]
            flood.append(p)
            print(f"{s:>7} {n:>10} {p['chunks']:>7} {p['wall_s']:>7.2f} {p['rate']:>9.0f} {p['recv_rate']:>9.0f} "
                  f"{p['send_rate']:>9.0f} {p['err_med']:>8.2f} {p['err_p99']:>8.2f} {p['err_max']:>8.2f} "
                  f"{p['lag_p99']:>8.2f} {p['cpu_us']:>8.1f} {p['cpu_pct']:>5.0f} {p['starved_pct']:>8.0f} "
                  f"{p['conns']:>5}{_problems(p)}")
        print("  client/s = chunks / the timed batch's wall (requests sent to last byte); arrive/s = over the span "
              "from first to last chunk; us/chunk = client CPU per chunk, warm-up and set-up included; conns = TCP "
              "connections the server accepted in the call (warm-up + timed: 2 x streams = none kept alive)")

        print(f"\npaced: {args.rate:.0f} chunks/s in all, spread evenly over the streams (sent in ~1 ms server ticks)")
        print(f"{'streams':>7} {'per stream/s':>12} {'chunks':>7} {'offered/s':>9} {'received/s':>10} {'recv/off':>8} "
              f"{'err med':>8} {'err p99':>8} {'err max':>8} {'end err':>8} {'backlog':>8} {'lag p99':>8} "
              f"{'srv late':>8} {'CPU%':>5} {'starved%':>8} {'conns':>5}")
        paced = []
        for s in levels:
            n = max(8, int(args.rate * paced_s / s))
            p = run_point(url, parent, "paced", s, n, args.rate, profiler)
            p["conns"], accepted = p["accepted"] - accepted, p["accepted"]
            paced.append(p)
            print(f"{s:>7} {args.rate / s:>12.1f} {p['chunks']:>7} {p['send_rate']:>9.0f} {p['recv_rate']:>10.0f} "
                  f"{p['recv_rate'] / p['send_rate']:>8.3f} {p['err_med']:>8.2f} {p['err_p99']:>8.2f} "
                  f"{p['err_max']:>8.2f} {p['end_err']:>8.2f} {p['backlog_ms']:>8.2f} {p['lag_p99']:>8.2f} "
                  f"{p['server_late_p99']:>8.2f} "
                  f"{p['cpu_pct']:>5.0f} {p['starved_pct']:>8.0f} {p['conns']:>5}{_problems(p)}")
        print("  end err = median error of each stream's last tenth of chunks (what the client still owed at the "
              "end); backlog = end err minus the same for the first tenth (> 0: falling behind); srv late = p99 of "
              "the server's send after its due time (its own lag)")
    finally:
        parent.send("stop")
        server.join(5)
        if server.is_alive():
            server.terminate()

    print()
    broken = any(p["failed"] or p["mismatched"] for p in flood + paced)
    worst = max(paced, key=lambda p: p["err_med"])
    ok_err = all(p["err_med"] < GOAL_ERR_MS for p in paced) and not broken
    print(f"goal: median timing error < {GOAL_ERR_MS:g} ms (paced, every level): {'met' if ok_err else 'NOT met'} "
          f"(worst {worst['err_med']:.2f} ms at {worst['streams']} streams)")
    offered_ok = all(p["send_rate"] >= 0.97 * args.rate for p in paced)
    # Kept up: the rate held and the client ended current. The rate alone can mislead: a client that starts
    # late and then catches up shortens its arrival span and seems to receive faster than offered.
    kept_up = all(p["recv_rate"] >= 0.98 * p["send_rate"] and p["end_err"] < 10 * GOAL_ERR_MS for p in paced)
    cap = min(p["recv_rate"] for p in flood)
    if args.rate < GOAL_RATE:
        verdict = f"not tested (paced at {args.rate:.0f} < {GOAL_RATE} chunks/s)"
    elif not offered_ok:
        verdict = "inconclusive: the server could not offer the rate (see offered/s, srv late)"
    else:
        verdict = "met" if kept_up and not broken else "NOT met"
    print(f"goal: no throughput loss up to {GOAL_RATE} chunks/s (paced: received >= 98% of offered, end err < "
          f"{10 * GOAL_ERR_MS:g} ms): "
          f"{verdict}; flood capacity (arrive/s) {cap:.0f} chunks/s at worst")
    if any(p["starved_pct"] > 10 for p in flood + paced):
        print("note: the client waited for a CPU for more than 10% of some calls: other processes share these cores, "
              "so these figures understate the client")

    if profiler:
        import pstats

        print("\nclient profile (cProfile, all runs), top 25 by own time, then by cumulative time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
