"""Sweeps: a params file's grid measured point by point, resumable, with a max-throughput batch search.

Order. Points are measured in two passes so that a partial study is already useful: pass 1 measures
the first batch size (normally B = 1) of every (system, model, input_len, output_len); pass 2 runs the
batch searches. Within a pass each model is built once per system, measured at all its points of that
pass, and released (gc + empty_cache) before the next is built; a model with nothing left to do in a
pass is not built. So a model is built at most twice per invocation, once when resuming mid-search.

Max-throughput search. For each (system, model, I, O) the batch sizes of the grid are tried in
ascending order, and the search stops at the first that runs out of memory (`oom`), or whose multi-user
throughput B·O/e2e gains less than `search.min_gain` over the previous batch for `search.patience`
batches in a row (`plateau`; patience 1 by default, more where a kernel change makes throughput stall at one
batch and jump at the next), or at the grid's end (`grid_end`). A plateau needs both batches measured quietly (e2e IQR/median within 10 %): a
gain read through noise as a loss takes the search one batch further rather than ending it too soon, and
a search that then reaches the grid's end says `grid_end_noisy` (it may have been done earlier). The row where a search stopped carries that reason in `search_stop` ("" on the
others) and every row its `search_gain` over the previous batch.

Durability. Every finished point is written atomically (perfkit.results) before the next one starts. A
point's key hashes everything that defines it (system fields, model, I, O, B, warm-up, repeats, seed,
and the output length it was derived from), so re-running the same command skips what is done and a
changed params file never mixes old and new measurements under one key. On a re-run the searches are
replayed from the stored rows and continue where they stopped; points that ended in `error` are retried
(`oom` is data and is kept). A results directory holds one device: resuming on another device is an error.
Every stored file is checked when read (perfkit.results.read_point): a damaged point counts as not done
and is measured again. A label holds one definition: stored points of a selected label that the params
file does not define (another dtype, repeats, ..., a smaller grid) are refused before anything is built,
or moved to DIR/stale/<timestamp>/ with `discard_stale`. A sweep holds the directory's lock
(perfkit.results.lock) throughout, so a second sweep into it is refused.
Ctrl-C ends a sweep with its outcome (`interrupted`: what it measured, how much is left); the point in
progress is lost, every finished one is stored, and the same command continues with the rest.

Out of memory at a point is an outcome: the row gets status `oom`, memory is freed, the search of that
(model, I, O) stops. Any other exception gives status `error` with its message and the sweep goes on.

Derived output lengths (`derive_output_lens: true`). Greedy decoding of the first O tokens does the
same work whatever comes after, so one run at the longest O yields the rows of every shorter O:
ttft + the first O − 1 decode steps (perfkit.metrics.truncate_e2e_s). Those rows say
`derived_from_output_len` = the O that was run; their peak memory and warm-up are the longer run's.

Time budget (`--max-minutes`). Before each model build and each point the sweep estimates its duration
from what it has measured (perfkit.budget: the measured prompt-pass and decode-step times of the same
(system, model), each scaled by how its phase's cost grows). A job that would end past the budget is
skipped, with the rest of its batch search, and the sweep goes on with the jobs that still fit: a long
prompt that does not fit never keeps the short ones of the next model from running. The same command
continues later with what was skipped.

Test hook. `PERFKIT_SWEEP_FAULT="KIND:MIN_BATCH[:MODEL][,...]"` (KIND oom, host-oom or error) makes every
point with batch >= MIN_BATCH (of MODEL, if named) raise torch.OutOfMemoryError, the host allocator's
RuntimeError (a real allocation of 2**60 bytes, refused at once) or RuntimeError just before it
is measured, so the OOM and error paths can be exercised on a CPU. It is read once when a sweep starts
and never touches the timed code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import time

import torch

from perfkit import hardware
from perfkit import results as store
from perfkit.budget import DurationEstimator, estimate_build_s
from perfkit.errors import UsageError, one_line
from perfkit.measure import PointMeasurement, check_device, is_out_of_memory, measure_point
from perfkit.metrics import truncate_e2e_s
from perfkit.models import build_model, parse_dtype
from perfkit.params import SweepParams, check_point_count, load_params
from perfkit.rows import failed_row, point_key, to_row, with_provenance
from perfkit.search import BatchRun, BatchSearch, SearchSpec, iter_search_specs, search_specs
from perfkit.workload import Point, System

FAULT_ENV = "PERFKIT_SWEEP_FAULT"

_now = time.perf_counter  # the budget's clock (a test replaces it to inject timings)


# ---- what a sweep is made of ----------------------------------------------------------------------

# ---- what defines a point ----------------------------------------------------------------------

def key_fields(params: SweepParams, spec: SearchSpec, output_len: int, batch: int) -> dict:
    """Everything that defines a point; its hash is the point's key (and file name)."""
    s = spec.system
    return {
        "system": s.label, "backend": s.backend, "dtype": s.dtype, "device": s.device,
        "attn_implementation": s.attn_implementation, "model": spec.model, "input_len": spec.input_len,
        "output_len": output_len, "batch": batch, "warmup": params.warmup, "repeats": params.repeats,
        "seed": params.seed, "derived_from_output_len": None if output_len == spec.run_output_len else spec.run_output_len,
    }


# ---- reading what is already done ----------------------------------------------------------------

