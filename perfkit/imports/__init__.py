"""Other benchmarking tools' result files as perfkit rows: `perfkit import FORMAT PATH... --system LABEL --out DIR`.

    aiperf             AIPerf's per-request profile_export.jsonl (+ profile_export_aiperf.json beside it)
    vllm-bench         `vllm bench serve --save-result --save-detailed` JSON
    guidellm           GuideLLM's benchmarks.json
    llama-bench        `llama-bench -o json` / `-o jsonl`
    optimum-benchmark  optimum-benchmark's benchmark.json (or benchmark_report.json + benchmark_config.json)

Serving tools' runs become load levels (perfkit.loads: a closed loop of N users, or an open loop at R requests
per second), in-process tools' tests become batch points (perfkit.rows), every figure recomputed under perfkit's
definitions from the raw samples in the file (perfkit.imports.common). Every file is read and checked before
anything is written; a file that is not what its format says is refused in one line (ImportRefused, a
UsageError) and nothing is written. Importing the same files again rewrites the same keys. The rows then read
like measured ones: summary, compare, the SLO views and the reports take them unchanged. No torch, no notebooks,
no plotting here. See docs/import.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os

from perfkit.errors import UsageError, shown
from perfkit.imports.common import (
    ImportRefused,
    PointRecord,
    digest,
    file_digest,
    load_row,
    point_row,
    utc_now,
)

FORMATS = {
    "aiperf": "perfkit.imports.aiperf",
    "vllm-bench": "perfkit.imports.vllm_bench",
    "guidellm": "perfkit.imports.guidellm",
    "llama-bench": "perfkit.imports.llama_bench",
    "optimum-benchmark": "perfkit.imports.optimum_benchmark",
}

__all__ = ["FORMATS", "ImportRefused", "Imported", "import_files"]


@dataclasses.dataclass
class Imported:
    """What an import wrote: the run record, the point and load files, the systems, and what it left out."""

    out_dir: str
    run_id: str
    points: list[str]
    loads: list[str]
    systems: list[str]
    left_out: list[str]  # one line each: a test or level of a file that has no perfkit workload, and why


def import_files(fmt: str, paths, system: str, out_dir: str, model: str | None = None) -> Imported:
    """Import `paths` (files of format `fmt`) into results directory `out_dir` as system `system`.

    `model` names the model in every row (default: as the tool names it), so that the rows meet another
    system's on the same workloads. Where the files hold several settings of the system (llama-bench's thread
    counts, say), each gets its own label: `system` followed by the settings that differ (`LABEL n_threads=1`).
    Raises UsageError (ImportRefused for a file) before anything is written."""
    from perfkit.results import check_out_dir, lock

    module = _format_module(fmt)
    paths = _check_paths(paths)
    _check_label(system, "--system")
    if model is not None:
        _check_label(model, "--model", "a model name")
    check_out_dir(out_dir, subdirs=("points", "runs", "loads"))
    records, left_out = [], []
    for path in paths:
        got, skipped = module.parse(path)
        if not got:
            raise ImportRefused(f"{path}: holds nothing perfkit can import ({'; '.join(skipped) or 'no test'})")
        records += got
        left_out += skipped
    if model is not None:
        for r in records:
            r.model = model
    labels = _labels(records, system)
    # every file the rows come from, companions included (AIPerf's aggregate, optimum-benchmark's config beside its
    # report): each is hashed into the run id and named with its digest in the run record (a folder names its files)
    read = sorted({p for r in records for p in (r.source.file, *r.source.also_read)})
    hashes = {p: file_digest(p) for p in read}
    run_id = "import-" + digest(fmt, system, model, sorted(hashes.values()))[:16]
    now = utc_now()
    points, loads = [], []
    for r, label in zip(records, labels):
        _check_label(label, "--system", "a label (with the settings that differ, at most 100 characters)")
        created = r.source.created_utc or now
        if isinstance(r, PointRecord):
            points.append((r, point_row(r, label, run_id, created)))
        else:
            loads.append((r, load_row(r, label, run_id, created)))
    _check_unique(points, "point_key")
    _check_unique(loads, "load_key")
    command = ["perfkit", "import", fmt, *paths, "--system", system, "--out", out_dir] + (
        ["--model", model] if model is not None else [])
    record = {"run_id": run_id, "created_utc": now, "command": command,
              "import": {"format": fmt, "tool": records[0].source.tool,
                         "files": [{"path": p, "sha256": h} for p, h in hashes.items()],
                         "systems": sorted(set(labels)), "points": len(points), "loads": len(loads),
                         "left_out": left_out}}
    with lock(out_dir):
        _check_joins(out_dir, [row for _, row in points], [row for _, row in loads])
        written = _write_all(out_dir, run_id, record, [row for _, row in points], [row for _, row in loads])
    return Imported(out_dir, run_id, written["points"], written["loads"], sorted(set(labels)), left_out)


def _format_module(fmt: str):
    if fmt not in FORMATS:
        from perfkit.errors import did_you_mean

        raise UsageError(f"unknown import format {shown(fmt)}{did_you_mean(fmt, list(FORMATS))}: expected one of "
                         f"{', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[fmt])


def _check_paths(paths) -> list[str]:
    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))]
    if not paths:
        raise UsageError("no file to import: expected one or more result files of the format")
    seen = set()
    for p in paths:
        real = os.path.realpath(p)
        if real in seen:
            raise UsageError(f"{p}: given twice, expected each file once")
        seen.add(real)
    return paths


def _check_label(label, flag: str, what: str = "a label") -> None:
    from perfkit.params import MAX_NAME

    if not isinstance(label, str) or not label.strip() or len(label) > MAX_NAME or not label.isprintable():
        raise UsageError(f"{flag} {shown(label)}: expected {what} of 1 to {MAX_NAME} printable characters")


def _labels(records: list, system: str) -> list[str]:
    """Each record's system label: `system`, followed by the settings that differ between the records (each
    setting of a label is one definition of it, as perfkit's one definition per label asks)."""
    keys = sorted({k for r in records for k in r.settings})
    differ = [k for k in keys if len({json.dumps(r.settings.get(k), sort_keys=True) for r in records}) > 1]
    if not differ:
        return [system] * len(records)
    return [system + " " + " ".join(f"{k}={_setting(r.settings.get(k))}" for k in differ) for r in records]


