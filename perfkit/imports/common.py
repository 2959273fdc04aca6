"""What every importer shares: another tool's file read as untrusted input, one-line refusals that name the
file, the field and what was expected, and the rows built from it under perfkit's own definitions.

An importer (one module per tool) reads its files into records: `PointRecord` (an in-process point: per repeat
a ttft and an e2e, as perfkit.metrics defines them) or `LevelRecord` (a load level: every measured request's
send, first token and last token). Nothing here takes a figure from a tool's summary where the raw samples are
in the file: the rows are computed from the samples by perfkit's formulas, and a row says in `source_note`
which figures are the tool's own and which are left out, and why. See docs/import.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re

from perfkit.errors import UnreadableFile, UsageError, nesting_refused, one_line, read_regular, shown

# A source file larger than this is refused unread: far beyond what any of the tools writes for a few
# thousand requests (AIPerf's per-request JSONL is ~1 kB a request), short of a read that exhausts memory.
MAX_SOURCE_BYTES = 1 << 30
NOT_RECORDED = "not recorded"


class ImportRefused(UsageError):
    """A source file that is not what its format says: one line naming the file, the field, what was expected."""


def refusal(file: str, where: str, problem: str, expected: str) -> ImportRefused:
    """`FILE: FIELD PROBLEM, expected WHAT` (`where` a field's path, or a position ending in ':')."""
    return ImportRefused(f"{file}: {where + ' ' if where else ''}{problem}, expected {expected}")


# ---- reading a file -----------------------------------------------------------------------------------

def read_text(path: str, what: str) -> str:
    """The text of `path`, a regular UTF-8 file of at most MAX_SOURCE_BYTES (ImportRefused otherwise)."""
    try:
        blob = read_regular(path, what, MAX_SOURCE_BYTES)
    except UnreadableFile as exc:
        raise ImportRefused(f"{path}: {exc}") from None
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refusal(path, "", f"not UTF-8 text (byte {exc.start})", what) from None
    if not text.strip():
        raise refusal(path, "", "empty file", what)
    return text


def _loads(text: str):
    # NaN and Infinity literals (Python's json writes them) parse, and are refused where a figure is read
    return json.loads(text)


def parse_json(path: str, text: str, what: str):
    """One JSON document (a truncated or damaged file is refused with the line and column)."""
    try:
        with nesting_refused(what):
            return _loads(text)
    except json.JSONDecodeError as exc:
        raise refusal(path, f"line {exc.lineno} column {exc.colno}:", f"not valid JSON ({exc.msg})", what) from None
    except ValueError as exc:
        raise refusal(path, "", one_line(exc, 160), what) from None


def parse_jsonl(path: str, text: str, what: str) -> list[tuple[int, object]]:
    """(line number, value) of every non-blank line of a JSON Lines file."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            with nesting_refused(what):
                out.append((n, _loads(line)))
        except json.JSONDecodeError as exc:
            raise refusal(path, f"line {n}:", f"not valid JSON ({exc.msg} at column {exc.colno}: a truncated or "
                          "damaged line?)", what) from None
        except ValueError as exc:
            raise refusal(path, f"line {n}:", one_line(exc, 160), what) from None
    return out


# ---- fields of a parsed file, checked ----------------------------------------------------------------

class Fields:
    """A JSON object of a source file, read field by field: each accessor checks the type and range and
    refuses in one line naming the file and the field's path (`record 3.samples_ns[2]`)."""

    def __init__(self, file: str, data, where: str = "", what: str = "an object"):
        self.file, self.where = file, where
        if not isinstance(data, dict):
            raise refusal(file, where or "the file", f"is a JSON {_kind(data)}", what)
        self.data = data

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str, expected: str) -> ImportRefused:
        return refusal(self.file, self.path(key), problem, expected)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, expected: str):
        if key not in self.data:
            raise self.fail(key, "is missing", expected)
        return self.data[key]

    def obj(self, key: str, what: str = "an object") -> Fields:
        value = self.raw(key, what)
        if not isinstance(value, dict):
            raise self.fail(key, f"is a JSON {_kind(value)}", what)
        return Fields(self.file, value, self.path(key), what)

    def opt_obj(self, key: str) -> Fields | None:
        return self.obj(key) if self.has(key) else None

    def array(self, key: str, what: str = "a list") -> list:
        value = self.raw(key, what)
        if not isinstance(value, list):
            raise self.fail(key, f"is a JSON {_kind(value)}", what)
        return value

    def string(self, key: str, what: str = "a string") -> str:
        value = self.raw(key, what)
        if not isinstance(value, str):
            raise self.fail(key, f"is {shown(value)}", what)
        return value

    def opt_string(self, key: str) -> str | None:
        return self.string(key) if self.has(key) else None

    def boolean(self, key: str) -> bool:
        value = self.raw(key, "true or false")
        if not isinstance(value, bool):
            raise self.fail(key, f"is {shown(value)}", "true or false")
        return value

    def integer(self, key: str, minimum: int = 0, what: str | None = None) -> int:
        return as_int(self.raw(key, what or f"an integer >= {minimum}"), self.file, self.path(key), minimum, what)

    def opt_integer(self, key: str, minimum: int = 0) -> int | None:
        return self.integer(key, minimum) if self.has(key) else None

    def number(self, key: str, unit: str, minimum: float = 0.0) -> float:
        return as_number(self.raw(key, f"a finite number >= {minimum:g} {unit}"), self.file, self.path(key), unit,
                         minimum)

    def opt_number(self, key: str, unit: str, minimum: float = 0.0) -> float | None:
        return self.number(key, unit, minimum) if self.has(key) else None

    def numbers(self, key: str, unit: str, minimum: float = 0.0) -> list[float]:
        values = self.array(key, f"a list of finite numbers >= {minimum:g} {unit}")
        return [as_number(v, self.file, f"{self.path(key)}[{i}]", unit, minimum) for i, v in enumerate(values)]