def _wanted(params: SweepParams, all_specs: list[SearchSpec]) -> set[str]:
    """The keys of every point this plan may measure (each search's every batch)."""
    return {point_key(key_fields(params, u, o, b)) for u in all_specs for o in u.output_lens
            for b in params.batch_sizes}


@dataclasses.dataclass
class _Stored:
    """What a results directory already holds, as this plan sees it."""

    rows: dict[str, dict]  # this plan's points, by key
    stale: dict[str, dict]  # points of this plan's system labels that the plan does not define, by key
    paths: dict[str, str]  # key -> file, of every readable point
    other: int  # points of other system labels
    devices: dict[str, set[str]]  # device names per system label, stale points left out


def _done_rows(out_dir: str, params: SweepParams, all_specs: list[SearchSpec], dry_run: bool = False) -> _Stored:
    """Read `out_dir`'s points: this plan's rows by key, the stale points of its labels, the others.

    Every file is checked (perfkit.results.read_point). A damaged file is named on stderr, one line each;
    where it is one of this plan's points, that point counts as not done, so the sweep measures it again
    and its atomic write replaces the file.
    """
    scan = store.scan_points(out_dir) if os.path.isdir(out_dir) else store.Scan({}, {}, {}, [])
    wanted = _wanted(params, all_specs)
    for path, reason in scan.skipped:
        again = os.path.basename(path)[: -len(".parquet")] in wanted
        tail = (f"; its point counts as not done and {'would be' if dry_run else 'is'} measured again"
                if again else "")
        print(f"perfkit: warning: skipped {path}: {reason}{tail}", file=sys.stderr, flush=True)
    labels = {u.system.label for u in all_specs}
    rows, stale, other, devices = {}, {}, 0, {}
    for key, row in scan.rows.items():
        if key in wanted:
            rows[key] = row
        elif row["system"] in labels:
            stale[key] = row
            continue  # refused, or moved aside: it says nothing about this directory's device
        else:
            other += 1
        if row["device_name"] is not None:
            devices.setdefault(row["system"], set()).add(row["device_name"])
    return _Stored(rows, stale, scan.paths, other, devices)


def _values(rows: list[dict], column: str) -> set[str]:
    return {store._shown(r.get(column)) for r in rows if not store._missing(r.get(column))}


def _stale_reason(params: SweepParams, system: System, rows: list[dict]) -> str:
    """What sets a label's stale points apart from this plan: its definition, else its grid."""
    runs = sum(r.get("sweep_name") is None for r in rows)
    here = {"dtype": system.dtype, "backend": system.backend, "attn_implementation": system.attn_implementation,
            "device": system.device, "warmup": params.warmup, "repeats": params.repeats, "seed": params.seed}
    parts = [f"{runs} from perfkit run"] if runs else []
    for column, value in here.items():
        rows_of = [r for r in rows if r["status"] == "ok"] if column == "repeats" else rows
        there = _values(rows_of, column) - {str(value)}
        if there:
            parts.append(f"{column} {', '.join(sorted(there))} there, {value} here")
    derived = any(not store._missing(r.get("derived_from_output_len")) for r in rows)
    if derived and not params.derive_output_lens:
        parts.append("derive_output_lens true there, false here")
    if len(parts) == bool(runs):  # the definition is the same: the grid differs
        grid = {"model": params.models, "input_len": params.input_lens, "output_len": params.output_lens,
                "batch": params.batch_sizes}
        outside = [f"{column} {', '.join(sorted(_values(rows, column) - {str(v) for v in values}))}"
                   for column, values in grid.items() if _values(rows, column) - {str(v) for v in values}]
        # with derived output lengths, each is read off a run at the longest O that fits: a longer O
        # changes that run, and so the definition of every shorter O
        run_lens = {str(r["output_len"] if store._missing(r.get("derived_from_output_len"))
                        else r["derived_from_output_len"]) for r in rows}
        longest = str(max(params.output_lens))
        if outside:
            parts.append(f"outside this grid: {'; '.join(outside)}")
        elif params.derive_output_lens and run_lens - {longest}:
            parts.append(f"output lengths read off a run at O={', '.join(sorted(run_lens - {longest}, key=int))} "
                         f"there, O={longest} here")
        elif not runs:
            parts.append("not points of this plan")
    return "; ".join(parts)


def _stale_message(params: SweepParams, chosen: list[System], out_dir: str, stale: dict[str, dict]) -> str:
    by_label: dict[str, list[dict]] = {}
    for row in stale.values():
        by_label.setdefault(row["system"], []).append(row)
    parts = [f"system {s.label!r}: {out_dir} holds {_points(len(by_label[s.label]))} this params file does not "
             f"define ({_stale_reason(params, s, by_label[s.label])})" for s in chosen if s.label in by_label]
    return (f"{'; '.join(parts)}: expected only points of this plan under its labels (a grown grid resumes); use "
            f"another --out, or --discard-stale to move them to {out_dir}/{store.STALE}/<timestamp>/")


def _points(n: int) -> str:
    return f"{n} point" if n == 1 else f"{n} points"


def _discard_stale(out_dir: str, stored: _Stored) -> None:
    """--discard-stale: move the stale points aside, in one rename of a folder (perfkit.results.move_aside)."""
    if not stored.stale:
        return
    dest = store.move_aside(out_dir, [stored.paths[k] for k in stored.stale])
    labels = ", ".join(sorted({r["system"] for r in stored.stale.values()}))
    print(f"perfkit: moved {_points(len(stored.stale))} of {labels} that this params file does not define to {dest}",
          file=sys.stderr, flush=True)