def _setting(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _check_unique(pairs: list, key: str) -> None:
    seen = {}
    for rec, row in pairs:
        if row[key] in seen:
            first = seen[row[key]]
            raise ImportRefused(f"{rec.source.file}: {rec.where} is the same workload and system as {first.where} "
                                f"of {first.source.file} (system {row['system']!r}), expected each once")
        seen[row[key]] = rec


def _check_joins(out_dir: str, points: list[dict], loads: list[dict]) -> None:
    """Refuse rows that would make a label of `out_dir` mean two things: rows perfkit measured, or rows of
    another tool or other settings, under the same label; or (readers refuse those) several definitions."""
    import pandas as pd

    from perfkit.loads import loads_of
    from perfkit.results import check_definitions, load_results

    stored_points = load_results(out_dir) if os.path.isdir(os.path.join(out_dir, "points")) else pd.DataFrame()
    stored = [stored_points, loads_of(out_dir)]
    new = pd.DataFrame(points + loads)
    for label, mine in new.groupby("system", sort=True):
        tool = mine["source_tool"].iloc[0]
        for df in stored:
            theirs = df[df["system"] == label] if len(df) else df
            if theirs.empty:
                continue
            tools = {t if isinstance(t, str) else None for t in theirs.get("source_tool", pd.Series([None]))}
            if None in tools:
                raise UsageError(f"system {label!r} in {out_dir} holds rows perfkit measured: expected a label of its "
                                 f"own for rows imported from {tool} (--system)")
            if tools != {tool}:
                raise UsageError(f"system {label!r} in {out_dir} holds rows imported from {', '.join(sorted(tools))}: "
                                 f"expected one tool per label, import {tool}'s under another --system")
            if set(theirs["source_settings"]) != set(mine["source_settings"]):
                raise UsageError(f"system {label!r} in {out_dir} was imported with other settings than these files' "
                                 "(their source_settings differ): expected one definition per label; import them "
                                 "under another --system")
    if points:
        mine = pd.DataFrame(points)
        if len(stored_points):
            mine = pd.concat([stored_points[stored_points["system"].isin(set(mine["system"]))], mine],
                             ignore_index=True)
        check_definitions(mine, f"--out {out_dir!r} with this import")


def _write_all(out_dir: str, run_id: str, record: dict, points: list[dict], loads: list[dict]) -> dict:
    """The run record, then every row; where a write fails midway, every file this import wrote is removed
    again and every file it replaced is put back, so nothing half-imported stays."""
    from perfkit.loads import load_path, write_load
    from perfkit.results import atomic_write, point_path, write_point, write_run

    targets = [os.path.join(out_dir, "runs", f"{run_id}.json")] + \
        [point_path(out_dir, r["point_key"]) for r in points] + [load_path(out_dir, r["load_key"]) for r in loads]
    backups = {}
    for t in targets:
        try:
            with open(t, "rb") as f:
                backups[t] = f.read()
        except FileNotFoundError:
            backups[t] = None
    made = [d for d in (os.path.join(out_dir, s) for s in ("points", "runs", "loads")) if not os.path.isdir(d)]
    done = []
    out = {"points": [], "loads": []}
    try:
        done.append(write_run(out_dir, run_id, record))
        for r in points:
            path = write_point(out_dir, r)
            done.append(path)
            out["points"].append(path)
        for r in loads:
            path = write_load(out_dir, r)
            done.append(path)
            out["loads"].append(path)
    except BaseException:
        for path in reversed(done):
            with contextlib.suppress(OSError):
                if backups.get(path) is None:
                    os.unlink(path)
                else:
                    atomic_write(path, lambda f, b=backups[path]: f.write(b))
        for d in made:
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only while empty
        raise
    return out
