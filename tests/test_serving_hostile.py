"""Served systems against hostile input and hostile peers.

Hostile input: params files and `perfkit run --endpoint` flags that must be refused in one line (exit 2,
no traceback, nothing written). Hostile peers: fake "servers" on 127.0.0.1 (http.server in a thread) that
answer /health with 200 but stream garbage, lie about counts, echo the API key, hang or cut the stream:
each point must end as a failed row with a short reason, never a crash and never an ok row. And the
stream reader's and the exactness check's edge cases on hand-made events. (The real servers'
behaviour: test_served.py.)
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import shlex
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from helpers import call_cli, params_dict
from servers import all_text_under, rows_of

from perfkit.errors import UsageError
from perfkit.params import parse_params
from perfkit.serving.client import BatchResult, RequestRecord, _bounded, _message_of, _Stream
from perfkit.serving.point import ServedPointError, check_request, measurement_of
from perfkit.sweep.served import PROBE_OUTPUT_TOKENS

KEY_ENV = "PERFKIT_HOSTILE_TEST_KEY"
_PY = shlex.quote(sys.executable)
KEY = "pk-hostile-5f1c9e0a2b7d4c3e"
MODEL = "tiny-llama2-13b"  # a registry model: no checkpoint to write; vocabulary 32,000 (the word tokenizer's)


# ---- a fake peer ------------------------------------------------------------------------------------

class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up: not the test's concern
        pass


class Peer:
    """A fake OpenAI-compatible "server" on 127.0.0.1. GET: `gets[path]` as (status, content type, bytes),
    /health 200 by default, else 404. POST: `answer(handler, body)` writes the whole answer (HTTP/1.0: the
    body ends when the connection closes); where `answer` is a dict, the request's model field picks it."""

    def __init__(self, answer, gets=None):
        peer = self
        self.answer, self.gets, self.requests = answer, dict(gets or {}), []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                default = (200, "text/plain", b"ok") if self.path == "/health" else (404, "text/plain", b"no")
                status, ctype, blob = peer.gets.get(self.path, default)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                peer.requests.append((dict(self.headers), body))
                answer = peer.answer[body["model"]] if isinstance(peer.answer, dict) else peer.answer
                answer(self, body)

        self.httpd = _Quiet(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def peer():
    started = []

    def start(answer, gets=None) -> Peer:
        started.append(Peer(answer, gets))
        return started[-1]

    yield start
    for p in started:
        p.close()


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> str:
    """A word-level tokenizer.json (one word, one token) with the 32,000 ids of MODEL's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(32000 - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(specials)
    folder = tmp_path_factory.mktemp("words")
    tok.save(str(folder / "tokenizer.json"))
    return str(folder)


def _sse(items) -> bytes:
    return b"".join(f"data: {x if isinstance(x, str) else json.dumps(x)}\n\n".encode() for x in items)


def _send(h, blob: bytes, status: int = 200, ctype: str = "text/event-stream", headers=()) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    for k, v in headers:
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(blob)


def _prompt_tokens(body: dict, bos: int = 0) -> int:
    if "messages" in body:
        return len(body["messages"][0]["content"].split()) + bos
    p = body["prompt"]
    return len(p) if isinstance(p, list) else len(p.split()) + bos


def _token_events(body: dict, bos: int = 0) -> list:
    """An exact answer: max_tokens chunks of one token each, then the usage, then [DONE]."""
    o = body["max_tokens"]
    chat = "messages" in body
    out = []
    for k in range(o):
        choice = {"index": 0, "finish_reason": "length" if k == o - 1 else None}
        choice.update({"delta": {"content": f" w{k}"}} if chat else {"text": f" w{k}"})
        out.append({"choices": [choice]})
    out.append({"choices": [], "usage": {"prompt_tokens": _prompt_tokens(body, bos), "completion_tokens": o}})
    return [*out, "[DONE]"]


def honest(h, body, bos: int = 0):
    _send(h, _sse(_token_events(body, bos)))


def after_probe(bad):
    """Honest for perfkit's probe request (PROBE_OUTPUT_TOKENS), `bad` for every timed request."""
    return lambda h, body: (honest if body["max_tokens"] == PROBE_OUTPUT_TOKENS else bad)(h, body)


def stream(*items, status: int = 200):
    return lambda h, body: _send(h, _sse(items), status)


def raw(blob: bytes, status: int = 200, ctype: str = "text/event-stream"):
    return lambda h, body: _send(h, blob, status, ctype)


def wire(blob: bytes):
    """Bytes straight onto the socket (a status line and headers that lie, or nothing), then hang up."""
    def answer(h, body):
        h.wfile.write(blob)
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)
    return answer


def echo_key(h, body):
    message = {"error": {"message": f"invalid key: {h.headers.get('Authorization')}", "type": "auth"}}
    _send(h, json.dumps(message).encode(), 401, "application/json")


def hang(h, body):
    time.sleep(2.0)