def _replay(params: SweepParams, all_specs: list[SearchSpec], done: dict[str, dict]) -> list[BatchSearch]:
    """Rebuild every search's state from the stored rows: it resumes at the first job not fully stored."""
    searches = []
    for spec in all_specs:
        s = BatchSearch(spec, params.batch_sizes, params.min_gain, params.patience)
        while not s.finished():
            job = s.next_job()
            rows = {o: done.get(point_key(key_fields(params, spec, o, job.batch))) for o in job.output_lens}
            if any(r is None or r["status"] == "error" for r in rows.values()):
                break
            s.judge({o: dict(r) for o, r in rows.items()})
        searches.append(s)
    return searches


def _as_params(params_or_path, yes: bool = False) -> SweepParams:
    return params_or_path if isinstance(params_or_path, SweepParams) else load_params(params_or_path, yes=yes)


def _select(params: SweepParams, labels: list[str] | None) -> list[System]:
    if not labels:
        return list(params.systems)
    return [params.system(label) for label in dict.fromkeys(labels)]


# ---- dry run -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    params: SweepParams
    out_dir: str
    points: list[dict]  # system, model, input_len, output_len, batch, derived_from_output_len, pass, status
    other_points: int  # points in out_dir of other system labels (not this plan's)
    stale: int = 0  # points of this plan's labels it does not define, that --discard-stale would move aside

    counts: dict | None = None  # {(pass, status): n} where `points` lists only the first of a huge plan
    unlisted: int = 0  # points counted in `counts` but not listed in `points`

    def count(self, status: str) -> int:
        if self.counts is not None:
            return sum(n for (_, st), n in self.counts.items() if st == status)
        return sum(p["status"] == status for p in self.points)

    def pass_counts(self) -> dict[int, dict[str, int]]:
        """{pass: {status: n}} over the whole plan, listed or not."""
        out: dict[int, dict[str, int]] = {1: {}, 2: {}}
        pairs = self.counts.items() if self.counts is not None else (
            ((p["pass"], p["status"]), 1) for p in self.points)
        for (pass_, status), n in pairs:
            out.setdefault(pass_, {})[status] = out.get(pass_, {}).get(status, 0) + n
        return out


def plan(params_or_path, systems: list[str] | None = None, out_dir: str | None = None,
         discard_stale: bool = False, yes: bool = False) -> Plan:
    """What a sweep would measure. Status per point: done, todo (certain), search (only if the batch
    search gets that far). Points of searches that already stopped are not listed. Refuses, as the sweep
    would, a directory holding points of these labels that the plan does not define (unless discard_stale),
    and a grid beyond max_points unless `yes`.

    A plan of more than PLAN_EXACT_MAX points is counted rather than enumerated (`_plan_counted`): its
    `points` list the first PLAN_LISTED, `counts` and `unlisted` cover the rest, at once for any grid."""
    params = _as_params(params_or_path, yes)
    chosen = _select(params, systems)
    out_dir = out_dir or os.path.join("results", params.name)
    store.check_out_dir(out_dir, writable=False)  # a plan only reads: a read-only results directory is fine
    if params.point_count(chosen) > PLAN_EXACT_MAX:
        return _plan_counted(params, chosen, out_dir, discard_stale)
    all_specs = search_specs(params, chosen)
    stored = _done_rows(out_dir, params, all_specs, dry_run=True)
    if stored.stale and not discard_stale:
        raise UsageError(_stale_message(params, chosen, out_dir, stored.stale))
    done, other = stored.rows, stored.other
    points = []
    for s in _replay(params, all_specs, done):
        u = s.spec

        def entry(batch, o, status):
            points.append({"system": u.system.label, "model": u.model, "input_len": u.input_len, "output_len": o,
                           "batch": batch, "derived_from_output_len": None if o == u.run_output_len else u.run_output_len,
                           "pass": 1 if batch == s.batches[0] else 2, "status": status})

        for batch, o in s.history:
            entry(batch, o, "done")
        if not s.finished():
            live = s.live()
            for i, batch in enumerate(s.batches[s.next_index:]):
                for o in live:
                    entry(batch, o, "todo" if i == 0 or batch == s.batches[0] else "search")
    points.sort(key=lambda p: p["pass"])  # stable: within a pass, execution order
    return Plan(params, out_dir, points, other, len(stored.stale))


PLAN_EXACT_MAX = 20_000  # points a plan enumerates one by one (a fraction of a second)
PLAN_LISTED = 500  # points a counted plan lists


