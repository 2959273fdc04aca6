"""Sweep definitions: `params/*.yaml`, validated in full before any model is built.

A params file is the only place a sweep is described:

    name: smoke                       # optional label (default: the file's stem); names results/<name>
    models: [tiny-llama3-8b, tiny-llama2-13b]        # registry names or checkpoint directories
    systems:
      - {label: cpu-fp32, backend: hf-loop, dtype: float32, device: cpu, attn_implementation: sdpa}
    grid: {input_lens: [32, 64], output_lens: [8], batch_sizes: [1, 2, 4]}
    warmup: 1
    repeats: 3
    seed: 0
    search: {min_gain: 0.03, patience: 1}   # batch search stops after `patience` batches in a row that
                                            # gain less than min_gain in throughput (null: never)
    derive_output_lens: false         # true: measure the longest O once, derive the shorter ones
    beyond_context: error             # error | skip: an input + output beyond a model's context
    max_minutes: null                 # optional time budget (the CLI's --max-minutes overrides it)

Every problem is one `UsageError("<file>: <key>: <what is wrong>, expected <what>")`: an unknown or
misspelt key is an error, never silently ignored. Whether a CUDA device is present is checked when a
sweep starts, not here, so a GPU study can be planned (`--dry-run`) on a CPU machine.
"""

from __future__ import annotations

import dataclasses
import difflib
import os

import yaml

from perfkit.errors import UsageError
from perfkit.registry import REGISTRY, check_model_name
from perfkit.workload import ATTN_IMPLEMENTATIONS, BACKEND_NAMES, DTYPE_ALIASES, DTYPE_NAMES, System, \
    SEED_MAX, canonical_dtype

TOP_KEYS = ("name", "models", "systems", "grid", "warmup", "repeats", "seed", "search", "derive_output_lens",
            "beyond_context", "max_minutes")
REQUIRED_TOP = ("models", "systems", "grid")
SYSTEM_KEYS = ("label", "backend", "dtype", "device", "attn_implementation")
GRID_KEYS = ("input_lens", "output_lens", "batch_sizes")
SEARCH_KEYS = ("min_gain", "patience")


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
    source: str | None = None  # the file it came from

    def system(self, label: str) -> System:
        for s in self.systems:
            if s.label == label:
                return s
        raise UsageError(f"{self.source or 'params'}: systems: no system labelled {label!r}, "
                         f"expected one of {', '.join(s.label for s in self.systems)}")

    def output_lens_for(self, model: str, input_len: int) -> tuple[int, ...]:
        """The output lengths that fit `model`'s context after `input_len` (all of them unless skipping)."""
        ctx = _context_length(model)
        return tuple(o for o in self.output_lens if input_len + o <= ctx)

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
                close = difflib.get_close_matches(str(k), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(f"{key}.{k}" if key else str(k), f"unknown key{hint}", f"one of {', '.join(allowed)}")
        for k in required:
            if k not in value:
                self.fail(f"{key}.{k}" if key else k, "missing", "a value")
        return value

    def int_(self, value, key: str, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"{value!r} is not an integer", f"an integer >= {minimum}")
        if value < minimum:
            self.fail(key, f"{value} is too small", f"an integer >= {minimum}")
        return value

    def positive_ints(self, value, key: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            self.fail(key, "is empty" if value in ([], None) else f"{value!r} is not a list",
                      "a non-empty list of positive integers")
        out = [self.int_(v, f"{key}[{i}]", 1) for i, v in enumerate(value)]
        if len(set(out)) != len(out):
            self.fail(key, f"{out} repeats a value", "distinct positive integers")
        return tuple(sorted(out))

    def str_(self, value, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"{value!r} is not a non-empty string", "a string")
        return value

    def choice(self, value, key: str, choices) -> str:
        self.str_(value, key)
        if value not in choices:
            self.fail(key, f"unknown value {value!r}", f"one of {', '.join(choices)}")
        return value


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


def _read_yaml(path: str):
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file, expected a params YAML file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, expected a params YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"{path}: not valid YAML{line} ({getattr(exc, 'problem', None) or exc}), "
                         "expected a YAML mapping") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc}), expected a params YAML file") from None


def _system(c: _Checker, value, key: str) -> System:
    d = c.mapping(value, key, SYSTEM_KEYS, required=("label",))
    label = c.str_(d["label"], f"{key}.label")
    backend = c.choice(d.get("backend", "hf-loop"), f"{key}.backend", BACKEND_NAMES)
    dtype = c.choice(d.get("dtype", "float32"), f"{key}.dtype", DTYPE_NAMES + tuple(DTYPE_ALIASES))
    device = c.str_(d.get("device", "cpu"), f"{key}.device")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        c.fail(f"{key}.device", f"unknown device {device!r}", "cpu or cuda[:N]")
    attn = c.choice(d.get("attn_implementation", "sdpa"), f"{key}.attn_implementation", ATTN_IMPLEMENTATIONS)
    return System(label, backend, canonical_dtype(dtype), device, attn)