def huge_chunk(h, body):
    """One chunk of 2 MB of text, then a usage that counts every token asked for: 1 chunk, O tokens."""
    o = body["max_tokens"]
    _send(h, _sse([{"choices": [{"index": 0, "text": "x" * (2 << 20)}]},
                   {"choices": [], "usage": {"prompt_tokens": _prompt_tokens(body), "completion_tokens": o}}]))


def bad_usage(value):
    usage = {"choices": [], "usage": {"prompt_tokens": value, "completion_tokens": value}}
    return lambda h, body: _send(h, _sse([*_token_events(body)[:-2], usage, "[DONE]"]))


def negative_usage(h, body):
    _send(h, _sse([*_token_events(body)[:-2],
                   {"choices": [], "usage": {"prompt_tokens": _prompt_tokens(body), "completion_tokens": -3}}]))


# name -> (answer, a phrase the failed point's reason carries; None: any reason, as long as the point fails)
HOSTILE = {
    "not-json": (stream("this is not json"), "a chunk is not JSON"),
    "json-array": (stream([1, 2, 3]), "a chunk cannot be read (not a JSON object)"),
    "choices-dict": (stream({"choices": {"0": {"text": " w"}}}), "a chunk cannot be read (choices is not a list)"),
    "negative-usage": (negative_usage, "usage.completion_tokens is '-3', not a count"),
    "string-usage": (bad_usage("16"), "usage.prompt_tokens is '16', not a count"),
    "html-200": (raw(b"<html><body>Welcome to nginx!</body></html>\n", ctype="text/html"), None),
    "cut-mid-chunk": (raw(b'data: {"choices": [{"index": 0, "te'), "a chunk is not JSON"),
    "error-1mb": (raw(b"x" * (1 << 20), 500, "text/plain"), "HTTP 500: xxx"),
    "ansi-error": (raw(json.dumps({"error": {"message": "boom \x1b[2J\x1b]0;owned\x07 \u202e!"}}).encode(), 500,
                       "application/json"), "HTTP 500: boom"),
    "echo-key": (echo_key, "HTTP 401: invalid key: Bearer ***"),
    "hang": (hang, "timed out after 0 tokens"),
    "disconnect": (wire(b""), "ServerDisconnectedError"),
    "bad-chunked": (wire(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"40\r\ndata: {\"choi"), "ClientPayloadError"),
    "short-body": (wire(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 1000\r\n\r\n"
                        b"data: {\"choices\": []}\n\n"), "ClientPayloadError"),
    "huge-chunk": (huge_chunk, "its chunks carry 1 tokens"),
    # these three crash the reader today (see test_run_survives_malformed_answers): a sweep still fails them
    "choices-int": (stream({"choices": 5}), None),
    "deep-json-line": (stream("[" * 5000), None),
    "deep-json-error": (raw(b"[" * 9000, 500, "application/json"), None),
}


# ---- helpers ----------------------------------------------------------------------------------------

def write_params(tmp_path, systems, name="hostile", **extra) -> str:
    d = params_dict(name=name, models=[MODEL], systems=systems, warmup=0, repeats=1,
                    grid={"input_lens": [16], "output_lens": [6], "batch_sizes": [2]})
    d.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path)


def run_point(url, *flags, out=None):
    """`perfkit run --endpoint URL` in this process: one point, I=8, O=4, B=1, no warm-up, one repeat."""
    args = ["run", "--model", MODEL, "--input-len", "8", "--output-len", "4", "--endpoint", url,
            "--warmup", "0", "--repeats", "1", *flags]
    if out is not None:
        args += ["--out", str(out)]
    return call_cli(*args)


def refused_in_one_line(r, *phrases) -> str:
    """The command was refused as bad input: exit 2, one error line on stderr, no traceback; returns it.
    (`perfkit run --endpoint` prints one progress line before it reaches the server.)"""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("checking the server")]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("perfkit"), r.stderr
    assert "Traceback" not in r.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def served(**endpoint) -> dict:
    return {"label": "srv", "endpoint": {"base_url": "http://127.0.0.1:9/v1", **endpoint}}


