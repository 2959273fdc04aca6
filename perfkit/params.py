"""Sweep definitions: `params/*.yaml`, validated in full before any model is built.

Every problem is one `UsageError("<file>: <key>: <what is wrong>, expected <what>")`, and messages show
values only through errors.shown, so a hostile file (an alias bomb, a megabyte string) is refused at once
in a short line. Whether a CUDA device is present is checked when a sweep starts, not here, so a GPU study
can be planned (`--dry-run`) on a CPU machine. The keys and their bounds (MAX_* below): docs/sweeps.md.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os

import yaml

from perfkit.errors import UnreadableFile, UsageError, did_you_mean, read_regular, shown
from perfkit.registry import REGISTRY, check_model_name
from perfkit.workload import (
    ATTN_IMPLEMENTATIONS,
    BACKEND_NAMES,
    DTYPE_ALIASES,
    DTYPE_NAMES,
    SEED_MAX,
    System,
    canonical_dtype,
)

TOP_KEYS = ("name", "models", "systems", "grid", "warmup", "repeats", "seed", "search", "derive_output_lens",
            "beyond_context", "max_minutes", "max_points", "slos", "loads", "interleave")
LOAD_KEYS = ("users", "rates", "requests", "warmup_requests", "duration_s")
MAX_REQUESTS = 1_000_000  # of one load level
MAX_RATE = 100_000.0  # requests per second
REQUIRED_TOP = ("models", "systems", "grid")
SYSTEM_KEYS = ("label", "backend", "dtype", "device", "attn_implementation", "endpoint", "env")
ENDPOINT_KEYS = ("api", "base_url", "served_model", "tokenizer", "prompt", "extra_body", "api_key_env", "launch",
                 "env", "ready_path", "ready_timeout_s", "request_timeout_s", "device_name")
# Request fields a system's extra_body may not set: they are the point's definition (perfkit sets them).
DEFINING_FIELDS = ("model", "prompt", "messages", "max_tokens", "max_completion_tokens", "stream", "n")
MAX_EXTRA_BODY_BYTES = 4096
MAX_TIMEOUT_S = 24 * 3600.0
# How many requests a served point may send at once, or a load level keep in flight: like batch sizes, a
# typo (batch_sizes: [1000000] on a server) must not open a million connections.
MAX_CONCURRENCY = 4096
GRID_KEYS = ("input_lens", "output_lens", "batch_sizes")
SEARCH_KEYS = ("min_gain", "patience")

# Bounds of a params file. Every value a file gives is checked against one of these before anything uses it:
# a typo (repeats: 30000) or a hostile file is refused in one line instead of running for days or exhausting
# memory. Each lies far beyond any sensible sweep (the study: 3 models, 4 x 3 lengths, 9 batches, 324 points).
MAX_WARMUP = 100
MAX_REPEATS = 1000
MAX_PATIENCE = 100
MAX_BATCH = 1 << 20  # 1,048,576 sequences
MAX_LENGTH = 1 << 31  # tokens of an input or output length (each is also checked against the model's context)
MAX_LIST = 1000  # entries of any list: models, systems, input_lens, output_lens, batch_sizes
MAX_NAME = 100  # characters of a name or a system label (they name directories and report files)
DEFAULT_MAX_POINTS = 5000  # a larger grid needs `max_points:` or `perfkit sweep --yes`
# The most points any grid may have, --yes or not. A study is a few hundred points and a fleet sweep a few
# thousand; at this bound a dry run still enumerates every point in seconds, and a larger grid is several
# params files (or one --system at a time).
MAX_POINTS = 100_000
MAX_FILE_BYTES = 1 << 20  # a params file is a few hundred bytes; one of a megabyte is not one


@dataclasses.dataclass(frozen=True)
class SweepParams:
    name: str
    models: tuple[str, ...]
    systems: tuple[System, ...]
    input_lens: tuple[int, ...]
    output_lens: tuple[int, ...]
    batch_sizes: tuple[int, ...]  # ascending: the order of the max-throughput search
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    min_gain: float | None = 0.03  # None: the search never stops on a plateau (only OOM or grid end)
    patience: int = 1  # batches in a row without min_gain that make a plateau
    derive_output_lens: bool = False
    beyond_context: str = "error"
    max_minutes: float | None = None
    max_points: int | None = None  # the largest grid the file allows (None: DEFAULT_MAX_POINTS)
    slos: tuple | None = None  # latency bounds (perfkit.slo.SLO) the tables use; None: perfkit.slo.DEFAULT_SLOS
    loads: tuple = ()  # steady-load levels (perfkit.serving.load.LoadLevel) for every served system
    # the systems' repeats of each point alternate (A B B A ...), each system in its own process
    # (perfkit.sweep.interleave); False: one system's whole grid after another's
    interleave: bool = False
    source: str | None = None  # the file it came from

    def system(self, label: str) -> System:
        for s in self.systems:
            if s.label == label:
                return s
        raise UsageError(f"{self.source or 'params'}: systems: no system labelled {shown(label)}, "
                         f"expected one of {_some(s.label for s in self.systems)}")

    def output_lens_for(self, model: str, input_len: int) -> tuple[int, ...]:
        """The output lengths that fit `model`'s context after `input_len` (all of them unless skipping)."""
        ctx = _context_length(model)
        return tuple(o for o in self.output_lens if input_len + o <= ctx)

    def point_count(self, systems=None) -> int:
        """How many points the grid has for `systems` (default: all of the file's), after the beyond_context
        rule: counted, never enumerated, so it answers at once for any grid."""
        per_system = 0
        for model in self.models:
            ctx = _context_length(model)
            for input_len in self.input_lens:  # output_lens ascend: those that fit are a prefix
                per_system += bisect.bisect_right(self.output_lens, ctx - input_len)
        return len(self.systems if systems is None else systems) * per_system * len(self.batch_sizes)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["systems"] = [dataclasses.asdict(s) for s in self.systems]
        return d


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, what: str, expected: str):
        raise UsageError(f"{self.source}: {key}: {what}, expected {expected}")

    def mapping(self, value, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(key or "(top level)", f"is a {type(value).__name__}", f"a mapping with keys {', '.join(allowed)}")
        for k in value:
            if k not in allowed:
                self.fail(f"{key}.{_key(k)}" if key else _key(k), f"unknown key{did_you_mean(k, allowed)}",
                          f"one of {', '.join(allowed)}")
        for k in required:
            if k not in value:
                self.fail(f"{key}.{k}" if key else k, "missing", "a value")
        return value

    def int_(self, value, key: str, minimum: int, maximum: int | None = None) -> int:
        bounds = f"an integer from {minimum:,} to {maximum:,}" if maximum is not None else f"an integer >= {minimum}"
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"{shown(value)} is not an integer", bounds)
        if value < minimum:
            self.fail(key, f"{shown(value)} is too small", bounds)
        if maximum is not None and value > maximum:
            self.fail(key, f"{shown(value)} is too large", bounds)
        return value

    def list_(self, value, key: str, what: str) -> list:
        """A non-empty list of at most MAX_LIST entries (checked before any entry is looked at)."""
        if not isinstance(value, list) or not value:
            self.fail(key, "is empty" if value is None or value == [] else f"{shown(value)} is not a list",
                      f"a non-empty list of {what}")
        if len(value) > MAX_LIST:
            self.fail(key, f"has {len(value):,} entries", f"at most {MAX_LIST:,} {what}")
        return value

    def positive_ints(self, value, key: str, maximum: int) -> tuple[int, ...]:
        self.list_(value, key, "positive integers")
        out = [self.int_(v, f"{key}[{i}]", 1, maximum) for i, v in enumerate(value)]
        if len(set(out)) != len(out):
            again = next(v for i, v in enumerate(out) if v in out[:i])
            self.fail(key, f"repeats the value {again}", "distinct positive integers")
        return tuple(sorted(out))

    def number(self, value, key: str, expected: str) -> float:
        """A finite int or float (never a bool, .nan or .inf)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            self.fail(key, f"{shown(value)} is not a finite number", expected)
        return value

    def str_(self, value, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"{shown(value)} is not a non-empty string", "a string")
        return value

    def name(self, value, key: str, what: str) -> str:
        """A short printable name (a params name or a system label: they name directories and files)."""
        self.str_(value, key)
        if len(value) > MAX_NAME or not value.isprintable():
            self.fail(key, f"{shown(value)} is {'too long' if len(value) > MAX_NAME else 'not printable'}",
                      f"{what} of at most {MAX_NAME} printable characters")
        return value

    def choice(self, value, key: str, choices) -> str:
        self.str_(value, key)
        if value not in choices:
            self.fail(key, f"unknown value {shown(value)}", f"one of {', '.join(choices)}")
        return value


def _key(k) -> str:
    """A mapping key as a message shows it: plain when it is a short name, else bounded."""
    return k if isinstance(k, str) and k.isidentifier() and len(k) <= 40 else shown(k)


def _some(names, limit: int = 8) -> str:
    """The first few of many names, for a message."""
    names = list(names)
    head = ", ".join(shown(n) if len(str(n)) > 40 else str(n) for n in names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_model(model: str) -> None:
    """A registry name is checked here without torch; a checkpoint directory is checked in full (config
    and safetensors headers), which needs transformers."""
    check_model_name(model)
    if model not in REGISTRY:
        from perfkit.models import resolve_model

        resolve_model(model)


def _context_length(model: str) -> int:
    if model in REGISTRY:
        return REGISTRY[model].context
    from perfkit.models import context_length

    return context_length(model)


def _loads(c: _Checker, value, served: bool) -> tuple:
    """`loads:` {users: [N...], rates: [R...], requests, warmup_requests, duration_s}: the levels every served
    system runs at each (model, input_len, output_len) of the grid."""
    if value is None:
        return ()
    from perfkit.serving.load import LoadLevel

    d = c.mapping(value, "loads", LOAD_KEYS, required=("requests",))
    if not served:
        c.fail("loads", "given, but no system is served", "loads only with a system that has an endpoint")
    if "users" not in d and "rates" not in d:
        c.fail("loads", "has neither users nor rates", "users: [N, ...] and/or rates: [requests per second, ...]")
    requests = c.int_(d["requests"], "loads.requests", 1, MAX_REQUESTS)
    warmup = c.int_(d.get("warmup_requests", 0), "loads.warmup_requests", 0, MAX_REQUESTS)
    duration = d.get("duration_s")
    if duration is not None:
        if not 0 < c.number(duration, "loads.duration_s", "seconds > 0") <= MAX_TIMEOUT_S:
            c.fail("loads.duration_s", f"{shown(duration)} is out of range", f"seconds > 0, at most {MAX_TIMEOUT_S:g}")
        duration = float(duration)
    levels = []
    if "users" in d:
        for n in c.positive_ints(d["users"], "loads.users", MAX_CONCURRENCY):
            levels.append(LoadLevel("users", float(n), requests, warmup, duration))
    if "rates" in d:
        rates = c.list_(d["rates"], "loads.rates", "requests per second")
        for i, r in enumerate(rates):
            if not 0 < c.number(r, f"loads.rates[{i}]", "requests per second > 0") <= MAX_RATE:
                c.fail(f"loads.rates[{i}]", f"{shown(r)} is out of range", f"requests per second > 0, at most "
                       f"{MAX_RATE:g}")
        if len(set(rates)) != len(rates):
            c.fail("loads.rates", "repeats a value", "distinct rates")
        levels.extend(LoadLevel("rate", float(r), requests, warmup, duration) for r in sorted(rates))
    return tuple(levels)


def _slos(value, source: str):
    """`slos:` as a list of {name, ttft_ms, tpot_ms}; absent or null: the defaults (perfkit.slo)."""
    if value is None:
        return None
    from perfkit.slo import parse_slo_params, slo_entries

    # Shape and size first, each value shown bounded (an alias bomb here must not reach a repr): the
    # rules of an SLO itself are perfkit.slo's.
    c = _Checker(source)
    for at, item in slo_entries(value, source, "slos", MAX_LIST):
        for k, v in item.items():
            plain = (isinstance(v, str) and len(v) <= MAX_NAME) or (
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 2**63)
            if not plain:
                c.fail(f"{at}.{_key(k)}", f"{shown(v)} is not a short name or a number",
                       "a name, or a finite number of milliseconds > 0")
    return parse_slo_params(value, source, "slos")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int, first: int):
        super().__init__(f"key {shown(key)} given twice")
        self.key, self.line, self.first = key, line, first


class StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """yaml's SafeLoader (libyaml's where available: it refuses nesting past 1000 levels instead of
    recursing) that refuses a key given twice in one mapping, where plain YAML lets the last one win
    silently. Merge keys (`<<: *base`) may still be overridden: only the keys written out are compared."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str, what: str = "a params YAML file", shape: str = "a YAML mapping"):
    """A YAML file, read safely: UsageError (one line) for a missing, oversized, non-regular (a FIFO, a link
    to /dev/zero: errors.read_regular) or invalid file, and for a key given twice. For every reader of
    params files and of comparisons.yaml; `shape` is what the file's YAML should be."""
    try:
        blob = read_regular(path, what, MAX_FILE_BYTES)
    except UnreadableFile as exc:
        raise UsageError(f"{path}: {exc}") from None
    try:
        return yaml.load(blob.decode("utf-8"), Loader=StrictLoader)  # a SafeLoader
    except _DuplicateKey as exc:
        raise UsageError(f"{path}: {_key(exc.key)}: given twice in one mapping (lines {exc.first} and {exc.line}), "
                         "expected each key once") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())[:120]
        raise UsageError(f"{path}: not valid YAML{line} ({problem}), expected {shape}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: is not UTF-8 text (byte {exc.start}), expected {what}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # an integer of 5,000 digits, a bad date
        raise UsageError(f"{path}: a value cannot be read ({type(exc).__name__}: {str(exc)[:80]}), "
                         f"expected {what}") from None



def _endpoint(c: _Checker, value, key: str):
    """A served system's endpoint: how requests are made, and where the server is (base_url) or how to
    start it (launch). Checked in full here; whether it answers is checked when a sweep starts."""
    from perfkit.serving.endpoint import APIS, PROMPT_MODES, Endpoint, check_base_url

    d = c.mapping(value, key, ENDPOINT_KEYS)
    api = c.choice(d.get("api", "completions"), f"{key}.api", APIS)
    base_url, launch = d.get("base_url"), d.get("launch")
    if (base_url is None) == (launch is None):
        c.fail(key, "sets both base_url and launch" if base_url is not None else "sets neither base_url nor launch",
               "base_url (a running server) or launch (a command perfkit runs), one of them")
    if base_url is not None:
        c.str_(base_url, f"{key}.base_url")
        if len(base_url) > 2000 or not base_url.isprintable():
            c.fail(f"{key}.base_url", "is too long or not printable", "a URL of at most 2,000 characters")
        why = check_base_url(base_url)
        if why:
            try:
                from perfkit.serving.endpoint import shown_url

                as_shown = shown(shown_url(base_url))  # never a password, even in the refusal
            except ValueError:
                as_shown = "the URL"
            c.fail(f"{key}.base_url", f"{as_shown} {why}", "a URL such as http://127.0.0.1:8000/v1")
    if launch is not None:
        c.str_(launch, f"{key}.launch")
        if len(launch) > 4000 or not launch.isprintable():
            c.fail(f"{key}.launch", "is too long or not printable", "a one-line command of at most 4,000 characters")
        _check_placeholders(c, launch, f"{key}.launch")
    served_model = d.get("served_model")
    if served_model is not None:
        c.str_(served_model, f"{key}.served_model")
        if len(served_model) > 1000 or not served_model.isprintable():
            c.fail(f"{key}.served_model", "is too long or not printable", "a model name of at most 1,000 characters")
    tokenizer = d.get("tokenizer")
    if tokenizer is not None:
        c.str_(tokenizer, f"{key}.tokenizer")
        if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
            c.fail(f"{key}.tokenizer", f"{shown(tokenizer)} has no tokenizer.json", "a local tokenizer folder")
    prompt = c.choice(d.get("prompt", "auto"), f"{key}.prompt", PROMPT_MODES)
    if prompt == "token_ids" and api == "chat":
        c.fail(f"{key}.prompt", "token_ids with api chat", "text (the chat API takes messages), or api completions")
    extra = d.get("extra_body", {}) or {}
    if not isinstance(extra, dict):
        c.fail(f"{key}.extra_body", f"{shown(extra)} is not a mapping", "request fields such as {ignore_eos: true}")
    for k in extra:
        if not isinstance(k, str):
            c.fail(f"{key}.extra_body", f"key {shown(k)} is not a string", "request field names")
        if k in DEFINING_FIELDS:
            c.fail(f"{key}.extra_body.{_key(k)}", "is set by perfkit (it defines the point)",
                   f"engine-specific fields only, not {', '.join(DEFINING_FIELDS)}")
    try:
        import json

        extra_body = json.dumps(extra, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        c.fail(f"{key}.extra_body", f"cannot be sent as JSON ({str(exc)[:80]})", "JSON values")
    if len(extra_body) > MAX_EXTRA_BODY_BYTES:
        c.fail(f"{key}.extra_body", f"is {len(extra_body):,} bytes as JSON", f"at most {MAX_EXTRA_BODY_BYTES:,}")
    api_key_env = d.get("api_key_env")
    if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env.isidentifier()):
        c.fail(f"{key}.api_key_env", f"{shown(api_key_env)} is not a variable name",
               "the NAME of an environment variable that holds the key (never the key itself)")
    env = d.get("env", {}) or {}
    pairs = _env_pairs(c, env, f"{key}.env", "the server's environment")
    if env and launch is None:
        c.fail(f"{key}.env", "is set without launch", "env only for a server perfkit starts")
    ready_path = d.get("ready_path", "/health")
    c.str_(ready_path, f"{key}.ready_path")
    if (not ready_path.startswith("/") or len(ready_path) > MAX_NAME or not ready_path.isprintable()
            or any(ch.isspace() for ch in ready_path)):
        c.fail(f"{key}.ready_path", f"{shown(ready_path)} is not a path", "a path such as /health")
    timeouts = {}
    for name, default in (("ready_timeout_s", 300.0), ("request_timeout_s", 600.0)):
        v = d.get(name, default)
        c.number(v, f"{key}.{name}", f"seconds > 0, at most {MAX_TIMEOUT_S:g}")
        if not 0 < v <= MAX_TIMEOUT_S:
            c.fail(f"{key}.{name}", f"{shown(v)} is out of range", f"seconds > 0, at most {MAX_TIMEOUT_S:g}")
        timeouts[name] = float(v)
    device_name = d.get("device_name")
    if device_name is not None:
        c.name(device_name, f"{key}.device_name", "the server's device name")
    return Endpoint(api=api, base_url=base_url, served_model=served_model, tokenizer=tokenizer, prompt=prompt,
                    extra_body=extra_body, api_key_env=api_key_env, launch=launch, launch_env=tuple(sorted(pairs)),
                    ready_path=ready_path, device_name=device_name, **timeouts)


LAUNCH_FIELDS = ("port", "model", "served_model")


def _check_placeholders(c: _Checker, launch: str, key: str) -> None:
    """A launch command's {fields}: only {port}, {model} and {served_model}, plain (no attribute, index,
    conversion or format spec: str.format would reach into the values' attributes)."""
    import string

    try:
        fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(launch) if f is not None]
    except ValueError as exc:
        c.fail(key, f"cannot be read as a template ({exc})", "a command with {port}, {model} or {served_model}; "
               "{{ and }} for literal braces")
    for field, conversion, spec in fields:
        if field not in LAUNCH_FIELDS or conversion or spec:
            written = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            c.fail(key, f"placeholder {{{shown(written)[1:-1]}}} is not one perfkit fills in",
                   "only {port}, {model} and {served_model} ({{ and }} for literal braces)")


