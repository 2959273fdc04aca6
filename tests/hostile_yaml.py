"""Careless and hostile params files: HOSTILE[name] = (the file's text, a fragment of the one-line refusal).

Every params reader (perfkit.params.load_params, `perfkit sweep --dry-run`, `perfkit publish sweep`, the
sweep notebook) must refuse each of them in one line naming the problem, at once, without echoing an
unbounded value. Each text is a valid params file but for the one thing it gets wrong, so the refusal is
that thing's. Import as `from hostile_yaml import HOSTILE`.
"""

from __future__ import annotations

# A valid file; each entry below appends to it or replaces one of its lines.
BASE = """\
name: t
models: [tiny-llama2-13b]
systems:
  - {label: cpu, backend: hf-loop, dtype: float32, device: cpu, attn_implementation: sdpa}
grid: {input_lens: [16], output_lens: [4], batch_sizes: [1, 2, 4]}
warmup: 1
repeats: 2
"""


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" of YAML, as top-level keys: each anchor a list of `width` aliases of the previous
    one, so the last stands for width**(levels + 1) scalars (9**10, about 3.5 billion) in a few hundred
    bytes. yaml builds it in microseconds (aliases are shared objects); a repr or a walk of it never ends."""
    lines = ["b0: &b0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _with(line: str, replacing: str | None = None) -> str:
    """BASE with `line` appended, or with the line starting with `replacing` swapped for it."""
    if replacing is None:
        return BASE + line + "\n"
    out = [line if ln.startswith(replacing) else ln for ln in BASE.splitlines()]
    assert out != BASE.splitlines(), replacing
    return "\n".join(out) + "\n"


def _bomb_value() -> str:
    """An alias bomb as one flow value, its anchors defined inline, nested: it fits wherever a value goes."""
    value = "&b0 [" + ", ".join(["lol"] * 9) + "]"
    for i in range(1, 10):
        # each level: a list holding the previous level once (defining its anchor) and 8 aliases of it
        value = f"&b{i} [{value}, " + ", ".join([f"*b{i - 1}"] * 8) + "]"
    return value


def _bomb_at(key_line: str, replacing: str | None = None) -> str:
    """BASE with `KEY: <bomb>`: the anchors are defined inline in the value itself, nested, so the file has
    no extra top-level keys and the bomb reaches exactly that key's check."""
    return _with(key_line.replace("BOMB", _bomb_value()), replacing)