def refused_params(data) -> str:
    with pytest.raises(UsageError) as exc:
        parse_params(data)
    message = str(exc.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# ---- hostile params files ---------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint,phrase", [
    ({"extra_body": {1: True}}, "key 1 is not a string"),
    ({"extra_body": {None: True}}, "key None is not a string"),
    ({"extra_body": {"x": "y" * 5000}}, "bytes as JSON, expected at most 4,096"),
    ({"extra_body": {"stream": False}}, "extra_body.stream: is set by perfkit"),
    ({"extra_body": {"messages": []}}, "extra_body.messages: is set by perfkit"),
    ({"extra_body": {"x": float("nan")}}, "cannot be sent as JSON"),
    ({"extra_body": {"x": {1, 2}}}, "cannot be sent as JSON"),
    ({"extra_body": "ignore_eos"}, "is not a mapping"),
    ({"base_url": None, "launch": ""}, "is not a non-empty string"),
    ({"base_url": None, "launch": "vllm serve\x1b[2J {model}"}, "launch: is too long or not printable"),
    ({"base_url": None, "launch": "vllm serve {model}\nrm -rf /"}, "launch: is too long or not printable"),
    ({"base_url": None, "launch": "vllm serve \u202e{model}"}, "launch: is too long or not printable"),
    ({"base_url": None, "launch": "x " * 3000}, "launch: is too long or not printable"),
    ({"base_url": None, "launch": "x {port}", "env": {"1BAD": "v"}}, "is not a variable name"),
    ({"base_url": None, "launch": "x {port}", "env": {"A": [1]}}, "is not a string or number"),
    ({"ready_path": "health"}, "is not a path"),
    ({"ready_path": "/h\x00"}, "is not a path"),
    ({"ready_path": "/" + "h" * 200}, "is not a path"),
    ({"ready_path": 7}, "is not a non-empty string"),
    ({"api_key_env": "sk-live-1234"}, "is not a variable name"),
    ({"api_key_env": ["KEY"]}, "is not a variable name"),
    ({"request_timeout_s": -1}, "request_timeout_s: -1 is out of range"),
    ({"request_timeout_s": float("inf")}, "is not a finite number"),
    ({"ready_timeout_s": 10**9}, "is out of range"),
    ({"device_name": "H200\x1b[31m"}, "is not printable"),
    ({"base_url": "http://127.0.0.1:8000/v1\x1b[2J"}, "is too long or not printable"),
    ({"base_url": "http://127.0.0.1:70000/v1"}, "Port out of range"),
    ({"base_url": "file:///etc/passwd"}, "is not an http:// or https:// URL"),
    ({"base_url": "http://127.0.0.1:8000/v1#frag"}, "has a query or fragment"),
    ({"base_url": 8000}, "is not a non-empty string"),
])
def test_hostile_endpoints_are_refused_in_one_line(endpoint, phrase):
    spec = served(**endpoint)
    spec["endpoint"] = {k: v for k, v in spec["endpoint"].items() if v is not None}
    assert phrase in refused_params(params_dict(systems=[spec]))


@pytest.mark.parametrize("loads,phrase", [
    ({"users": [1]}, "loads.requests: missing"),
    ({"requests": 5}, "has neither users nor rates"),
    ({"users": [], "requests": 5}, "loads.users: is empty"),
    ({"users": [0], "requests": 5}, "loads.users[0]: 0 is too small"),
    ({"users": [1.5], "requests": 5}, "is not an integer"),
    ({"users": [4, 4], "requests": 5}, "repeats the value 4"),
    ({"users": [5000], "requests": 5}, "is too large"),
    ({"rates": [2, 2.0], "requests": 5}, "loads.rates: repeats a value"),
    ({"rates": [0], "requests": 5}, "loads.rates[0]: 0 is out of range"),
    ({"rates": [True], "requests": 5}, "is not a finite number"),
    ({"rates": ["8"], "requests": 5}, "is not a finite number"),
    ({"rates": [float("nan")], "requests": 5}, "is not a finite number"),
    ({"rates": [1e9], "requests": 5}, "is out of range"),
    ({"rates": 8, "requests": 5}, "is not a list"),
    ({"users": [1], "requests": 0}, "loads.requests: 0 is too small"),
    ({"users": [1], "requests": True}, "is not an integer"),
    ({"users": [1], "requests": 5, "warmup_requests": -1}, "is too small"),
    ({"users": [1], "requests": 5, "duration_s": 0}, "loads.duration_s: 0 is out of range"),
    ({"users": [1], "requests": 5, "duration_s": "1h"}, "is not a finite number"),
    ({"users": [1], "requests": 5, "user": [2]}, "unknown key (did you mean 'users'?)"),
    ([1, 2], "is a list"),
])
def test_hostile_loads_are_refused_in_one_line(loads, phrase):
    assert phrase in refused_params(params_dict(systems=[served()], loads=loads))


def test_loads_without_a_served_system_are_refused():
    assert "given, but no system is served" in refused_params(params_dict(loads={"users": [1], "requests": 5}))


@pytest.mark.parametrize("launch,phrase", [
    ("serve {nope} --port {port}", "placeholder {nope} is not one perfkit fills in, expected only {port}, {model}"),
    ("serve {0}", "is not one perfkit fills in"),
    ("serve {port!z}", "placeholder {port!z} is not one perfkit fills in"),
    ("serve '{port}", "No closing quotation"),
    ("no-such-program-here --port {port}", "program 'no-such-program-here' not found"),
    ("/ {port}", "program '/' not found"),
])
def test_launch_commands_that_cannot_run_are_refused_before_any_work(tmp_path, launch, phrase):
    params = write_params(tmp_path, [{"label": "l", "endpoint": {"launch": launch}}])
    r = call_cli("sweep", params, "--out", tmp_path / "out", "--no-progress")
    refused_in_one_line(r, "launch", phrase)  # by the params check or the preflight, before any work
    assert not os.path.exists(tmp_path / "out")