def _env_pairs(c: _Checker, value, key: str, what: str) -> tuple:
    """An environment mapping {NAME: value} as sorted (NAME, str(value)) pairs."""
    if not isinstance(value, dict) or len(value) > MAX_LIST:
        c.fail(key, f"{shown(value)} is not a mapping", f"NAME: value pairs for {what}")
    pairs = []
    for k, v in value.items():
        if not isinstance(k, str) or not k.isidentifier():
            c.fail(key, f"{shown(k)} is not a variable name", "NAME: value pairs")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            c.fail(f"{key}.{_key(k)}", f"{shown(v)} is not a string or number", "a value")
        if "\0" in str(v) or len(str(v)) > 4096:
            c.fail(f"{key}.{_key(k)}", "holds a NUL byte or is too long", "a value an environment can hold")
        pairs.append((k, str(v)))
    return tuple(sorted(pairs))


def _served_system(c: _Checker, d: dict, key: str, label: str) -> System:
    from perfkit.serving.endpoint import SERVED_ATTN, SERVED_BACKEND, SERVED_DEVICE

    if "env" in d:
        c.fail(f"{key}.env", "is set for a served system", "endpoint.env (with endpoint.launch) for the server's "
               "environment")
    for k in ("device", "attn_implementation"):
        if k in d:
            c.fail(f"{key}.{k}", "is set for a served system", "no device or attn_implementation: the server has its "
                   "own (state its hardware as endpoint.device_name)")
    if d.get("backend", SERVED_BACKEND) != SERVED_BACKEND:
        c.fail(f"{key}.backend", f"{shown(d['backend'])} with an endpoint", f"{SERVED_BACKEND} (or no backend)")
    dtype = c.choice(d.get("dtype", "float32"), f"{key}.dtype", DTYPE_NAMES + tuple(DTYPE_ALIASES))
    endpoint = _endpoint(c, d["endpoint"], f"{key}.endpoint")
    return System(label, SERVED_BACKEND, canonical_dtype(dtype), SERVED_DEVICE, SERVED_ATTN, endpoint)