HOSTILE: dict[str, tuple[str, str]] = {
    # ---- keys given twice: plain YAML lets the last one win, silently ----
    "duplicate top-level key": (BASE + "seed: 1\nseed: 2\n", "seed: given twice in one mapping (lines 8 and 9)"),
    "duplicate key in a system": (_with("  - {label: a, dtype: float32, label: b}", replacing="  - {label"),
                                  "label: given twice in one mapping"),
    "duplicate key in the grid": (_with("grid: {input_lens: [16], output_lens: [4], batch_sizes: [1], "
                                        "batch_sizes: [2]}", replacing="grid:"), "batch_sizes: given twice"),
    "duplicate key, block style": (BASE.replace("repeats: 2\n", "repeats: 2\nwarmup: 3\n"),
                                   "warmup: given twice in one mapping (lines 6 and 8)"),
    # ---- numbers that are not finite ----
    "max_minutes .nan": (_with("max_minutes: .nan"), "max_minutes: nan is not a finite number"),
    "max_minutes .inf": (_with("max_minutes: .inf"), "max_minutes: inf is not a finite number"),
    "min_gain .nan": (_with("search: {min_gain: .nan}"), "search.min_gain: nan is not a finite number"),
    "min_gain -.inf": (_with("search: {min_gain: -.inf}"), "search.min_gain: -inf is not a finite number"),
    "slos ttft .nan": (_with("slos: [{name: s, ttft_ms: .nan, tpot_ms: 10}]"), "slos[0].ttft_ms"),
    # ---- names a terminal would act on ----
    "an SLO name with an escape sequence": (_with('slos: [{name: "a\\e[2Jb", ttft_ms: 100, tpot_ms: 10}]'),
                                            "slos[0].name: 'a\\x1b[2Jb' is not a plain name"),
    "an SLO name with a bidi override": (_with('slos: [{name: "a\\u202eb", ttft_ms: 100, tpot_ms: 10}]'),
                                         "slos[0].name: 'a\\u202eb' is not a plain name"),
    # ---- counts beyond any sensible sweep ----
    "warmup 101": (_with("warmup: 101", replacing="warmup:"), "warmup: 101 is too large"),
    "repeats 1001": (_with("repeats: 1001", replacing="repeats:"), "repeats: 1001 is too large"),
    "patience 101": (_with("search: {patience: 101}"), "search.patience: 101 is too large"),
    "batch 2**20 + 1": (_with("grid: {input_lens: [16], output_lens: [4], batch_sizes: [1, 1048577]}",
                              replacing="grid:"), "grid.batch_sizes[1]: 1048577 is too large"),
    "input length 10**30": (_with("grid: {input_lens: [1000000000000000000000000000000], output_lens: [4], "
                                  "batch_sizes: [1]}", replacing="grid:"), "grid.input_lens[0]: "),
    "a grid list of 1,001 entries": (
        _with("grid: {input_lens: [" + ", ".join(str(i) for i in range(1, 1002)) + "], output_lens: [4], "
              "batch_sizes: [1]}", replacing="grid:"), "grid.input_lens: has 1,001 entries"),
    "1,001 models": (_with("models: [" + ", ".join(["tiny-llama2-13b"] * 1001) + "]", replacing="models:"),
                     "models: has 1,001 entries"),
    "max_points above the ceiling": (_with("max_points: 1000000"), "max_points: 1000000 is too large"),
    "max_points not an integer": (_with("max_points: 1.5"), "max_points: 1.5 is not an integer"),
    # ---- grids too large to be meant ----
    "10,000 points without max_points": (
        _with("grid: {input_lens: [" + ", ".join(str(i) for i in range(1, 101)) + "], output_lens: ["
              + ", ".join(str(i) for i in range(1, 101)) + "], batch_sizes: [1]}", replacing="grid:"),
        "grid: 10,000 points"),
    "a grid smaller than its own max_points": (_with("max_points: 2"), "exceed max_points 2"),
    "30 million points": (
        _with("grid: {input_lens: [" + ", ".join(str(i) for i in range(1, 1001)) + "], output_lens: ["
              + ", ".join(str(i) for i in range(1, 1001)) + "], batch_sizes: [1, 2, 4, 8, 16, 32, 64, 128, 256, "
              "512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576, 3, 5, 6, 7, "
              "9, 10, 11, 12, 13]}", replacing="grid:") + "max_points: 100000\n",
        "more than one sweep can take"),
    # ---- alias bombs: a value no message may repr, no check may walk ----
    "alias bomb in seed": (_bomb_at("seed: BOMB"), "seed: [[[...], [...], [...], [...], ...]"),
    "alias bomb in models": (_bomb_at("models: BOMB", replacing="models:"), "models[0]: "),
    "alias bomb in input_lens": (_bomb_at("grid: {input_lens: BOMB, output_lens: [4], batch_sizes: [1]}",
                                          replacing="grid:"), "grid.input_lens[0]: "),
    "alias bomb in name": (_bomb_at("name: BOMB", replacing="name:"), "name: "),
    "alias bomb in a label": (_bomb_at("  - {label: BOMB}", replacing="  - {label"), "systems[0].label: "),
    "alias bomb in max_minutes": (_bomb_at("max_minutes: BOMB"), "max_minutes: "),
    "alias bomb in derive_output_lens": (_bomb_at("derive_output_lens: BOMB"), "derive_output_lens: "),
    "alias bomb in search": (_bomb_at("search: BOMB"), "search: is a list"),
    "alias bomb in slos": (_bomb_at("slos: BOMB"), "slos[0]: "),
    "alias bomb as the systems": (_bomb_at("systems: BOMB", replacing="systems:").replace(
        "  - {label: cpu, backend: hf-loop, dtype: float32, device: cpu, attn_implementation: sdpa}\n", ""),
        "systems[0]: is a list"),
    "the classic bomb, under keys of its own": (BASE + _alias_bomb() + "seed: *b9\n", "b0: unknown key"),
    # ---- values too big to show, or to read ----
    "an integer of 5,000 digits": (_with("seed: " + "9" * 5000), "a value cannot be read"),
    "an integer of 4,000 digits": (_with("warmup: " + "9" * 4000, replacing="warmup:"), "warmup: 9999"),
    "a 100 kB name": (_with("name: " + "n" * 100_000, replacing="name:"), "name: 'nnnn"),
    "a 1,000-character unknown key": (_with("k" * 1000 + ": 1"), "unknown key"),
    "a name with a newline": (_with('name: "a\\nb"', replacing="name:"), "name: 'a\\nb' is not printable"),
    "a model name with a NUL byte": (_with('models: ["tiny\\0llama"]', replacing="models:"),
                                     "models[0]: unknown model 'tiny\\x00llama'"),
    "a file over 1 MiB": (BASE + "# " + "x" * (1 << 20) + "\n", "is larger than 1024 KiB"),
    # ---- YAML that is not data ----
    "nesting 5,000 deep": (_with("seed: " + "[" * 5000 + "]" * 5000), "not valid YAML"),
    "a python tag": (_with("seed: !!python/object/apply:os.system ['true']"), "not valid YAML"),
    "two documents": (BASE + "---\nseed: 1\n", "not valid YAML"),
    "a list at the top": ("- models\n- systems\n", "(top level): is a list"),
    "an empty file": ("", "the file is empty"),
}


