"""From a params file to a sweep's work: the batch searches, what a results directory already holds of
them, and the searches' state replayed from it. `plan` is `perfkit sweep --dry-run`. See docs/sweeps.md.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from perfkit import results as store
from perfkit.errors import UsageError, printable
from perfkit.params import SweepParams, check_point_count, load_params
from perfkit.paths import default_out_dir
from perfkit.registry import checkpoint_fingerprint
from perfkit.rows import point_fields, point_key
from perfkit.sweep.search import BatchSearch, SearchSpec, search_specs
from perfkit.workload import System


def as_params(params_or_path, yes: bool = False) -> SweepParams:
    """A SweepParams as given, or read (and checked) from its file."""
    return params_or_path if isinstance(params_or_path, SweepParams) else load_params(params_or_path, yes=yes)


def select(params: SweepParams, labels: list[str] | None) -> list[System]:
    """The systems of `labels` (each once, in the given order), or all of the file's; an unknown label is a
    UsageError naming the file's labels."""
    if not labels:
        return list(params.systems)
    return [params.system(label) for label in dict.fromkeys(labels)]


def key_fields(params: SweepParams, spec: SearchSpec, output_len: int, batch: int) -> dict:
    """Everything that defines one point of a search (perfkit.rows.point_fields); its hash is the key."""
    derived = None if output_len == spec.run_output_len else spec.run_output_len
    return point_fields(spec.system, spec.model, spec.input_len, output_len, batch, params.warmup,
                        params.repeats, params.seed, derived, spec.checkpoint)


def key_of(params: SweepParams, spec: SearchSpec, output_len: int, batch: int) -> str:
    return point_key(key_fields(params, spec, output_len, batch))


# ---- what a results directory already holds ------------------------------------------------------

@dataclasses.dataclass
class Stored:
    """What a results directory already holds, as this plan sees it."""

    rows: dict[str, dict]  # this plan's points, by key
    stale: dict[str, dict]  # points of this plan's system labels that the plan does not define, by key
    paths: dict[str, str]  # key -> file, of every readable point
    other: int  # points of other system labels
    devices: dict[str, set[str]]  # device names per system label, stale points left out


def read_stored(out_dir: str, params: SweepParams, specs: list[SearchSpec], dry_run: bool = False) -> Stored:
    """`out_dir`'s points: this plan's rows by key, the stale points of its labels, the others.

    Every file is checked (perfkit.results.read_point). A damaged file is named on stderr, one line each;
    where it is one of this plan's points, that point counts as not done, so the sweep measures it again
    and its atomic write replaces the file. A directory where one of this plan's point files goes would
    stop that write after the point is measured: it is refused here (UsageError), before any measuring.
    """
    scan = store.scan_points(out_dir, update_copy=False)
    wanted = {key_of(params, u, o, b) for u in specs for o in u.output_lens for b in params.batch_sizes}
    blocked = [path for path, _ in scan.skipped if os.path.basename(path)[: -len(".parquet")] in wanted
               and os.path.isdir(path) and not os.path.islink(path)]
    if blocked:
        more = f" (and {len(blocked) - 1} more)" if len(blocked) > 1 else ""
        raise UsageError(f"{blocked[0]} is a directory where a point of this plan is to be written{more}: expected "
                         "no directory there; move it away, or use another --out")
    for path, reason in scan.skipped:
        again = os.path.basename(path)[: -len(".parquet")] in wanted
        tail = (f"; its point counts as not done and {'would be' if dry_run else 'is'} measured again"
                if again else "")
        print(printable(f"perfkit: warning: skipped {path}: {reason}{tail}"), file=sys.stderr, flush=True)
    labels = {u.system.label for u in specs}
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
    return Stored(rows, stale, scan.paths, other, devices)


