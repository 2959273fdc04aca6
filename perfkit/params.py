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
            "beyond_context", "max_minutes", "max_points", "slos")
REQUIRED_TOP = ("models", "systems", "grid")
SYSTEM_KEYS = ("label", "backend", "dtype", "device", "attn_implementation")
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



def _system(c: _Checker, value, key: str) -> System:
    d = c.mapping(value, key, SYSTEM_KEYS, required=("label",))
    label = c.name(d["label"], f"{key}.label", "a label")
    backend = c.choice(d.get("backend", "hf-loop"), f"{key}.backend", BACKEND_NAMES)
    dtype = c.choice(d.get("dtype", "float32"), f"{key}.dtype", DTYPE_NAMES + tuple(DTYPE_ALIASES))
    device = c.str_(d.get("device", "cpu"), f"{key}.device")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        c.fail(f"{key}.device", f"unknown device {shown(device)}", "cpu or cuda[:N]")
    attn = c.choice(d.get("attn_implementation", "sdpa"), f"{key}.attn_implementation", ATTN_IMPLEMENTATIONS)
    return System(label, backend, canonical_dtype(dtype), device, attn)


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
    for i, system in enumerate(systems):
        # The static backend sizes its cache (and so every attention over it) for I + O: a 1024-token run's
        # first 128 steps are not the work of a 128-token run, so shorter outputs cannot be read off it.
        if derive and system.backend == "static" and len(output_lens) > 1:
            c.fail("derive_output_lens", f"true, but systems[{i}] ({system.label!r}) uses the static backend, "
                   "whose cache is sized for each output length", "false for a sweep with static systems")
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
                       max_points=max_points, slos=_slos(d.get("slos"), source), source=source)
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