# ---- comparisons.yaml (perfkit publish all): COMPARISONS[name] = (the file's text or bytes, a fragment) ----
# Read below a results root holding results directories `a` (system cpu) and `b` (system gpu). Each is
# refused in one line, naming the file and the entry, before any report is rendered; COMPARISONS_BASE is
# a valid file.

COMPARISONS_BASE = "- {target: a, baseline: b}\n- {target: 'b:gpu', baseline: 'a:cpu'}\n"

COMPARISONS: dict[str, tuple[str | bytes, str]] = {
    "a mapping instead of a list": ("target: a\nbaseline: b\n", "(top level): {'baseline': 'b', 'target': 'a'} is "
                                                               "not a list"),
    "a list of strings": ("- a:cpu\n- b:gpu\n", "[0]: is a str, expected a mapping with keys target, baseline"),
    "a missing baseline": ("- {target: a}\n", "[0].baseline: missing"),
    "a baseline that is not there": ("- {target: a, baseline: nowhere}\n",
                                     "[0] ('a' vs 'nowhere'): baseline results directory"),
    "an unknown label": ("- {target: 'a:nolabel', baseline: b}\n", "target system 'nolabel' is not in"),
    "a later entry wrong": (COMPARISONS_BASE + "- {target: a}\n", "[2].baseline: missing"),
    "an unknown key": ("- {target: a, baseline: b, label: x}\n", "[0].label: unknown key"),
    "a number as a side": ("- {target: 1, baseline: b}\n", "[0].target: 1 is not a non-empty string"),
    "an empty side": ("- {target: '', baseline: b}\n", "[0].target: '' is not a non-empty string"),
    "a NUL byte in a side": ('- {target: "a\\0", baseline: b}\n', "[0].target: 'a\\x00' is not printable"),
    "duplicate keys": ("- {target: a, baseline: b, target: b}\n", "target: given twice in one mapping"),
    "a binary tag": ("- {target: !!binary YQ==, baseline: b}\n", "[0].target: b'a' is not a non-empty string"),
    "a set tag": ("- {target: !!set {a: null}, baseline: b}\n", "[0].target: {'a'} is not a non-empty string"),
    "a python tag": ("- !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    "an unknown tag": ("- {target: !pair a, baseline: b}\n", "not valid YAML"),
    "bad YAML": ("- {target: a, baseline: [b\n", "not valid YAML"),
    "bytes that are not UTF-8": (b"- {target: \xff\xfe, baseline: b}\n", "is not UTF-8 text"),
    "an alias bomb as a side": ("- {target: " + _bomb_value() + ", baseline: b}\n", "[0].target: [[[...], "),
    "1,001 entries": ("- {target: a, baseline: b}\n" * 1001, "(top level): has 1,001 entries"),
    "a file over 1 MiB": (COMPARISONS_BASE + "# " + "x" * (1 << 20) + "\n", "is larger than 1024 KiB"),
}