def _search_entries(s: BatchSearch, fresh: bool = False, pass_: int | None = None):
    """plan()'s entries of one search (of one pass, if given), in execution order. `fresh`: a search with
    nothing stored, whose entries follow from its spec alone."""
    u = s.spec
    if fresh and pass_ is not None:  # pass 1 is the first batch, pass 2 the others: make only those
        batches = s.batches[:1] if pass_ == 1 else s.batches[1:]
        for batch in batches:
            for o in u.output_lens:
                yield {"system": u.system.label, "model": u.model, "input_len": u.input_len, "output_len": o,
                       "batch": batch,
                       "derived_from_output_len": None if o == u.run_output_len else u.run_output_len,
                       "pass": pass_, "status": "todo" if pass_ == 1 else "search"}
        return

    def entry(batch, o, status):
        return {"system": u.system.label, "model": u.model, "input_len": u.input_len, "output_len": o,
                "batch": batch, "derived_from_output_len": None if o == u.run_output_len else u.run_output_len,
                "pass": 1 if batch == s.batches[0] else 2, "status": status}

    if not fresh:
        for batch, o in s.history:
            yield entry(batch, o, "done")
    if fresh or not s.finished():
        live = u.output_lens if fresh else s.live()
        for i, batch in enumerate(s.batches[0 if fresh else s.next_index:]):
            for o in live:
                yield entry(batch, o, "todo" if i == 0 or batch == s.batches[0] else "search")


def _spec_of(params: SweepParams, chosen: dict[str, System], row: dict) -> SearchSpec | None:
    """The search a stored row would belong to in this plan, from its fields (the key decides whether it
    does: _done_rows)."""
    system, model, input_len = chosen.get(row.get("system")), row.get("model"), row.get("input_len")
    if system is None or model not in params.models or input_len not in params.input_lens:
        return None
    outs = params.output_lens_for(model, input_len)
    if not outs:
        return None
    if params.derive_output_lens:
        return SearchSpec(system, model, input_len, max(outs), outs)
    o = row.get("output_len")
    return SearchSpec(system, model, input_len, o, (o,)) if o in outs else None


def _plan_counted(params: SweepParams, chosen: list[System], out_dir: str, discard_stale: bool) -> Plan:
    """plan() of a huge grid without enumerating it: only the searches that have stored rows are replayed
    (plus one per system, so that its stale points are found); every other search is fresh, and its
    points follow from its spec: pass 1 its first batch (todo), pass 2 the rest (search)."""
    by_label = {s.label: s for s in chosen}
    touched: dict[SearchSpec, None] = {}
    if os.path.isdir(out_dir):
        for row in store.scan_points(out_dir).rows.values():
            spec = _spec_of(params, by_label, row)
            if spec is not None:
                touched[spec] = None
    for system in chosen:
        first = next(iter_search_specs(params, [system]), None)
        if first is not None:
            touched.setdefault(first, None)
    stored = _done_rows(out_dir, params, list(touched), dry_run=True)
    if stored.stale and not discard_stale:
        raise UsageError(_stale_message(params, chosen, out_dir, stored.stale))
    replayed = {s.spec: s for s in _replay(params, list(touched), stored.rows)}

    n_batches = len(params.batch_sizes)
    runs = params.point_count(chosen) // n_batches  # (search, output length) pairs, all of them
    counts = {(1, "todo"): runs, (2, "search"): (n_batches - 1) * runs}
    for spec, s in replayed.items():  # their fresh share out, their replayed entries in
        counts[(1, "todo")] -= len(spec.output_lens)
        counts[(2, "search")] -= (n_batches - 1) * len(spec.output_lens)
        for e in _search_entries(s):
            counts[(e["pass"], e["status"])] = counts.get((e["pass"], e["status"]), 0) + 1
    counts = {k: n for k, n in counts.items() if n}

    def entries(pass_):
        for spec in iter_search_specs(params, chosen):
            s = replayed.get(spec)
            fresh = s is None
            if fresh:
                s = BatchSearch(spec, params.batch_sizes, params.min_gain, params.patience)
            yield from (e for e in _search_entries(s, fresh, pass_) if e["pass"] == pass_)

    points = []
    for pass_ in (1, 2):
        for e in entries(pass_):
            if len(points) == PLAN_LISTED:
                break
            points.append(e)
    total = sum(counts.values())
    return Plan(params, out_dir, points, stored.other, len(stored.stale), counts=counts, unlisted=total - len(points))


# ---- running -------------------------------------------------------------------------------------

@dataclasses.dataclass
class SweepOutcome:
    out_dir: str
    run_id: str | None
    measured: int  # rows written by this invocation (derived rows included)
    skipped: int  # rows already stored when it started (resume)
    failures: list[dict]  # rows with status "error" written by this invocation
    ooms: list[dict]  # rows with status "oom" written by this invocation
    stopped_early: bool  # jobs were left out for the time budget; the same command continues
    left: int  # runs still to do (an upper bound: searches may stop earlier)
    wall_s: float
    build_s: list[dict]  # {"system", "model", "seconds"} per model build
    interrupted: bool = False  # Ctrl-C stopped it between or inside points; every finished point is stored
    workers: int = 0  # a Ray sweep's workers (GPUs or CPUs measuring at once, at most one per unit); 0: serial
    lost: list[str] = dataclasses.field(default_factory=list)  # units whose Ray task failed past its retries