def served_system(spec: dict, source: str) -> System:
    """A served system from a mapping as a params file gives it ({label, dtype, endpoint}): `perfkit run`'s."""
    c = _Checker(source)
    d = c.mapping(spec, "", SYSTEM_KEYS, required=("label", "endpoint"))
    return _served_system(c, d, "system", c.name(d["label"], "label", "a label"))


def _system(c: _Checker, value, key: str) -> System:
    d = c.mapping(value, key, SYSTEM_KEYS, required=("label",))
    label = c.name(d["label"], f"{key}.label", "a label")
    if "endpoint" in d:
        return _served_system(c, d, key, label)
    backend = c.choice(d.get("backend", "hf-loop"), f"{key}.backend", BACKEND_NAMES)
    dtype = c.choice(d.get("dtype", "float32"), f"{key}.dtype", DTYPE_NAMES + tuple(DTYPE_ALIASES))
    device = c.str_(d.get("device", "cpu"), f"{key}.device")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        c.fail(f"{key}.device", f"unknown device {shown(device)}", "cpu or cuda[:N]")
    attn = c.choice(d.get("attn_implementation", "sdpa"), f"{key}.attn_implementation", ATTN_IMPLEMENTATIONS)
    env = _env_pairs(c, d.get("env") or {}, f"{key}.env", "the system's own process (set before torch loads)")
    return System(label, backend, canonical_dtype(dtype), device, attn, env=env)