def _values(rows: list[dict], column: str) -> set[str]:
    return {store.shown_value(r.get(column)) for r in rows if not store.is_missing(r.get(column))}


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
    derived = any(not store.is_missing(r.get("derived_from_output_len")) for r in rows)
    if derived and not params.derive_output_lens:
        parts.append("derive_output_lens true there, false here")
    for model in sorted({r["model"] for r in rows} & set(params.models)):  # a checkpoint directory: what it holds
        now = checkpoint_fingerprint(model)
        of_model = [r for r in rows if r["model"] == model]
        if now is None:
            continue
        there = _values(of_model, "checkpoint") - {now}
        if there:
            parts.append(f"checkpoint {model} changed on disk (fingerprint {', '.join(sorted(there))} there, "
                         f"{now} here)")
        if any(store.is_missing(r.get("checkpoint")) for r in of_model):
            parts.append(f"checkpoint {model} without a fingerprint there (measured before perfkit recorded "
                         f"one), {now} here")
    if len(parts) == bool(runs):  # the definition is the same: the grid differs
        grid = {"model": params.models, "input_len": params.input_lens, "output_len": params.output_lens,
                "batch": params.batch_sizes}
        outside = [f"{column} {', '.join(sorted(_values(rows, column) - {str(v) for v in values}))}"
                   for column, values in grid.items() if _values(rows, column) - {str(v) for v in values}]
        # with derived output lengths, each is read off a run at the longest O that fits: a longer O
        # changes that run, and so the definition of every shorter O
        run_lens = {str(r["output_len"] if store.is_missing(r.get("derived_from_output_len"))
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


def stale_message(params: SweepParams, chosen: list[System], out_dir: str, stale: dict[str, dict]) -> str:
    """The refusal of a directory holding points of these labels that the params file does not define."""
    by_label: dict[str, list[dict]] = {}
    for row in stale.values():
        by_label.setdefault(row["system"], []).append(row)
    parts = [f"system {s.label!r}: {out_dir} holds {points(len(by_label[s.label]))} this params file does not "
             f"define ({_stale_reason(params, s, by_label[s.label])})" for s in chosen if s.label in by_label]
    return (f"{'; '.join(parts)}: expected only points of this plan under its labels (a grown grid resumes); use "
            f"another --out, or --discard-stale to move them to {out_dir}/{store.STALE}/<timestamp>/")


def out_subdirs(discard: bool) -> tuple[str, ...]:
    """The folders a sweep writes in its results directory (perfkit.results.check_out_dir refuses a file in
    the place of one): points/, runs/, and with --discard-stale stale/."""
    return (store.POINTS, store.RUNS) + ((store.STALE,) if discard else ())


def points(n: int) -> str:
    return f"{n} point" if n == 1 else f"{n} points"


def discard_stale(out_dir: str, stored: Stored) -> None:
    """--discard-stale: move the stale points aside, in one rename of a folder (perfkit.results.move_aside)."""
    if not stored.stale:
        return
    dest = store.move_aside(out_dir, [stored.paths[k] for k in stored.stale])
    labels = ", ".join(sorted({r["system"] for r in stored.stale.values()}))
    print(printable(f"perfkit: moved {points(len(stored.stale))} of {labels} that this params file does not define "
                    f"to {dest}"), file=sys.stderr, flush=True)


def replay(params: SweepParams, specs: list[SearchSpec], done: dict[str, dict]) -> list[BatchSearch]:
    """Every search's state rebuilt from the stored rows: it resumes at the first job not fully stored
    (an `error` row is retried; `oom` is data and is kept)."""
    searches = []
    for spec in specs:
        s = BatchSearch(spec, params.batch_sizes, params.min_gain, params.patience)
        while not s.finished():
            job = s.next_job()
            rows = {o: done.get(key_of(params, spec, o, job.batch)) for o in job.output_lens}
            if any(r is None or r["status"] == "error" for r in rows.values()):
                break
            s.judge({o: dict(r) for o, r in rows.items()})
        searches.append(s)
    return searches


@dataclasses.dataclass
class Work:
    """A sweep's work in a results directory: the chosen systems, every search's replayed state, and what
    the directory holds. Built once, the same way, for a dry run and for a sweep."""

    params: SweepParams
    out_dir: str
    chosen: list[System]
    stored: Stored
    searches: list[BatchSearch]


def work_of(params: SweepParams, systems: list[str] | None, out_dir: str, discard: bool,
            dry_run: bool = False) -> Work:
    """The searches and their state; refuses stale points of the chosen labels unless `discard`."""
    chosen = select(params, systems)
    specs = search_specs(params, chosen)
    stored = read_stored(out_dir, params, specs, dry_run=dry_run)
    if stored.stale and not discard:
        raise UsageError(stale_message(params, chosen, out_dir, stored.stale))
    return Work(params, out_dir, chosen, stored, replay(params, specs, stored.rows))


# ---- dry run -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    params: SweepParams
    out_dir: str
    points: list[dict]  # system, model, input_len, output_len, batch, derived_from_output_len, pass, status
    other_points: int  # points in out_dir of other system labels (not this plan's)
    stale: int = 0  # points of this plan's labels it does not define, that --discard-stale would move aside

    def count(self, status: str) -> int:
        return sum(p["status"] == status for p in self.points)

    def pass_counts(self) -> dict[int, dict[str, int]]:
        """{pass: {status: n}} over the whole plan."""
        out: dict[int, dict[str, int]] = {1: {}, 2: {}}
        for p in self.points:
            out[p["pass"]][p["status"]] = out[p["pass"]].get(p["status"], 0) + 1
        return out


def plan(params_or_path, systems: list[str] | None = None, out_dir: str | None = None,
         discard_stale: bool = False, yes: bool = False) -> Plan:
    """What a sweep would measure. Status per point: done, todo (certain), search (only if the batch
    search gets that far). Points of searches that already stopped are not listed. Refuses what the sweep
    would: a directory holding points of these labels that the plan does not define (unless
    discard_stale), and a grid beyond max_points unless `yes` (perfkit.params.MAX_POINTS in any case)."""
    params = as_params(params_or_path, yes)
    check_point_count(params, select(params, systems), yes=yes)
    out_dir = out_dir or default_out_dir(params.name)
    # a plan only reads (a read-only results directory is fine), but refuses what the sweep would
    store.check_out_dir(out_dir, subdirs=out_subdirs(discard_stale), writable=False)
    work = work_of(params, systems, out_dir, discard_stale, dry_run=True)
    listed = []
    for s in work.searches:
        listed += [_entry(s, batch, o, "done") for batch, o in s.history]
        if not s.finished():
            for i, batch in enumerate(s.batches[s.next_index:]):
                status = "todo" if i == 0 or batch == s.batches[0] else "search"
                listed += [_entry(s, batch, o, status) for o in s.live()]
    listed.sort(key=lambda p: p["pass"])  # stable: within a pass, execution order
    return Plan(params, out_dir, listed, work.stored.other, len(work.stored.stale))


def _entry(s: BatchSearch, batch: int, output_len: int, status: str) -> dict:
    u = s.spec
    return {"system": u.system.label, "model": u.model, "input_len": u.input_len, "output_len": output_len,
            "batch": batch, "derived_from_output_len": None if output_len == u.run_output_len else u.run_output_len,
            "pass": 1 if batch == s.batches[0] else 2, "status": status}