class _Faults:
    """The PERFKIT_SWEEP_FAULT test hook (see the module docstring)."""

    def __init__(self, spec: str | None):
        self.rules = []
        for part in filter(None, (spec or "").split(",")):
            fields = part.strip().split(":", 2)
            if len(fields) < 2 or fields[0] not in ("oom", "host-oom", "error") or not fields[1].isdigit():
                raise UsageError(f"{FAULT_ENV}={spec[:200]!r}: bad rule {part[:100]!r}, expected "
                                 "KIND:MIN_BATCH[:MODEL] with KIND oom, host-oom or error")
            self.rules.append((fields[0], int(fields[1]), fields[2] if len(fields) == 3 else None))

    def check(self, job: BatchRun) -> None:
        for kind, min_batch, model in self.rules:
            if job.batch >= min_batch and model in (None, job.spec.model):
                if kind == "oom":
                    raise torch.OutOfMemoryError(f"injected out of memory at batch {job.batch} ({FAULT_ENV})")
                if kind == "host-oom":  # torch's host allocator refuses 2**60 bytes at once: no memory is touched
                    torch.empty(2**60, dtype=torch.uint8)
                raise RuntimeError(f"injected failure at batch {job.batch} ({FAULT_ENV})")


def _free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exc:  # an allocator left unusable (a failed graph capture): the points go on
            print(f"perfkit: warning: could not release cached CUDA memory ({one_line(exc, 200, with_type=True)})",
                  file=sys.stderr, flush=True)


def _truncated(m: PointMeasurement, output_len: int) -> PointMeasurement:
    """The measurement of a shorter generation read off a longer one (same prompt, same greedy tokens).

    Energy is read once per whole repeat, so the shorter generation's share is unknown: left out."""
    unknown = {f: None for f in ("energy_j", "power_w") if hasattr(m, f)}
    return dataclasses.replace(
        m,
        point=dataclasses.replace(m.point, output_len=output_len),
        e2e_s=truncate_e2e_s(m.ttft_s, m.step_s, output_len),
        step_s=[steps[: output_len - 1] for steps in m.step_s],
        tokens=m.tokens[:, :output_len],
        **unknown,
    )


# ---- one unit: a model build and the searches that share it ----------------------------------------
#
# The serial sweep and the Ray sweep (perfkit.ray_sweep) run the same code for a unit, _UnitRunner.run: it
# builds the model once, runs the unit's jobs of the passes it is given, judges each job's rows (the batch
# search) and yields what happened as events. Whoever consumes the events writes: the serial sweep in this
# process (_SweepRunner.handle), the Ray sweep in the driver, which receives each event from the worker as it
# happens. Events are plain tuples (they travel between processes):
#
#   ("status", text)                  what the unit is doing now (the progress bar's note)
#   ("built", record)                 a model build: {"system", "model", "dtype", "seconds"}
#   ("wait", index)                   search `index` of the unit waits for a later invocation (time budget)
#   ("job", index, rows, fresh)       one job of search `index`: {output_len: row}, each row complete with
#                                     its provenance; `fresh`: measured now, to be written; else rows stored
#                                     by an earlier invocation, judged again (stored past an error)