def parse_params(data, source: str = "params", yes: bool = False) -> SweepParams:
    """Validate a params mapping (as read from YAML). Raises UsageError naming `source` and the key.

    Every check looks at a value's type and size before formatting or walking it, and a message shows a
    value only through errors.shown: a YAML alias bomb (nine levels of lists of nine) is refused in
    microseconds with a short message. `yes`: allow a grid beyond max_points (up to MAX_POINTS)."""
    c = _Checker(source)
    if data is None:
        c.fail("(top level)", "the file is empty", "a mapping with keys " + ", ".join(REQUIRED_TOP))
    d = c.mapping(data, "", TOP_KEYS, required=REQUIRED_TOP)

    stem = os.path.splitext(os.path.basename(source))[0] or "sweep"
    name = c.name(d.get("name", stem), "name", "a plain name")
    if os.sep in name or name.startswith("."):
        c.fail("name", f"{shown(name)} is not a plain name", "a name without slashes (it names results/<name>)")

    models_value = c.list_(d["models"], "models", "registry names or checkpoint directories")
    models = []
    for i, m in enumerate(models_value):
        c.str_(m, f"models[{i}]")
        try:
            _check_model(m)
        except UsageError as exc:
            what, sep, expected = str(exc).rpartition(": expected ")
            c.fail(f"models[{i}]", what if sep else str(exc),
                   expected if sep else "a registry name or a checkpoint directory")
        if m in models:
            c.fail(f"models[{i}]", f"{shown(m)} is listed twice", "each model once")
        models.append(m)

    systems_value = c.list_(d["systems"], "systems", "{label, backend, dtype, device, attn_implementation}")
    systems = [_system(c, s, f"systems[{i}]") for i, s in enumerate(systems_value)]
    labels = [s.label for s in systems]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            c.fail(f"systems[{i}].label", f"{shown(label)} is used twice", "a distinct label per system")

    grid = c.mapping(d["grid"], "grid", GRID_KEYS, required=GRID_KEYS)
    input_lens = c.positive_ints(grid["input_lens"], "grid.input_lens", MAX_LENGTH)
    output_lens = c.positive_ints(grid["output_lens"], "grid.output_lens", MAX_LENGTH)
    batch_sizes = c.positive_ints(grid["batch_sizes"], "grid.batch_sizes", MAX_BATCH)

    warmup = c.int_(d.get("warmup", 1), "warmup", 0, MAX_WARMUP)
    repeats = c.int_(d.get("repeats", 3), "repeats", 1, MAX_REPEATS)
    seed = c.int_(d.get("seed", 0), "seed", 0)
    if seed > SEED_MAX:
        c.fail("seed", "is too large", "an integer from 0 to 2**63 - 1")

    search = c.mapping(d.get("search", {}) or {}, "search", SEARCH_KEYS)
    min_gain = search.get("min_gain", 0.03)
    if min_gain is not None:
        expected = "a fraction such as 0.03 (3%), or null to stop only on OOM or at the grid's end"
        if not 0 <= c.number(min_gain, "search.min_gain", expected) < 1:
            c.fail("search.min_gain", f"{shown(min_gain)} is not a fraction in [0, 1)", expected)
        min_gain = float(min_gain)
    patience = c.int_(search.get("patience", 1), "search.patience", 1, MAX_PATIENCE)

    derive = d.get("derive_output_lens", False)
    if not isinstance(derive, bool):
        c.fail("derive_output_lens", f"{shown(derive)} is not a boolean", "true or false")
    interleave = d.get("interleave", False)
    if not isinstance(interleave, bool):
        c.fail("interleave", f"{shown(interleave)} is not a boolean", "true or false")
    for i, system in enumerate(systems):
        # The static backend sizes its cache (and so every attention over it) for I + O: a 1024-token run's
        # first 128 steps are not the work of a 128-token run, so shorter outputs cannot be read off it.
        if derive and system.backend == "static" and len(output_lens) > 1:
            c.fail("derive_output_lens", f"true, but systems[{i}] ({system.label!r}) uses the static backend, "
                   "whose cache is sized for each output length", "false for a sweep with static systems")
        # A server decides its own scheduling and stops each request at its max_tokens: a shorter answer is
        # another request, not a prefix of a longer one.
        if derive and system.served and len(output_lens) > 1:
            c.fail("derive_output_lens", f"true, but systems[{i}] ({system.label!r}) is served",
                   "false for a sweep with served systems (each output length is its own request)")
        if system.served and batch_sizes[-1] > MAX_CONCURRENCY:
            c.fail("grid.batch_sizes", f"{batch_sizes[-1]:,} concurrent requests for served system {system.label!r}",
                   f"at most {MAX_CONCURRENCY:,} requests at once")
        if system.served and system.endpoint.prompt_mode() == "text":
            for m in models:
                if system.endpoint.tokenizer is None and not os.path.isfile(os.path.join(m, "tokenizer.json")):
                    c.fail(f"systems[{i}].endpoint.tokenizer", f"missing, and model {shown(m)} has no tokenizer.json",
                           "a local tokenizer folder for text prompts (or prompt: token_ids on the completions API)")
    beyond = c.choice(d.get("beyond_context", "error"), "beyond_context", ("error", "skip"))

    max_minutes = d.get("max_minutes")
    if max_minutes is not None and c.number(max_minutes, "max_minutes", "minutes > 0, or null for no budget") <= 0:
        c.fail("max_minutes", f"{shown(max_minutes)} is not a positive number", "minutes > 0, or null for no budget")
    max_points = d.get("max_points")
    if max_points is not None:
        c.int_(max_points, "max_points", 1, MAX_POINTS)

    for m in models:
        ctx = _context_length(m)
        # input_lens ascend: the first that does not fit with the longest output names the problem
        i_len = next((i for i in input_lens if i + output_lens[-1] > ctx), None)
        if i_len is not None and beyond == "error":
            o_len = next(o for o in output_lens if i_len + o > ctx)
            c.fail("grid", f"input_len {i_len} + output_len {o_len} = {i_len + o_len} exceeds {m}'s "
                   f"context of {ctx} tokens", "lengths within every model's context (or beyond_context: skip)")

    params = SweepParams(name=name, models=tuple(models), systems=tuple(systems), input_lens=input_lens,
                       output_lens=output_lens, batch_sizes=batch_sizes, warmup=warmup, repeats=repeats, seed=seed,
                       min_gain=min_gain, patience=patience, derive_output_lens=derive, beyond_context=beyond,
                       max_minutes=None if max_minutes is None else float(max_minutes),
                       max_points=max_points, slos=_slos(d.get("slos"), source),
                       loads=_loads(c, d.get("loads"), any(s.served for s in systems)), interleave=interleave,
                       source=source)
    check_point_count(params, yes=yes)
    return params