def _kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def as_int(value, file: str, where: str, minimum: int = 0, what: str | None = None) -> int:
    what = what or f"an integer >= {minimum}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise refusal(file, where, f"is {shown(value)}", what)
    return value


def as_number(value, file: str, where: str, unit: str, minimum: float = 0.0) -> float:
    """A finite number >= minimum (a time, a count of seconds): NaN, infinities, negatives and strings refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refusal(file, where, f"is {shown(value)}", f"a number ({unit})")
    value = float(value)
    if not math.isfinite(value):
        raise refusal(file, where, f"is {value}", f"a finite number ({unit})")
    if value < minimum:
        raise refusal(file, where, f"is {value:g}", f"a number >= {minimum:g} ({unit})")
    return value


# ---- what an importer hands back --------------------------------------------------------------------

@dataclasses.dataclass
class Source:
    """Where a file's rows came from."""

    tool: str  # the tool's name as docs/import.md gives it: aiperf, vllm-bench, guidellm, llama-bench, ...
    version: str  # its version (or build) as the file records it, else NOT_RECORDED
    command: str  # its command line as the file records it (secrets masked), else NOT_RECORDED
    file: str  # the file read, as given
    created_utc: str | None = None  # when the tool measured, where the file says (else the import's time)
    also_read: tuple[str, ...] = ()  # the other files the rows come from (an aggregate, a config beside a report)


@dataclasses.dataclass
class PointRecord:
    """One in-process point (perfkit.rows): per timed repeat, its ttft and e2e in ms."""

    where: str  # how a message names it: "record 2 (tg8)"
    source: Source
    model: str
    input_len: int
    output_len: int
    batch: int
    e2e_ms: list[float]
    ttft_ms: list[float] | None  # None: the tool timed no first token (the row is `untimed` "ttft")
    step_ms: list[list[float]]  # per repeat, its O - 1 decode steps where the file has them; [] otherwise
    columns: dict  # the row's other columns: dtype, backend, device, device_name, versions, warmup, seed, memory
    settings: dict  # what defines the system in the tool (key and one-definition check)
    note: str  # which figures are the tool's own, which are left out, and why


@dataclasses.dataclass
class Request:
    """One measured request of a load level, in ms on a clock shared by the level's requests."""

    send_ms: float | None  # None where the file gives no send time (then the level carries the tool's window)
    ttft_ms: float  # first token - send
    e2e_ms: float  # last token - send
    input_tokens: int
    output_tokens: int
    chunk_gaps_ms: list[float] | None  # the gap before each chunk after the first, where the file has them
    raw: dict  # the tool's own record of it, kept in the row's requests_json


@dataclasses.dataclass
class LevelRecord:
    """One load level (perfkit.loads): a closed loop of N users or an open loop at R requests/s."""

    where: str
    source: Source
    model: str
    input_len: int
    output_len: int
    kind: str  # "users" or "rate"
    value: float
    requests: list[Request]  # the measured ones, in send order
    warmup_requests: int | None  # sent first and left out by the tool, where it says
    window_s: float | None  # None: from the requests (first send to last token); else the tool's own window
    columns: dict
    settings: dict
    note: str
    error: str | None = None  # a level whose requests were not all exact and successful: imported as failed