def parse_params(data, source: str = "params") -> SweepParams:
    """Validate a params mapping (as read from YAML). Raises UsageError naming `source` and the key."""
    c = _Checker(source)
    if data is None:
        c.fail("(top level)", "the file is empty", "a mapping with keys " + ", ".join(REQUIRED_TOP))
    d = c.mapping(data, "", TOP_KEYS, required=REQUIRED_TOP)

    stem = os.path.splitext(os.path.basename(source))[0] or "sweep"
    name = c.str_(d.get("name", stem), "name")
    if os.sep in name or name.startswith("."):
        c.fail("name", f"{name!r} is not a plain name", "a name without slashes (it names results/<name>)")

    models_value = d["models"]
    if not isinstance(models_value, list) or not models_value:
        c.fail("models", "is empty" if models_value in ([], None) else f"{models_value!r} is not a list",
               "a non-empty list of registry names or checkpoint directories")
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
            c.fail(f"models[{i}]", f"{m!r} is listed twice", "each model once")
        models.append(m)

    systems_value = d["systems"]
    if not isinstance(systems_value, list) or not systems_value:
        c.fail("systems", "is empty" if systems_value in ([], None) else f"{systems_value!r} is not a list",
               "a non-empty list of {label, backend, dtype, device, attn_implementation}")
    systems = [_system(c, s, f"systems[{i}]") for i, s in enumerate(systems_value)]
    labels = [s.label for s in systems]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            c.fail(f"systems[{i}].label", f"{label!r} is used twice", "a distinct label per system")

    grid = c.mapping(d["grid"], "grid", GRID_KEYS, required=GRID_KEYS)
    input_lens = c.positive_ints(grid["input_lens"], "grid.input_lens")
    output_lens = c.positive_ints(grid["output_lens"], "grid.output_lens")
    batch_sizes = c.positive_ints(grid["batch_sizes"], "grid.batch_sizes")

    warmup = c.int_(d.get("warmup", 1), "warmup", 0)
    repeats = c.int_(d.get("repeats", 3), "repeats", 1)
    seed = c.int_(d.get("seed", 0), "seed", 0)
    if seed > SEED_MAX:
        c.fail("seed", "is too large", "an integer from 0 to 2**63 - 1")

    search = c.mapping(d.get("search", {}) or {}, "search", SEARCH_KEYS)
    min_gain = search.get("min_gain", 0.03)
    if min_gain is not None:
        if not isinstance(min_gain, (int, float)) or isinstance(min_gain, bool) or not 0 <= min_gain < 1:
            c.fail("search.min_gain", f"{min_gain!r} is not a fraction in [0, 1)",
                   "a fraction such as 0.03 (3%), or null to stop only on OOM or at the grid's end")
        min_gain = float(min_gain)
    patience = c.int_(search.get("patience", 1), "search.patience", 1)

    derive = d.get("derive_output_lens", False)
    if not isinstance(derive, bool):
        c.fail("derive_output_lens", f"{derive!r} is not a boolean", "true or false")
    for i, system in enumerate(systems):
        # The static backend sizes its cache (and so every attention over it) for I + O: a 1024-token run's
        # first 128 steps are not the work of a 128-token run, so shorter outputs cannot be read off it.
        if derive and system.backend == "static" and len(output_lens) > 1:
            c.fail("derive_output_lens", f"true, but systems[{i}] ({system.label!r}) uses the static backend, "
                   "whose cache is sized for each output length", "false for a sweep with static systems")
    beyond = c.choice(d.get("beyond_context", "error"), "beyond_context", ("error", "skip"))

    max_minutes = d.get("max_minutes")
    if max_minutes is not None and (not isinstance(max_minutes, (int, float)) or isinstance(max_minutes, bool)
                                    or max_minutes <= 0):
        c.fail("max_minutes", f"{max_minutes!r} is not a positive number", "minutes > 0, or null for no budget")

    for m in models:
        ctx = _context_length(m)
        for i_len in input_lens:
            for o_len in output_lens:
                if i_len + o_len > ctx and beyond == "error":
                    c.fail("grid", f"input_len {i_len} + output_len {o_len} = {i_len + o_len} exceeds {m}'s "
                           f"context of {ctx} tokens",
                           "lengths within every model's context (or beyond_context: skip)")

    return SweepParams(name=name, models=tuple(models), systems=tuple(systems), input_lens=input_lens,
                       output_lens=output_lens, batch_sizes=batch_sizes, warmup=warmup, repeats=repeats, seed=seed,
                       min_gain=min_gain, patience=patience, derive_output_lens=derive, beyond_context=beyond,
                       max_minutes=None if max_minutes is None else float(max_minutes), source=source)


def load_params(path: str | os.PathLike) -> SweepParams:
    """Read and validate a params YAML file. Raises UsageError("<file>: <key>: <problem>, expected <what>")."""
    path = os.fspath(path)
    return parse_params(_read_yaml(path), source=path)