class _UnitRunner:
    """Runs units: builds a unit's model, measures its jobs, yields events (above).

    `env_for(device)` is the provenance of the machine that measures (the serial sweep's, a Ray worker's);
    `done` the rows stored before this invocation (by key); `received` the rows this invocation's writer already
    has for the unit (a Ray task retried after its worker died: those jobs are judged from them, not
    measured again, and not sent again). `clock` and `deadline` (same clock) set the time budget; `measure`
    and `build` default to perfkit.sweep's measure_point and build_model as they are when a job runs.
    `local_device(device)` is the device to build and measure on (a Ray task's one GPU is its "cuda")."""

    def __init__(self, params: SweepParams, run_id: str, env_for, faults: _Faults, deadline: float | None,
                 clock, estimators: dict, builds: list, done: dict | None = None, received: dict | None = None,
                 measure=None, build=None, local_device=None):
        self.params, self.run_id, self.env_for, self.faults = params, run_id, env_for, faults
        self.deadline, self.clock, self.estimators, self.builds = deadline, clock, estimators, builds
        self.done, self.received = done or {}, received or {}
        self._measure, self._build, self.local_device = measure, build, local_device or (lambda d: d)

    def measure(self, *a, **kw):
        return (self._measure or measure_point)(*a, **kw)

    def build(self, *a, **kw):
        return (self._build or build_model)(*a, **kw)

    def estimator(self, label: str) -> DurationEstimator | None:
        system = next((s for s in self.params.systems if s.label == label), None)
        return self.estimators.get(system.device) if system else None

    def learn(self, rows) -> None:
        """Seed the duration estimates from stored rows, so a resumed sweep budgets its first points too."""
        for row in sorted(rows, key=lambda r: r.get("created_utc") or ""):
            estimator = self.estimator(row.get("system"))
            if estimator is not None:
                estimator.learn(row)

    def fits(self, seconds: float) -> bool:
        return self.deadline is None or self.clock() + seconds <= self.deadline

    def estimate_job(self, job: BatchRun) -> float:
        u = job.spec
        estimator = self.estimator(u.system.label)
        if estimator is None:
            return 0.0
        return estimator.estimate(u.system.label, u.model, job.batch, u.input_len, u.run_output_len,
                                  self.params.warmup + self.params.repeats)

    def estimate_build(self, system: System, model: str) -> float:
        return estimate_build_s(self.builds, model, system.dtype)

    def _catch_up(self, search: BatchSearch) -> None:
        """Judge the jobs whose rows this invocation's writer already holds (a retried Ray task)."""
        while self.received and not search.finished():
            job = search.next_job()
            rows = {o: self.received.get(point_key(key_fields(self.params, job.spec, o, job.batch)))
                    for o in job.output_lens}
            if any(r is None for r in rows.values()):
                return
            search.judge({o: dict(r) for o, r in rows.items()})

    def run(self, system: System, model: str, searches: list[BatchSearch], passes=(False,), proceed=None):
        """Run one unit's jobs, pass by pass (True: pass 1, each search's first batch; False: the searches),
        building the model at most once for all of them, and yield the events. Before each pass after the
        first, `proceed()` says whether to go on (a Ray task goes on into pass 2 with the model it has built
        when no unit waits for its pass 1); when it says no, the unit stops there."""
        for s in searches:
            self._catch_up(s)
        device = self.local_device(system.device)
        built, build_failure, have = None, None, False
        try:
            for n, first_only in enumerate(passes):
                if n and proceed is not None and not proceed():
                    return
                if build_failure:  # as a serial sweep does, each pass tries the build again
                    built, build_failure, have = None, None, False
                pending = [(i, s) for i, s in enumerate(searches)
                           if not s.finished() and (s.next_index == 0 or not first_only)]
                if not pending:
                    continue
                if not have:
                    # Build only if the build and at least one of its jobs fit; otherwise every pending job waits.
                    build_s = self.estimate_build(system, model)
                    if not any(self.fits(build_s + self.estimate_job(s.next_job())) for _, s in pending):
                        for i, _ in pending:
                            yield ("wait", i)
                        continue
                    yield ("status", f"building {model}")
                    t = self.clock()
                    try:
                        built = self.build(model, parse_dtype(system.dtype), device, system.attn_implementation,
                                           seed=self.params.seed)
                    except Exception as exc:  # out of memory, a broken checkpoint: failed points, not a failed sweep
                        build_failure = ("oom" if is_out_of_memory(exc) else "error",
                                         f"building the model: {one_line(exc, with_type=True)}")
                    record = {"system": system.label, "model": model, "dtype": system.dtype,
                              "seconds": self.clock() - t}
                    self.builds.append(record)
                    have = True
                    yield ("built", record)
                    if build_failure:
                        _free_memory(device)
                for i, s in pending:
                    while not s.finished():
                        job = s.next_job()
                        if not self.fits(self.estimate_job(job)):
                            # this search waits (its later batches cost more still); the others go on
                            yield ("wait", i)
                            break
                        yield from self._job(built, build_failure, i, s, job)
                        if first_only:
                            break
        finally:
            built = None  # the only reference: the model's memory goes back before the next build
            _free_memory(device)

    def _job(self, model, build_failure, index: int, search: BatchSearch, job: BatchRun):
        u, p = job.spec, self.params
        yield ("status", f"{u.system.label} {u.model} I={u.input_len} O={u.run_output_len} B={job.batch}")
        stored = {o: self.done.get(point_key(key_fields(p, u, o, job.batch))) for o in job.output_lens}
        if all(r is not None and r["status"] in ("ok", "oom") for r in stored.values()):
            # Stored by an earlier invocation past an error that stopped the replay (errors are retried, the
            # points after them are not): judge the stored rows, spend no device time on them again.
            rows = {o: dict(r) for o, r in stored.items()}
            search.judge(rows)
            yield ("job", index, rows, False)
            return
        device = self.local_device(u.system.device)
        status, error, m = "ok", None, None
        if build_failure:
            status, error = build_failure
        else:
            try:
                self.faults.check(job)
                system = u.system if device == u.system.device else dataclasses.replace(u.system, device=device)
                m = self.measure(model, system, Point(u.model, u.input_len, u.run_output_len, job.batch),
                                 warmup=p.warmup, repeats=p.repeats, seed=p.seed)
            except Exception as exc:
                status, error = ("oom" if is_out_of_memory(exc) else "error"), one_line(exc, with_type=True)
            if status != "ok":  # outside the except block: the traceback no longer pins the tensors
                _free_memory(device)
        rows = {}
        for o in job.output_lens:
            if status == "ok":
                rows[o] = to_row(m if o == u.run_output_len else _truncated(m, o))
            else:
                rows[o] = failed_row(u.system, Point(u.model, u.input_len, o, job.batch), status, error)
        search.judge(rows)
        env = self.env_for(u.system.device)
        full = {}
        for o, row in rows.items():
            full[o] = with_provenance(row, self.run_id, env, key_fields(p, u, o, job.batch))
            full[o]["sweep_name"] = p.name
        if status == "ok":  # the run as measured (at run_output_len, which the search may have stopped)
            self.estimator(u.system.label).learn({**to_row(m), "warmup": p.warmup})
        yield ("job", index, full, True)


