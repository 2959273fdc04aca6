"""A served system's unit resource: its server started (or reached), checked ready and exact, then asked
for each point; stopped with its process group when the unit ends, whatever happened. See docs/endpoints.md.
"""

from __future__ import annotations

import os

from perfkit.errors import UsageError, one_line, shown
from perfkit.serving.endpoint import Endpoint, shown_url
from perfkit.workload import Point, System

SERVERS_DIR = "servers"  # below a results directory: one log per server perfkit started
PROBE_PROMPT_TOKENS = 8
PROBE_OUTPUT_TOKENS = 4


def require_client():
    """aiohttp and httpx-sse, or UsageError with the install line."""
    try:
        import aiohttp  # noqa: F401
        import httpx_sse  # noqa: F401
    except ImportError:
        from perfkit.serving.client import missing_client_hint

        raise UsageError(missing_client_hint()) from None


def api_key(endpoint: Endpoint) -> str | None:
    """The key from its environment variable, read when a request is made: never stored."""
    if endpoint.api_key_env is None:
        return None
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise UsageError(f"endpoint api_key_env {endpoint.api_key_env}: that environment variable is not set, "
                         "expected it to hold the server's API key")
    if not key.isprintable() or any(c.isspace() for c in key):  # the key itself is never shown
        raise UsageError(f"endpoint api_key_env {endpoint.api_key_env}: the key holds whitespace or a control "
                         "character (a line ending from an env file?), expected one printable token")
    return key


def headers_for(endpoint: Endpoint) -> dict:
    key = api_key(endpoint)
    return {"Authorization": f"Bearer {key}"} if key else {}


def preflight(system: System, model: str) -> None:
    """Before any work (UsageError, exit 2): the client is installed, the key is set, and the server answers
    (a running one) or its launch command exists (one perfkit starts)."""
    from perfkit.serving.server import check_launch, probe

    require_client()
    e = system.endpoint
    headers = headers_for(e)
    where = f"system {system.label!r}"
    if e.launch is not None:
        try:
            check_launch(e, model)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
        return
    from perfkit.serving.endpoint import root_of

    url = root_of(e.base_url) + e.ready_path
    status, body = probe(url, timeout_s=10.0, headers=headers)
    if status != 200:
        said = f"HTTP {status}" if status is not None else one_line(body, 200)
        raise UsageError(f"{where}: the server at {shown_url(url)} is not ready ({said}), expected a running "
                         "server that answers 200 there (or endpoint.launch, to have perfkit start it)")


def served_environment(system: System, client_env: dict) -> dict:
    """A served row's provenance: the device is the server's (as the user states it), the software is the
    engine's (recorded per row from the server); the client's torch and CUDA say nothing about it."""
    env = dict(client_env)
    for field in ("driver_version", "cuda_version", "cudnn_version", "torch_version", "transformers_version",
                  "gpu_index"):
        env[field] = None
    env["device"] = "served"
    env["device_name"] = system.endpoint.device_name or "unknown (served)"
    return env