def check_point_count(params: SweepParams, systems=None, yes: bool = False, limit: int | None = None) -> int:
    """The grid's point count for `systems` (default all); UsageError beyond max_points (DEFAULT_MAX_POINTS
    where the file sets none) unless `yes`, and beyond MAX_POINTS (or `limit`) in any case."""
    count = params.point_count(systems)
    allowed = params.max_points or DEFAULT_MAX_POINTS
    hard = MAX_POINTS if limit is None else limit
    where = f"{params.source or 'params'}: grid"
    if count > hard:
        raise UsageError(f"{where}: {count:,} points (systems x models x input_lens x output_lens x batch_sizes) "
                         f"are more than one sweep can take, expected at most {hard:,} (split the grid into several "
                         "params files, or measure one --system at a time)")
    if count > allowed and not yes:
        raise UsageError(f"{where}: {count:,} points (systems x models x input_lens x output_lens x batch_sizes) "
                         f"exceed max_points {allowed:,}, expected at most {allowed:,} unless asked for: set "
                         f"max_points: {count} in the file, or pass perfkit sweep --yes")
    return count


def load_params(path: str | os.PathLike, yes: bool = False) -> SweepParams:
    """Read and validate a params YAML file. Raises UsageError("<file>: <key>: <problem>, expected <what>").

    `yes` (perfkit sweep --yes) allows a grid of more points than the file's max_points (up to MAX_POINTS)."""
    path = os.fspath(path)
    return parse_params(read_yaml(path), source=path, yes=yes)