class _SweepRunner:
    """The writer of a sweep: stores the rows of the events a unit yields (serial: _UnitRunner in this
    process; Ray: the workers' events, received by the driver), counts them and moves the progress bar."""

    def __init__(self, params, out_dir, envs, faults, max_minutes, bar, t0):
        from perfkit.provenance import new_run_id

        self.params, self.out_dir, self.envs, self.faults, self.bar = params, out_dir, envs, faults, bar
        self.run_id = new_run_id()
        self.run_written = False
        self.run_extra: dict = {}  # more for the run record (a Ray sweep: the cluster and its workers)
        self.deadline = None if max_minutes is None else t0 + max_minutes * 60
        self.stopped = False  # some job was left out because it would not have fit the time budget
        self.measured, self.failures, self.ooms, self.builds = 0, [], [], []
        self.lost: list[str] = []  # units a Ray sweep gave up on (their worker died more often than retried)
        # one estimator per device, each with that device's peaks where known (perfkit.hardware)
        estimators = {device: DurationEstimator(hardware.lookup(env.get("device_name")))
                      for device, env in envs.items()}
        self.units = _UnitRunner(params, self.run_id, lambda device: self.envs[device], faults, self.deadline,
                                 lambda: _now(), estimators, self.builds)

    # the budget, as the serial sweep (and its tests) ask it
    def learn(self, done: dict[str, dict]) -> None:
        self.units.done = done
        self.units.learn(done.values())

    def _fits(self, seconds: float) -> bool:
        return self.units.fits(seconds)

    def _estimate_job(self, job: BatchRun) -> float:
        return self.units.estimate_job(job)

    def run_model(self, system: System, model: str, searches: list[BatchSearch], first_only: bool) -> None:
        """One unit's jobs of one pass, in this process."""
        for event in self.units.run(system, model, searches, (first_only,)):
            self.handle(event, searches)

    def handle(self, event: tuple, searches: list[BatchSearch], remote: bool = False) -> None:
        """Act on one event of a unit whose searches are `searches`. `remote`: the event comes from another
        process (a Ray worker), whose judging these copies of the searches repeat, and whose builds count
        here."""
        kind = event[0]
        if kind == "status":
            self.bar.set_postfix_str(event[1], refresh=event[1].startswith("building"))
        elif kind == "built":
            if remote:
                self.builds.append(event[1])
        elif kind == "wait":
            self.stopped = True
        elif kind == "job":
            _, index, rows, fresh = event
            search = searches[index]
            if remote:
                search.judge(rows)  # the worker's rule on the same rows: the same annotations, the same state
            if fresh:
                self.write(rows)
            self._advance_bar(search)

    def write(self, rows: dict[int, dict]) -> None:
        """Store one job's rows, each atomically under its key (perfkit.results.write_point)."""
        self._write_run()
        for row in rows.values():
            store.write_point(self.out_dir, row)
            self.measured += 1
            if row["status"] == "error":
                self.failures.append(row)
            elif row["status"] == "oom":
                self.ooms.append(row)

    def _write_run(self, again: bool = False) -> None:
        if self.run_written and not again:
            return
        env = next(iter(self.envs.values()))
        prov = {**env, "run_id": self.run_id, "command": sys.argv, "sweep": self.params.as_dict(),
                "environments": self.envs, **self.run_extra}
        store.write_run(self.out_dir, self.run_id, prov)
        self.run_written = True

    def _advance_bar(self, search: BatchSearch) -> None:
        self.bar.update(1)
        if search.finished() and search.next_index < len(search.batches):  # stopped early: fewer runs left
            self.bar.total -= len(search.batches) - search.next_index
            self.bar.refresh()


def _by_model(searches: list[BatchSearch]) -> list[tuple[System, str, list[BatchSearch]]]:
    """Group searches by what building the model depends on (model, dtype, device, attention).

    Systems that differ only in backend (hf-loop vs static) run on one build: the weights are the same,
    and a full-size build costs seconds of device time that a sweep under a time budget cannot spare. The first
    system of a group stands for the build; each search still measures with its own system.
    """
    groups: dict[tuple, list[BatchSearch]] = {}
    for s in searches:
        u = s.spec
        groups.setdefault((u.model, u.system.dtype, u.system.device, u.system.attn_implementation), []).append(s)
    return [(group[0].spec.system, group[0].spec.model, group) for group in groups.values()]


def _environments(params: SweepParams, systems: list[System], searches: list[BatchSearch],
                  out_dir: str, devices: dict[str, set[str]] | None = None) -> dict[str, dict]:
    """Check each device that has work and record its provenance; refuse to mix devices in one directory."""
    from perfkit.provenance import environment

    envs, stored = {}, None
    for system in systems:
        if not any(s.spec.system == system and not s.finished() for s in searches):
            continue
        if system.device not in envs:
            try:
                check_device(system.device)
            except UsageError as exc:
                raise UsageError(f"{params.source}: system {system.label!r}: {exc}") from None
            envs[system.device] = environment(system.device)
        here = envs[system.device]["device_name"]
        # Every stored point of this label counts, not only this plan's: an older params version measured
        # elsewhere under the same label would otherwise mix devices in one directory.
        if stored is None:
            stored = devices if devices is not None else (
                store.devices_by_system(out_dir) if os.path.isdir(out_dir) else {})
        other = sorted(stored.get(system.label, set()) - {here})
        if other:
            raise UsageError(f"system {system.label!r}: the results directory holds points measured on "
                             f"{other[0]!r}, this machine is {here!r}: expected the same device "
                             "(use another --out)")
    return envs


SWEEP_MAX_POINTS = 1_000_000  # points one invocation tracks (its searches' state), --yes or not