def test_a_missing_key_variable_is_refused_before_any_work(tmp_path, peer, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    p = peer(honest)
    params = write_params(tmp_path, [{"label": "k", "endpoint": {"base_url": p.url, "api_key_env": KEY_ENV}}])
    r = call_cli("sweep", params, "--out", tmp_path / "out", "--no-progress")
    refused_in_one_line(r, f"api_key_env {KEY_ENV}: that environment variable is not set")
    monkeypatch.setenv(KEY_ENV, "")
    refused_in_one_line(run_point(p.url, "--api-key-env", KEY_ENV), "is not set")
    assert not os.path.exists(tmp_path / "out") and not p.requests


# ---- perfkit run --endpoint: bad flags ---------------------------------------------------------------

@pytest.mark.parametrize("flags,phrase", [
    (["--extra-body", "{ignore_eos: true}"], "--extra-body is not JSON"),
    (["--extra-body", "[1]"], "is not a mapping"),
    (["--extra-body", '"x"'], "is not a mapping"),
    (["--extra-body", '{"a": NaN}'], "cannot be sent as JSON"),
    (["--extra-body", '{"a": 1e999}'], "cannot be sent as JSON"),
    (["--extra-body", '{"max_tokens": 1}'], "extra_body.max_tokens: is set by perfkit"),
    (["--extra-body", json.dumps({"a": "b" * 5000})], "at most 4,096"),
    (["--api", "responses"], "unknown value 'responses'"),
    (["--prompt", "ids"], "unknown value 'ids'"),
    (["--api", "chat", "--prompt", "token_ids"], "token_ids with api chat"),
    (["--api-key-env", "not a name"], "is not a variable name"),
    (["--server-device", "H200\x07"], "is not printable"),
    (["--system", "a\x1b[2Jb"], "is not printable"),
    (["--tokenizer", "/nonexistent-folder"], "has no tokenizer.json"),
    (["--batch", "5000"], "at most 4,096 concurrent requests"),
    (["--repeats", "0"], "--repeats from 1"),
])
def test_run_endpoint_bad_flags_are_refused_in_one_line(tmp_path, peer, flags, phrase):
    p = peer(honest)
    r = run_point(p.url, *flags, out=tmp_path / "out")
    line = refused_in_one_line(r, phrase)
    assert "\x1b" not in line and "\x07" not in line
    assert not os.path.exists(tmp_path / "out") and not p.requests


@pytest.mark.parametrize("url,phrase", [
    ("ftp://127.0.0.1/v1", "is not an http:// or https:// URL"),
    ("javascript:alert(1)", "is not an http:// or https:// URL"),
    ("http:///v1", "with a host"),
    ("http://[::1/v1", "is not a URL"),
    ("http://127.0.0.1:99999/v1", "Port out of range"),
    ("http://127.0.0.1:8000/v1?x=1", "has a query or fragment"),
    ("http://127.0.0.1:8000/v1\r\nX-Evil: 1", "is too long or not printable"),
    ("http://\u202e127.0.0.1/v1", "is too long or not printable"),
    ("http://127.0.0.1:9/" + "v" * 3000, "is too long"),
])
def test_run_endpoint_bad_urls_are_refused_in_one_line(tmp_path, url, phrase):
    line = refused_in_one_line(run_point(url, out=tmp_path / "out"), phrase)
    assert "\u202e" not in line and "\r" not in line
    assert not os.path.exists(tmp_path / "out")


# ---- hostile peers ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_hostile_peers_fail_their_points_in_a_sweep(tmp_path, peer, monkeypatch):
    """Every hostile answer on the timed requests (the probe request is answered exactly): a failed row
    with a short one-line reason, the key masked where a server echoes it, the terminal escaped; no ok row,
    no traceback; summary reads the failed rows."""
    monkeypatch.setenv(KEY_ENV, KEY)
    p = peer({name: after_probe(answer) for name, (answer, _) in HOSTILE.items()})
    systems = [{"label": name, "endpoint": {"base_url": p.url, "served_model": name, "api_key_env": KEY_ENV,
                                            "request_timeout_s": 0.5}} for name in HOSTILE]
    out = tmp_path / "out"
    r = call_cli("sweep", write_params(tmp_path, systems), "--out", out, "--no-progress")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    rows = {row["system"]: row for row in rows_of(out)}
    assert sorted(rows) == sorted(HOSTILE)
    for name, (_, phrase) in HOSTILE.items():
        row = rows[name]
        assert row["status"] == "error", (name, row["error"])
        assert "\n" not in row["error"] and len(row["error"]) < 500, (name, row["error"])
        if phrase is not None:
            assert phrase in row["error"], (name, row["error"])
    summary = call_cli("summary", out)
    assert summary.returncode == 0, summary.stderr
    said = r.stdout + r.stderr + summary.stdout + summary.stderr
    assert "\x1b" not in said and "\x07" not in said and "\u202e" not in said
    assert KEY not in all_text_under(out) + said
    # every request carried the key, and the probe's answers were exact: the faults are the timed requests'
    assert all(headers.get("Authorization") == f"Bearer {KEY}" for headers, _ in p.requests)


CLI_FAULTS = [name for name, (_, phrase) in HOSTILE.items() if phrase is not None and name != "hang"]


@pytest.mark.parametrize("name", CLI_FAULTS)
def test_run_endpoint_says_what_the_server_did_wrong(tmp_path, peer, monkeypatch, name):
    """The same answers to `perfkit run --endpoint`'s first request (its exactness probe): one line naming
    the fault, exit 2, nothing written, the key never shown, the terminal escaped."""
    monkeypatch.setenv(KEY_ENV, KEY)
    answer, phrase = HOSTILE[name]
    r = run_point(peer(answer).url, "--api-key-env", KEY_ENV, out=tmp_path / "out")
    line = refused_in_one_line(r, "the point was not measured", phrase)
    assert len(line) < 700
    assert KEY not in r.stdout + r.stderr and "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert not os.path.exists(tmp_path / "out")


def test_nothing_half_written_when_a_later_repeat_fails(tmp_path, peer):
    """The probe and the first repeats are exact, a later repeat is cut: no row, no run record."""
    calls = {"n": 0}

    def answer(h, body):
        calls["n"] += 1
        (honest if calls["n"] <= 3 else wire(b""))(h, body)

    p = peer(answer)
    r = run_point(p.url, "--repeats", "4", out=tmp_path / "out")
    refused_in_one_line(r, "ServerDisconnectedError")
    assert not os.path.exists(tmp_path / "out")


def test_an_honest_peer_gives_an_exact_ok_row(tmp_path, peer, monkeypatch):
    """The control: the fake peer is exact, so everything the hostile ones fail is theirs."""
    monkeypatch.setenv(KEY_ENV, KEY)
    p = peer(honest)
    r = run_point(p.url, "--api-key-env", KEY_ENV, "--json", out=tmp_path / "out")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["status"] == "ok" and row["backend"] == "served" and row["output_len"] == 4
    assert KEY not in all_text_under(tmp_path / "out") + r.stdout + r.stderr


def test_load_levels_on_a_failing_peer_are_failed_rows(tmp_path, peer):
    """Load levels after the batch point, on a peer that answers 503 after its probe: failed level rows."""
    calls = {"n": 0}

    def answer(h, body):
        calls["n"] += 1
        if calls["n"] == 1:
            return honest(h, body)
        _send(h, b"overloaded, come back later " * 100, 503, "text/plain")

    p = peer(answer)
    params = write_params(tmp_path, [{"label": "busy", "endpoint": {"base_url": p.url}}],
                          loads={"users": [2], "rates": [50], "requests": 3, "warmup_requests": 1})
    r = call_cli("sweep", params, "--out", tmp_path / "out", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    levels = rows_of(tmp_path / "out", "loads")
    assert len(levels) == 2 and all(lv["status"] == "error" for lv in levels)
    assert all("HTTP 503: overloaded" in lv["error"] and len(lv["error"]) < 400 for lv in levels)


@pytest.mark.slow
def test_launched_fake_servers_that_never_get_ready_fail_their_points(tmp_path):
    """perfkit's launch mode on programs that are not LLM servers: one that serves files (its /health is
    404) and one that exits at once. Failed points saying so, with the log's last lines, one log each."""
    py = shlex.quote(sys.executable)
    systems = [
        {"label": "files", "endpoint": {"launch": f"{py} -m http.server {{port}} --bind 127.0.0.1",
                                        "ready_timeout_s": 1}},
        {"label": "quits", "endpoint": {"launch": f"{py} -c \"print('bye now'); raise SystemExit(3)\""}},
    ]
    out = tmp_path / "out"
    r = call_cli("sweep", write_params(tmp_path, systems), "--out", out, "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rows = {row["system"]: row for row in rows_of(out)}
    assert rows["files"]["status"] == "error" and "not ready after 1 s (HTTP 404)" in rows["files"]["error"]
    assert "exited with code 3 before it was ready" in rows["quits"]["error"]
    assert "bye now" in rows["quits"]["error"]
    assert len(glob.glob(os.path.join(out, "servers", "*.log"))) == 2


@pytest.mark.slow
def test_transformers_serve_refusals_are_failed_points_with_its_message(tmp_path):
    """A real server (launched by perfkit) that refuses what it is sent: token-id prompts (its 400) and
    ignore_eos (its 422). Each unit's point fails with the server's own words and what to set."""
    from servers import HF_ENV, HF_LAUNCH, need_hf

    from perfkit.tiny_checkpoint import write_checkpoint

    need_hf()
    model = write_checkpoint(str(tmp_path / "tiny"))
    systems = [{"label": "ids", "endpoint": {"launch": HF_LAUNCH, "env": HF_ENV, "ready_timeout_s": 120}},
               {"label": "eos", "endpoint": {"launch": HF_LAUNCH, "env": HF_ENV, "ready_timeout_s": 120,
                                             "api": "chat", "extra_body": {"ignore_eos": True}}}]
    params = write_params(tmp_path, systems, models=[model],
                          grid={"input_lens": [8], "output_lens": [4], "batch_sizes": [1]})
    r = call_cli("sweep", params, "--out", tmp_path / "out", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rows = {row["system"]: row for row in rows_of(tmp_path / "out")}
    assert "HTTP 400" in rows["ids"]["error"] and "needs endpoint prompt: text" in rows["ids"]["error"]
    assert "HTTP 422" in rows["eos"]["error"] and "ignore_eos" in rows["eos"]["error"]


# ---- the stream reader and the exactness check, on hand-made events ------------------------------------

def read(api, events) -> RequestRecord:
    r = RequestRecord(0, send_ns=0)
    s = _Stream(api, r, KEY)
    for n, e in enumerate(events):
        if not s.event(e if isinstance(e, str) else json.dumps(e), 1_000_000 * (n + 1)):
            break
    r.http_status = 200
    return r


def tok(text=" w", finish=None, usage=None) -> dict:
    chunk = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = {"prompt_tokens": 8, "completion_tokens": usage}
    return chunk


def final(completion, prompt=8) -> dict:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


@pytest.mark.parametrize("events,o,phrase", [
    # a running usage that stops at 2 while the final count says 4: two tokens have no arrival time
    ([tok(usage=1), tok(usage=2), tok(), tok(), final(4)], 4, "its chunks carry 2 tokens by count (usage)"),
    # the count arrives with no token-carrying chunk at all
    ([{"choices": [{"index": 0, "text": ""}]}, final(4)], 4, "its chunks carry 0 tokens"),
    # nothing at all (an empty 200)
    ([], 4, "stopped (no finish reason) after 0 of 4 tokens"),
    # a chunk after the final count
    ([tok(), tok(), final(2), tok()], 2, "its chunks carry 3 tokens by count"),
    # a negative count
    ([tok(), tok(), final(-2)], 2, "usage.completion_tokens is '-2', not a count"),
    # more than asked for
    ([tok(), tok(), tok(), final(3)], 2, "returned 3 tokens, 2 asked for"),
    # another choice's tokens (n > 1 by extra_body) are not this request's
    ([{"choices": [{"index": 1, "text": " w"}]}, tok(), final(2)], 2, "its chunks carry 1 tokens"),
    # an error event whose message carries the key
    ([tok(), {"error": {"message": f"key {KEY} revoked"}}], 2, "request 0: key *** revoked"),
    # an error that is a bare string
    ([{"error": "x" * 5000}], 2, "request 0: xxx"),
])
def test_counts_that_cannot_be_trusted_are_refused(events, o, phrase):
    r = read("completions", events)
    with pytest.raises(ServedPointError) as exc:
        check_request(0, r, 8, o)
    assert phrase in str(exc.value) and KEY not in str(exc.value)
    assert len(str(exc.value)) < 600


def test_one_output_token_is_a_point():
    """O = 1: no decode step, no TPOT, one token placed; the row is complete."""
    from perfkit.workload import Point

    r = read("completions", [tok(finish="length", usage=1), final(1), "[DONE]"])
    check_request(0, r, 8, 1)
    assert r.itl_ms() == []
    point = Point(MODEL, 8, 1, 1)
    system = parse_params(params_dict(systems=[served()])).systems[0]
    m = measurement_of(system, point, 0.0, [BatchResult(0, [r])], [0.1], "token_ids", {"url": "http://a:b@h:1/v1"})
    row = m.row()
    assert row["status"] == "ok" and row["req_tpot_p50_ms"] is None and row["decode_step_ms_samples"] == [[]]
    assert row["server_url"] == "http://h:1/v1"  # the password never reaches the row


def test_error_text_is_one_line_bounded_and_masked():
    text = _bounded(f"line one\nline\ttwo {KEY} " + "y" * 1000, KEY)
    assert "\n" not in text and "\t" not in text and KEY not in text and "***" in text and len(text) == 300
    assert _message_of(b'{"detail": [{"loc": ["body"], "msg": "bad"}]}').startswith('[{"loc"')
    assert _message_of(b"\xff\xfe not utf-8").endswith("not utf-8")
    assert _message_of(json.dumps({"error": {"message": {"nested": 1}}}).encode()) == "{'nested': 1}"


def test_text_of_gives_up_on_a_tokenizer_that_does_not_round_trip():
    """A tokenizer whose decoded text never encodes back to the same count: a bounded search, then one
    line saying what to use instead."""
    from perfkit.serving.prompts import text_of

    class Lossy:
        """decode drops the last id; encode splits on spaces: every round is one token short."""

        def get_added_tokens_decoder(self):
            return {}

        def get_vocab_size(self):
            return 100

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"t{i}" for i in ids[:-1])

        def encode(self, text, add_special_tokens=False):
            class E:
                ids = [int(w[1:]) for w in text.split()]
            return E()

    t = time.perf_counter()
    with pytest.raises(UsageError, match="no text of exactly 5 tokens found with this tokenizer in 16 rounds"):
        text_of(Lossy(), [3, 4, 5, 6, 7, 8], 5)
    assert time.perf_counter() - t < 1.0

    class OnlySpecial(Lossy):
        def get_added_tokens_decoder(self):
            return {i: type("T", (), {"special": True})() for i in range(100)}

    with pytest.raises(UsageError, match="only special tokens"):
        text_of(OnlySpecial(), [1, 2], 2)


# ---- malformed answers, odd start-up answers, leaks and edge cases ------------------------------------

MALFORMED = {
    "choices-int": ("completions", stream({"choices": 5}), {}),
    "delta-str": ("chat", stream({"choices": [{"index": 0, "delta": "w1"}]}), {}),
    "content-list": ("chat", stream({"choices": [{"index": 0, "delta": {"content": ["w1"]}}]}), {}),
    "deep-json-line": ("completions", stream("[" * 5000), {}),
    "deep-json-error": ("completions", raw(b"[" * 9000, 500, "application/json"), {}),
}
# What a server says of itself is provenance, not the measurement: odd answers leave it unknown, no more.
ODD_DESCRIPTIONS = {
    "models-a-list": {"/v1/models": (200, "application/json", b"[1, 2]")},
    "models-data-ints": {"/v1/models": (200, "application/json", b'{"data": [1]}')},
    "version-deep": {"/version": (200, "application/json", b"[" * 5000)},
}


@pytest.mark.parametrize("name", MALFORMED)
def test_run_survives_malformed_answers(peer, word_tokenizer, name):
    api, answer, gets = MALFORMED[name]
    p = peer(answer, gets)
    r = run_point(p.url, "--api", api, "--tokenizer", word_tokenizer)
    refused_in_one_line(r, "the point was not measured")


@pytest.mark.parametrize("name", ODD_DESCRIPTIONS)
def test_odd_self_descriptions_leave_provenance_unknown(peer, name):
    r = run_point(peer(honest, ODD_DESCRIPTIONS[name]).url, "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    row = json.loads(r.stdout)
    assert row["status"] == "ok" and row["server_version"] is None


@pytest.mark.parametrize("ctype,blob", [
    ("text/html", b"<html><body>Welcome to nginx!</body></html>\n"),
    ("application/json", json.dumps({"choices": [{"index": 0, "text": " w1 w2 w3 w4"}],
                                     "usage": {"prompt_tokens": 8, "completion_tokens": 4}}).encode()),
])
def test_a_200_that_is_not_an_event_stream_says_so(peer, ctype, blob):
    line = refused_in_one_line(run_point(peer(raw(blob, ctype=ctype)).url))
    assert "ignore_eos" not in line and "event stream" in line


def test_a_compressing_server_is_read_or_not_asked_to_compress(peer):
    def answer(h, body):
        blob = _sse(_token_events(body))
        if "gzip" in h.headers.get("Accept-Encoding", ""):
            return _send(h, gzip.compress(blob), headers=[("Content-Encoding", "gzip")])
        _send(h, blob)

    r = run_point(peer(answer).url)
    assert r.returncode == 0, r.stderr


def test_a_null_error_field_is_not_an_error():
    r = read("completions", [{**tok(), "error": None}, {**tok(finish="length"), "error": None}, final(2)])
    check_request(0, r, 8, 2)


@pytest.mark.parametrize("events,i,o", [
    ([{**tok(finish="length"), "usage": {"prompt_tokens": True, "completion_tokens": True}}], 1, 1),
    ([tok(), tok(), {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": "3"}}], 8, 2),
])
def test_usage_counts_that_are_not_integers_are_refused(events, i, o):
    with pytest.raises(ServedPointError):
        check_request(0, read("completions", events), i, o)


@pytest.mark.parametrize("key", ["pk-AAAA1111-BBBB2222\r", "pk-AAAA1111\nBBBB2222", "pk-AAAA1111\tBBBB2222"])
def test_an_odd_key_is_never_shown(peer, monkeypatch, key):
    monkeypatch.setenv(KEY_ENV, key)
    r = run_point(peer(echo_key).url, "--api-key-env", KEY_ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "AAAA1111" not in r.stdout + r.stderr and "BBBB2222" not in r.stdout + r.stderr


def test_a_key_echoed_in_models_or_version_is_masked(tmp_path, peer, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    gets = {"/v1/models": (200, "application/json", json.dumps({"data": [{"id": f"for {KEY}"}]}).encode()),
            "/version": (200, "application/json", json.dumps({"version": f"1.0 {KEY}"}).encode())}
    r = run_point(peer(honest, gets).url, "--api-key-env", KEY_ENV, "--json", out=tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout + r.stderr + all_text_under(tmp_path / "out" / "points")


def test_a_key_in_a_launched_servers_log_stays_out_of_rows_and_output(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    py = shlex.quote(sys.executable)
    launch = f"{py} -c \"import os; print('starting with key', os.environ['{KEY_ENV}']); raise SystemExit(3)\""
    params = write_params(tmp_path, [{"label": "talky", "endpoint": {"launch": launch, "api_key_env": KEY_ENV}}])
    r = call_cli("sweep", params, "--out", tmp_path / "out", "--no-progress")
    assert r.returncode == 1
    assert KEY not in r.stdout + r.stderr + all_text_under(tmp_path / "out" / "points")


def test_a_refused_base_url_does_not_show_its_password():
    message = refused_params(params_dict(systems=[served(base_url="http://alice:hunter2@127.0.0.1:8000/v1?x=1")]))
    assert "hunter2" not in message


def test_a_base_url_with_credentials_works_or_is_refused_clearly(tmp_path, peer):
    p = peer(honest)
    r = run_point(f"http://alice:hunter2@127.0.0.1:{p.port}/v1", out=tmp_path / "out")
    assert "hunter2" not in r.stdout + r.stderr
    if r.returncode == 2:
        assert "password" in r.stderr or "credentials" in r.stderr, r.stderr
    else:
        assert r.returncode == 0 and "hunter2" not in all_text_under(tmp_path / "out")


@pytest.mark.parametrize("endpoint", [{"ready_path": "/ health"}, {"base_url": "http://exa mple:8000/v1"}])
def test_urls_http_client_refuses_are_one_line(tmp_path, peer, endpoint):
    p = peer(honest)
    params = write_params(tmp_path, [{"label": "odd", "endpoint": {"base_url": p.url, **endpoint}}])
    refused_in_one_line(call_cli("sweep", params, "--out", tmp_path / "out", "--no-progress"))


@pytest.mark.parametrize("launch", [f"{_PY} --port {{port.real}}", f"{_PY} {{model[x]}}", f"{_PY} {{model.__class__}}"])
def test_launch_placeholders_with_attributes_or_indexes_are_refused(tmp_path, launch):
    params = write_params(tmp_path, [{"label": "l", "endpoint": {"launch": launch}}])
    refused_in_one_line(call_cli("sweep", params, "--out", tmp_path / "out", "--no-progress"), "launch")


def test_an_env_value_with_a_nul_byte_is_refused_at_parse_time():
    refused_params(params_dict(systems=[{"label": "l", "endpoint": {"launch": "x {port}", "env": {"A": "a\x00b"}}}]))


@pytest.mark.parametrize("how", ["params", "flag"])
def test_deeply_nested_extra_body_is_refused(tmp_path, how):
    if how == "flag":
        r = run_point("http://127.0.0.1:9/v1", "--extra-body", "[" * 100_000)
    else:
        text = yaml.safe_dump(params_dict(systems=[served(extra_body={"x": 1})]), sort_keys=False)
        (tmp_path / "p.yaml").write_text(text.replace("x: 1", "x: " + "{a: " * 990 + "1" + "}" * 990))
        r = call_cli("sweep", tmp_path / "p.yaml", "--dry-run")
    refused_in_one_line(r, "extra-body" if how == "flag" else "extra_body")


def test_text_prompts_make_room_for_the_servers_bos(peer, word_tokenizer):
    p = peer(lambda h, body: honest(h, body, bos=1))
    r = run_point(p.url, "--prompt", "text", "--tokenizer", word_tokenizer, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "ok"
    assert len(p.requests[-1][1]["prompt"].split()) == 7  # 8 words and the BOS the server adds: 8 tokens


def test_text_of_maps_ids_beyond_the_tokenizers_vocabulary(tmp_path):
    from tokenizers import Tokenizer

    from perfkit.serving.prompts import text_of
    from perfkit.tiny_checkpoint import write_tokenizer

    write_tokenizer(str(tmp_path))  # 512 ids
    t = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = text_of(t, [10_000, 20_000, 70_000, 5, 6, 100_000, 7, 8] * 3, 8)
    assert len(t.encode(text, add_special_tokens=False).ids) == 8


def test_a_poisson_level_stops_at_its_duration_while_it_waits():
    from perfkit.serving.load import LoadLevel, run_load

    # seed 0's first gap at 0.2 req/s is ~9 s; the level may last 0.2 s
    level = LoadLevel("rate", 0.2, requests=1, duration_s=0.2)
    done = threading.Event()

    def go():
        run_load("http://127.0.0.1:9/v1/completions", {}, lambda i: {}, "completions", level, 1.0, seed=0)
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(1.5), "the level ran past its duration_s"


def test_shown_url_keeps_every_port():
    from perfkit.serving.endpoint import shown_url

    assert shown_url("http://u:p@127.0.0.1:0/v1") == "http://127.0.0.1:0/v1"