# ---- shared helpers ---------------------------------------------------------------------------------

def utc_of_epoch_s(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_SECRET_FLAGS = re.compile(r"(?i)^--?(api[-_]?key|token|password|header|hf[-_]token|auth\w*)$")
_SECRET_INLINE = re.compile(r"(?i)^(--?(?:api[-_]?key|token|password|header|hf[-_]token|auth\w*)=|"
                            r"\w*(?:KEY|TOKEN|SECRET|PASSWORD)\w*=)")


def masked_command(argv: list[str]) -> str:
    """A recorded command line with the values of credential flags (--api-key, --header, tokens) and
    credential environment assignments replaced by ***: a row is shared, a key must not travel with it."""
    out, hide = [], False
    for arg in argv:
        arg = str(arg)
        if hide:
            out.append("***")
            hide = False
            continue
        m = _SECRET_INLINE.match(arg)
        if m:
            out.append(m.group(1) + "***")
        else:
            out.append(arg)
            hide = bool(_SECRET_FLAGS.match(arg))
    return " ".join(_quoted(a) for a in out)


def _quoted(arg: str) -> str:
    import shlex

    return shlex.quote(arg) if arg != "***" and not arg.endswith("=***") else arg


def digest(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def basename(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


# ---- rows, under perfkit's definitions ------------------------------------------------------------

def provenance_columns(source: Source, settings: dict, note: str) -> dict:
    return {"source_tool": source.tool, "source_version": source.version or NOT_RECORDED,
            "source_command": source.command or NOT_RECORDED, "source_file": source.file,
            "source_settings": json.dumps(settings, sort_keys=True, default=str), "source_note": note}


def point_row(rec: PointRecord, label: str, run_id: str, created_utc: str) -> dict:
    """A batch point's row (perfkit.rows.SCHEMA) from a record's raw repeats, by perfkit.metrics' formulas.

    A record without a ttft per repeat gives an `untimed` "ttft" row: its e2e figures (e2e, output and total
    throughput) follow from the samples, every figure that needs a ttft is null (perfkit.results.NEEDS_TTFT)."""
    from perfkit.metrics import is_noisy, point_metrics
    from perfkit.results import NEEDS_TTFT
    from perfkit.rows import point_key

    e2e_s = [t / 1e3 for t in rec.e2e_ms]
    timed = rec.ttft_ms is not None
    metrics = point_metrics(rec.batch, rec.input_len, rec.output_len,
                            [t / 1e3 for t in rec.ttft_ms] if timed else e2e_s, e2e_s)
    if not timed:
        metrics.update({c: float("nan") for c in NEEDS_TTFT})
        metrics["noisy"] = bool(is_noisy(rec.e2e_ms))
    fields = {"imported_from": rec.source.tool, "system": label, "model": rec.model, "input_len": rec.input_len,
              "output_len": rec.output_len, "batch": rec.batch, "settings": rec.settings}
    row = {"run_id": run_id, "point_key": point_key(fields), "system": label, "model": rec.model,
           "input_len": rec.input_len, "output_len": rec.output_len, "batch": rec.batch, "status": "ok",
           "error": None, **metrics, "ttft_ms_samples": list(rec.ttft_ms) if timed else [],
           "e2e_ms_samples": list(rec.e2e_ms), "decode_step_ms_samples": [list(s) for s in rec.step_ms],
           "energy_j_samples": [], "generated_tokens": rec.batch * rec.output_len, "created_utc": created_utc,
           "untimed": None if timed else "ttft"}
    row.update(rec.columns)
    row.update(provenance_columns(rec.source, rec.settings, rec.note))
    return row


def itl_per_token(requests: list[Request], output_len: int) -> list[float] | None:
    """Inter-token latency per token over every request, as perfkit.serving defines it (a chunk of k tokens
    after a gap g counts k gaps of g/k); None where a request's split of its tokens into chunks is unknown.

    A file gives the gaps between chunks, not the tokens each carried. Where a request's O tokens came in O
    chunks, each chunk carried one token (every chunk carries at least one) and its gaps are per token; with
    fewer chunks the split is unknown, and a per-chunk gap is another figure (vLLM's ITL): left out, never
    mixed in."""
    out = []
    for r in requests:
        if r.chunk_gaps_ms is None or len(r.chunk_gaps_ms) != output_len - 1:
            return None
        out.extend(r.chunk_gaps_ms)
    return out


def load_row(rec: LevelRecord, label: str, run_id: str, created_utc: str) -> dict:
    """A load level's row (perfkit.loads.LOAD_SCHEMA) from its measured requests, as perfkit.serving.load
    computes one: the window from the first measured send to the last measured token, throughput over it,
    per-request TTFT, TPOT = (e2e - TTFT)/(O - 1), ITL per token, e2e; p50/p90/p99 by
    perfkit.serving.point.percentile."""
    from perfkit.rows import point_key
    from perfkit.serving.load import LoadLevel
    from perfkit.serving.point import percentile

    level = LoadLevel(rec.kind, rec.value, len(rec.requests), rec.warmup_requests or 0)
    fields = {"imported_from": rec.source.tool, "system": label, "model": rec.model, "input_len": rec.input_len,
              "output_len": rec.output_len, "load": {"kind": rec.kind, "value": rec.value},
              "settings": rec.settings}
    row = {"run_id": run_id, "load_key": point_key(fields), "system": label, "model": rec.model,
           "input_len": rec.input_len, "output_len": rec.output_len, "load_kind": rec.kind,
           "load_value": float(rec.value), "load_label": level.label(), "warmup_requests": rec.warmup_requests,
           "created_utc": created_utc, "backend": "served"}
    row.update(rec.columns)
    row.update(provenance_columns(rec.source, rec.settings, rec.note))
    if rec.error is not None:
        row.update({"status": "error", "error": rec.error, "requests": 0})
        return row
    reqs, o = rec.requests, rec.output_len
    if rec.window_s is None:
        start = min(r.send_ms for r in reqs)
        window_s = (max(r.send_ms + r.e2e_ms for r in reqs) - start) / 1e3
    else:
        start, window_s = 0.0, rec.window_s
    n = len(reqs)
    ttft = [r.ttft_ms for r in reqs]
    e2e = [r.e2e_ms for r in reqs]
    tpot = [(r.e2e_ms - r.ttft_ms) / (o - 1) for r in reqs] if o > 1 else []
    itl = itl_per_token(reqs, o) if o > 1 else []
    tpot_p50 = percentile(tpot, 50)
    raw = []
    for i, r in enumerate(reqs):
        raw.append({"index": i, "send_ms": None if r.send_ms is None else r.send_ms - start,
                    "ttft_ms": r.ttft_ms, "e2e_ms": r.e2e_ms, "prompt_tokens": r.input_tokens,
                    "completion_tokens": r.output_tokens, "chunk_gaps_ms": r.chunk_gaps_ms, "source": r.raw})
    row.update({
        "status": "ok", "error": None, "requests": n, "window_s": window_s, "request_rate_s": n / window_s,
        "output_tok_s": n * o / window_s, "total_tok_s": n * (rec.input_len + o) / window_s,
        "interactivity_tok_s": 1000.0 / tpot_p50 if tpot_p50 else None,
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p90_ms": percentile(ttft, 90), "ttft_p99_ms": percentile(ttft, 99),
        "tpot_p50_ms": tpot_p50, "tpot_p90_ms": percentile(tpot, 90), "tpot_p99_ms": percentile(tpot, 99),
        "itl_p50_ms": percentile(itl, 50) if itl is not None else None,
        "itl_p99_ms": percentile(itl, 99) if itl is not None else None,
        "e2e_p50_ms": percentile(e2e, 50), "e2e_p99_ms": percentile(e2e, 99),
        "ttft_ms_samples": ttft, "tpot_ms_samples": tpot, "e2e_ms_samples": e2e,
        "requests_json": json.dumps(raw, separators=(",", ":"), default=str),
    })
    if itl is None and o > 1 and any(r.chunk_gaps_ms is not None for r in reqs):
        row["source_note"] = (row["source_note"] + " ITL per token left out (null): the file gives the gaps "
                              "between chunks but not how many tokens each chunk carried, and a request had "
                              f"fewer than O = {o} chunks; a per-chunk gap is not perfkit's ITL.").strip()
    return row


def masked_command_text(command: str) -> str:
    """masked_command for a command line recorded as one string (split as a shell would)."""
    import shlex

    try:
        return masked_command(shlex.split(command))
    except ValueError:  # unbalanced quotes: mask what follows a credential flag word by word
        return masked_command(command.split())