def run_sweep(params_or_path, systems: list[str] | None = None, out_dir: str | None = None,
              max_minutes: float | None = None, progress: bool = True, discard_stale: bool = False,
              yes: bool = False, ray: str | None = None) -> SweepOutcome:
    """Measure every point of a params file (skipping those already stored in `out_dir`).

    Holds the results directory's lock (perfkit.results.lock) throughout: a second sweep into the same
    directory is refused, naming this one. Under the lock it first removes the temporary files of
    interrupted writes, then refuses points of its labels that the params file does not define (another
    version of it: a changed system, warm-up, repeats, seed or a smaller grid), or with `discard_stale`
    moves them to DIR/stale/<timestamp>/. Bad input is refused before anything is written.

    A grid beyond max_points is refused unless `yes` (perfkit sweep --yes), and one beyond SWEEP_MAX_POINTS
    in any case. Ctrl-C (KeyboardInterrupt) ends it with an outcome whose `interrupted` is set: the points
    finished before it are stored, the same command continues with the rest.

    `ray`: run the units (_by_model's groups) as Ray tasks, one GPU (or CPU) each, across a node or a
    cluster (perfkit.ray_sweep): "local" (or "") starts a Ray instance on this machine, "auto",
    "ray://HOST:PORT" or "HOST:PORT" joins a running cluster. This process stays the one writer and holds
    the lock; the results are those of a serial sweep. None: a serial sweep in this process.
    """
    params = _as_params(params_or_path, yes)
    check_point_count(params, _select(params, systems), yes=True, limit=SWEEP_MAX_POINTS)
    out_dir = out_dir or os.path.join("results", params.name)
    store.check_out_dir(out_dir)
    _check_max_minutes(max_minutes)
    _Faults(os.environ.get(FAULT_ENV))
    cluster = None
    if ray is not None:
        cluster = ray_module().Connection(ray)  # Ray importable, a well-formed address; connects later
    with store.lock(out_dir):
        removed = store.remove_interrupted_writes(out_dir)
        if removed:
            print(f"perfkit: removed {removed} temporary files of interrupted writes from {out_dir}",
                  file=sys.stderr, flush=True)
        return _run_sweep(params, systems, out_dir, max_minutes, progress, discard_stale, cluster)


RAY_HINT = "pip install 'perfkit[ray]'"


def ray_module():
    """perfkit.ray_sweep, where Ray is importable; UsageError with the install line where it is not. The
    measuring core never imports Ray: only this path does (a GPU machine may have no Ray)."""
    import importlib

    try:
        importlib.import_module("ray")
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed here: {RAY_HINT} (or pip install 'ray>=2.40')") \
            from None
    return importlib.import_module("perfkit.ray_sweep")


def _check_max_minutes(max_minutes) -> None:
    if max_minutes is not None and not (isinstance(max_minutes, (int, float)) and max_minutes > 0):
        raise UsageError(f"max_minutes {max_minutes!r} is not a positive number of minutes")


def _run_sweep(params: SweepParams, systems: list[str] | None, out_dir: str, max_minutes: float | None,
               progress: bool, discard_stale: bool, cluster=None) -> SweepOutcome:
    """run_sweep's work, under the directory's lock. `cluster`: a perfkit.ray_sweep.Connection, not yet
    connected (it connects only where there is work)."""
    from tqdm import tqdm

    t0 = _now()
    # Freeing memory between models and after out-of-memory runs gc.collect(), which scans every object
    # alive: with torch, transformers and pandas loaded that is ~0.3 s a call. What exists now (modules,
    # their tables) lives as long as the process anyway: collect once and exempt it from later scans.
    gc.collect()
    gc.freeze()
    chosen = _select(params, systems)
    budget = max_minutes if max_minutes is not None else params.max_minutes
    faults = _Faults(os.environ.get(FAULT_ENV))
    all_specs = search_specs(params, chosen)
    stored = _done_rows(out_dir, params, all_specs)
    if stored.stale and not discard_stale:
        raise UsageError(_stale_message(params, chosen, out_dir, stored.stale))
    done = stored.rows
    searches = _replay(params, all_specs, done)
    skipped = sum(len(s.history) for s in searches)
    with contextlib.ExitStack() as stack:
        if cluster is not None and any(not s.finished() for s in searches):
            stack.enter_context(cluster)  # connects (or starts a local instance); shut down on the way out
            envs = cluster.environments(params, chosen, searches, out_dir, stored.devices)
        else:
            cluster = None
            envs = _environments(params, chosen, searches, out_dir, stored.devices)
        _discard_stale(out_dir, stored)

        total = sum(s.remaining() for s in searches)
        with tqdm(total=total, desc=params.name, unit="pt", file=sys.stderr,
                  disable=not progress or total == 0, dynamic_ncols=True) as bar:
            runner = _SweepRunner(params, out_dir, envs, faults, budget, bar, t0)
            runner.learn(done)
            groups = _by_model(searches)
            interrupted = False
            try:
                if cluster is None:
                    for first_only in (True, False):  # pass 1: the first batch everywhere; pass 2: the searches
                        for system, model, group in groups:
                            runner.run_model(system, model, group, first_only)
                else:
                    cluster.run(runner, groups, done, None if budget is None else budget * 60 - (_now() - t0))
            except KeyboardInterrupt:  # Ctrl-C: what finished is stored (atomically, point by point); say so
                interrupted = True
    return SweepOutcome(out_dir=out_dir, run_id=runner.run_id if runner.run_written else None,
                        measured=runner.measured, skipped=skipped, failures=runner.failures, ooms=runner.ooms,
                        stopped_early=runner.stopped and any(not s.finished() for s in searches),
                        left=sum(s.remaining() for s in searches),
                        wall_s=_now() - t0, build_s=runner.builds, interrupted=interrupted,
                        workers=cluster.workers if cluster is not None else 0, lost=runner.lost)