class ServedEndpoint:
    """The Resource of a served system's unit (perfkit.sweep.units.Resource)."""

    what = "starting the server"

    def __init__(self, system: System, model: str, seed: int, out_dir: str | None):
        self.system, self.model, self.seed, self.out_dir = system, model, seed, out_dir
        self.endpoint: Endpoint = system.endpoint
        self.server = None
        self.tokenizer = None
        self.overhead = 0  # prompt tokens the server adds to a text prompt (a BOS, a chat template)
        self.continuous_usage = True
        self.info: dict = {}
        if self.endpoint.launch is None:
            self.what = "reaching the server"

    # ---- acquire ----
    def acquire(self) -> None:
        from perfkit.serving.server import Server

        require_client()
        log_dir = os.path.join(self.out_dir, SERVERS_DIR) if self.out_dir else None
        self.secret = api_key(self.endpoint)  # read once: masked in whatever of the server's words is kept
        self.headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        self.server = Server(self.endpoint, self.model, log_dir, self.system.label, self.secret)
        self.server.start()
        self.info = self.server.describe(self.headers)
        if self.server.log_path:
            self.info["log"] = os.path.relpath(self.server.log_path, self.out_dir)
        if self.endpoint.prompt_mode() == "text":
            self._load_tokenizer()
        self._check_exact()

    def _load_tokenizer(self) -> None:
        from tokenizers import Tokenizer

        folder = self.endpoint.tokenizer or self.model
        path = os.path.join(folder, "tokenizer.json")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception types
            raise UsageError(f"tokenizer {shown(path)} cannot be read ({one_line(exc, 200)}): expected a "
                             "tokenizers tokenizer.json") from None

    def _url(self) -> str:
        return self.server.base_url.rstrip("/") + ("/chat/completions" if self.endpoint.api == "chat"
                                                   else "/completions")

    def _bodies(self, prompts: list, output_len: int) -> list[dict]:
        from perfkit.serving.point import completion_body

        return [completion_body(self.endpoint, self.model, p, output_len, self.continuous_usage) for p in prompts]

    def _ask(self, prompts: list, output_len: int, warmup: int = 0, repeats: int = 1):
        from perfkit.serving.client import run_batches

        e = self.endpoint
        return run_batches(self._url(), self.headers, self._bodies(prompts, output_len), e.api, warmup, repeats,
                           e.request_timeout_s, self.secret)

    def _check_exact(self) -> None:
        """One request before any timed one: does the server take running usage stats, how many prompt
        tokens does it add to a text prompt, and does it answer with exactly the tokens asked for? A server
        that cannot be made exact fails here, with the reason, before any point is measured."""
        from perfkit.serving.point import ServedPointError, check_request

        ids = self._token_ids(Point(self.model, PROBE_PROMPT_TOKENS, PROBE_OUTPUT_TOKENS, 1), self.seed)
        prompt = self._prompts(ids, PROBE_PROMPT_TOKENS, probing=True)
        _, batches, _ = self._ask(prompt, PROBE_OUTPUT_TOKENS)
        r = batches[0].records[0]
        if r.error and r.http_status in (400, 422):
            # a server whose schema refuses the running-usage option: ask again without it, one token a chunk
            self.continuous_usage = False
            _, batches, _ = self._ask(prompt, PROBE_OUTPUT_TOKENS)
            r = batches[0].records[0]
        if r.error:
            hint = ""
            if r.http_status in (400, 422) and self.endpoint.prompt_mode() == "token_ids":
                hint = " (a server that takes no token-id prompts needs endpoint prompt: text)"
            raise ServedPointError(f"the first request failed: {r.error}{hint}")
        expected = PROBE_PROMPT_TOKENS
        if r.prompt_tokens is not None and self.endpoint.prompt_mode() == "text":
            # what the server adds to a text prompt (a BOS, a chat template): later prompts are that much shorter
            self.overhead = r.prompt_tokens - PROBE_PROMPT_TOKENS
            if self.overhead < 0:
                raise ServedPointError(f"the server counted {r.prompt_tokens} prompt tokens for a text of "
                                       f"{PROBE_PROMPT_TOKENS}: expected at least as many (is its tokenizer the "
                                       "endpoint's tokenizer?)")
            expected += self.overhead
        try:
            check_request(0, r, expected, PROBE_OUTPUT_TOKENS)
        except ServedPointError as exc:
            raise ServedPointError(f"exactness check before the first timed request: {exc}") from None

    # ---- measure ----
    def _token_ids(self, point: Point, seed: int) -> list[list[int]]:
        """The in-process backends' seeded prompt ids (perfkit.measure.synthetic_prompt), bit for bit."""
        from perfkit.measure import synthetic_prompt
        from perfkit.models import resolve_model

        spec = resolve_model(point.model)
        vocab = getattr(spec, "vocab", None) or spec.vocab_size
        return synthetic_prompt(point.batch, point.input_len, vocab, seed).tolist()

    def _prompts(self, ids: list[list[int]], input_len: int, probing: bool = False) -> list:
        if self.endpoint.prompt_mode() == "token_ids":
            return ids
        content_len = input_len - (0 if probing else self.overhead)
        if content_len < 1:
            raise UsageError(f"input_len {input_len} is shorter than the {self.overhead} prompt tokens this server "
                             "adds to every text prompt, expected a longer input")
        from perfkit.serving.prompts import text_of

        return [text_of(self.tokenizer, row, content_len) for row in ids]

    def measure(self, system: System, point: Point, warmup: int, repeats: int, seed: int):
        from perfkit.serving.point import measurement_of

        self.server.check_alive()
        prompts = self._prompts(self._token_ids(point, seed), point.input_len)
        warmup_s, batches, lags = self._ask(prompts, point.output_len, warmup, repeats)
        try:
            return measurement_of(system, point, warmup_s, batches, lags, self.endpoint.prompt_mode(), self.info)
        except Exception:
            self.server.check_alive()  # a server that died mid-point says so, rather than "connection refused"
            raise

    def open_point(self, system: System, point: Point, warmup: int, seed: int) -> ServedPointSession:
        """The point opened for an interleaved sweep (perfkit.sweep.interleave): warmed up, then timed one
        batch at a time."""
        return ServedPointSession(self, system, point, warmup, seed)

    def measure_load(self, spec, output_len: int, level, seed: int) -> dict:
        """One steady-load level (perfkit.serving.load) at (spec's model and input length, output_len): the
        same seeded prompts as a point (one per request, cycling through a batch of the level's size)."""
        from perfkit.serving.load import load_row, run_load

        self.server.check_alive()
        e = self.endpoint
        distinct = min(level.warmup_requests + level.requests, 256)
        prompts = self._prompts(self._token_ids(Point(spec.model, spec.input_len, output_len, distinct), seed),
                                spec.input_len)
        bodies = self._bodies(prompts, output_len)
        run = run_load(self._url(), self.headers, lambda i: bodies[i % len(bodies)], e.api, level,
                       e.request_timeout_s, seed, self.secret)
        try:
            return load_row(spec.system, spec.model, spec.input_len, output_len, run, self.info)
        except Exception:
            self.server.check_alive()
            raise

    def recover(self) -> None:
        pass

    def release(self) -> None:
        if self.server is not None:
            self.server.stop()


class ServedPointSession:
    """One point on a served system, timed one batch of B requests at a time (perfkit.measure.PointSession's
    served twin). Each timed batch is preceded by an untimed one in the same client: a new client opens its
    connections during its first batch, and a timed batch must not pay for that."""

    def __init__(self, resource: ServedEndpoint, system: System, point: Point, warmup: int, seed: int):
        resource.server.check_alive()
        self.resource, self.system, self.point = resource, system, point
        self.prompts = resource._prompts(resource._token_ids(point, seed), point.input_len)
        self.warmup_s, _, _ = resource._ask(self.prompts, point.output_len, warmup, 0)
        self.batches, self.lags_ms = [], []

    def repeat(self) -> None:
        _, batches, lags = self.resource._ask(self.prompts, self.point.output_len, 1, 1)
        self.batches.extend(batches)
        self.lags_ms.extend(lags)

    def finish(self):
        from perfkit.serving.point import measurement_of

        r = self.resource
        try:
            return measurement_of(self.system, self.point, self.warmup_s, self.batches, self.lags_ms,
                                  r.endpoint.prompt_mode(), r.info)
        except Exception:
            r.server.check_alive()  # a server that died mid-point says so, rather than "connection refused"
            raise