COMPARISON_KEYS = ("target", "baseline")


def parse_comparisons(data, source: str = "comparisons.yaml") -> list[tuple[str, str]]:
    """Validate comparisons.yaml as read (read_yaml): a list of {target: DIR[:LABEL], baseline: DIR[:LABEL]},
    each side a printable string; an empty file or list is no comparison. Returns [(target, baseline), ...].
    Raises UsageError naming `source` and the entry, checking each value's type and size before it is
    formatted or walked, as parse_params does."""
    if data is None or data == []:
        return []
    c = _Checker(source)
    c.list_(data, "(top level)", "{target: DIR[:LABEL], baseline: DIR[:LABEL]} entries")
    pairs = []
    for i, item in enumerate(data):
        d = c.mapping(item, f"[{i}]", COMPARISON_KEYS, required=COMPARISON_KEYS)
        for key in COMPARISON_KEYS:
            value = c.str_(d[key], f"[{i}].{key}")
            if not value.isprintable():
                c.fail(f"[{i}].{key}", f"{shown(value)} is not printable",
                       "DIR[:LABEL], a results directory relative to the results root")
        pairs.append((d["target"], d["baseline"]))
    return pairs


def load_comparisons(path: str) -> list[tuple[str, str]]:
    """Read and validate a comparisons.yaml (perfkit publish all): read_yaml's checks, then parse_comparisons'."""
    return parse_comparisons(read_yaml(path, "a comparisons file", "a YAML list of {target, baseline}"), path)
