"""What one unit of a sweep does: acquire its resource, measure its searches' jobs, judge them, release it.

A unit is what a sweep acquires once: today a model built with its build settings, shared by the systems
that differ only in backend. Its resource is one small interface (`Resource`: acquire, measure a point,
recover after a failed one, release), so another kind of unit adds a class, not a path. The serial sweep
and the Ray sweep run the same `UnitRunner`; it yields events (small frozen dataclasses, which travel
between processes) and whoever consumes them writes (perfkit.sweep.writer). See docs/sweeps.md.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Callable
from typing import Protocol

import torch

from perfkit import memory_check
from perfkit.errors import UsageError, one_line, printable
from perfkit.measure import PointMeasurement, PointSession, is_out_of_memory, measure_point
from perfkit.metrics import truncate_e2e_s
from perfkit.models import build_model, parse_dtype
from perfkit.params import SweepParams
from perfkit.rows import failed_row, to_row, with_provenance
from perfkit.sweep.budget import Budget
from perfkit.sweep.planning import key_fields, key_of
from perfkit.sweep.search import BatchRun, BatchSearch
from perfkit.workload import Point, System

FAULT_ENV = "PERFKIT_SWEEP_FAULT"


# ---- events ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Status:
    """What the unit is doing now (the progress bar's note)."""

    text: str


@dataclasses.dataclass(frozen=True)
class Acquired:
    """The unit's resource was acquired (or failed to be): {"system", "model", "dtype", "seconds"}."""

    record: dict


@dataclasses.dataclass(frozen=True)
class Waits:
    """Search `search` of the unit waits for a later invocation (the time budget)."""

    search: int


@dataclasses.dataclass(frozen=True)
class Judged:
    """One job of search `search`: {output_len: row}, each row complete with its provenance. `fresh`:
    measured now, to be written; else rows stored by an earlier invocation, judged again."""

    search: int
    rows: dict
    fresh: bool


@dataclasses.dataclass(frozen=True)
class LoadMeasured:
    """One load level of a served unit (perfkit.serving.load): its row, complete, for RESULTS_DIR/loads/."""

    row: dict


# ---- the unit and its resource ---------------------------------------------------------------------

@dataclasses.dataclass
class Unit:
    """The searches that share one resource; `system` stands for its acquisition (the first system)."""

    system: System
    model: str
    searches: list[BatchSearch]


def units_of(searches: list[BatchSearch]) -> list[Unit]:
    """Group searches by what building the model depends on (model, dtype, device, attention).

    Systems that differ only in backend (hf-loop vs static) run on one build: the weights are the same,
    and a full-size build costs seconds of device time that a sweep under a time budget cannot spare."""
    groups: dict[tuple, list[BatchSearch]] = {}
    for s in searches:
        u = s.spec
        if u.system.served:  # a served system's unit is its own server, for one model
            key = ("served", u.system.label, u.model)
        else:
            key = (u.model, u.system.dtype, u.system.device, u.system.attn_implementation, u.system.env)
        groups.setdefault(key, []).append(s)
    return [Unit(group[0].spec.system, group[0].spec.model, group) for group in groups.values()]


class Resource(Protocol):
    """What a unit measures with. acquire() may raise (out of memory, a broken checkpoint): the unit's jobs
    then become failed points. release() runs whatever happened."""

    what: str  # what acquiring is, for a failed point's message ("building the model")

    def acquire(self) -> None: ...

    def measure(self, system: System, point: Point, warmup: int, repeats: int, seed: int) -> PointMeasurement: ...

    def recover(self) -> None:
        """After a failed point, outside the handler that caught it (its traceback no longer pins memory)."""

    def release(self) -> None: ...


class BuiltModel:
    """A model built on `device` (the registry's random weights, or a checkpoint). `measure` and `build`
    default to perfkit's own; a Ray worker gets the driver's (a test's stand-ins travel that way)."""

    what = "building the model"

    def __init__(self, system: System, model: str, seed: int, device: str, measure=None, build=None):
        self.system, self.name, self.seed, self.device = system, model, seed, device
        self.measure_fn, self.build_fn = measure or measure_point, build or build_model
        self.model = None

    def acquire(self) -> None:
        s = self.system
        # A model that cannot fit is refused here, unbuilt: on a host, running out is a SIGKILL, not an error
        memory_check.check_build(self.name, s.dtype, self.device)
        self.model = self.build_fn(self.name, parse_dtype(s.dtype), self.device, s.attn_implementation,
                                   seed=self.seed)

    def measure(self, system: System, point: Point, warmup: int, repeats: int, seed: int) -> PointMeasurement:
        here = self._checked(system, point)
        return self.measure_fn(self.model, here, point, warmup=warmup, repeats=repeats, seed=seed)

    def open_point(self, system: System, point: Point, warmup: int, seed: int) -> PointSession:
        """The point opened (set-up and warm-up) to be timed one repeat at a time, as an interleaved sweep
        does (perfkit.sweep.interleave), after the same memory check as measure's."""
        return PointSession(self.model, self._checked(system, point), point, warmup, seed)

    def _checked(self, system: System, point: Point) -> System:
        """`system` on this model's device, once the point's memory is checked (PredictedOutOfMemory if not)."""
        memory_check.check_point(self.name, system.dtype, self.device, point.batch, point.input_len,
                                 point.output_len)
        return system if system.device == self.device else dataclasses.replace(system, device=self.device)

    def recover(self) -> None:
        free_memory(self.device)

    def release(self) -> None:
        self.model = None  # the only reference: the model's memory goes back before the next build
        free_memory(self.device)


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exc:  # an allocator left unusable (a failed graph capture): the points go on
            print(printable(f"perfkit: warning: could not release cached CUDA memory "
                            f"({one_line(exc, 200, with_type=True)})"), file=sys.stderr, flush=True)


class Faults:
    """The PERFKIT_SWEEP_FAULT test hook: "KIND:MIN_BATCH[:MODEL][,...]" (KIND oom, host-oom, error or kill)
    makes every point with batch >= MIN_BATCH (of MODEL, if named) raise torch.OutOfMemoryError, the host
    allocator's RuntimeError (a real allocation of 2**60 bytes, refused at once) or RuntimeError just before
    it is measured, or (kill) SIGKILL the process that measures it, as the host's OOM killer would: meant for
    a system's own process (`env`), whose death the sweep survives. It never touches the timed code."""

    def __init__(self, spec: str | None):
        self.spec, self.rules = spec, []
        for part in filter(None, (spec or "").split(",")):
            fields = part.strip().split(":", 2)
            if len(fields) < 2 or fields[0] not in ("oom", "host-oom", "error", "kill") or not fields[1].isdigit():
                raise UsageError(f"{FAULT_ENV}={spec[:200]!r}: bad rule {part[:100]!r}, expected "
                                 "KIND:MIN_BATCH[:MODEL] with KIND oom, host-oom, error or kill")
            self.rules.append((fields[0], int(fields[1]), fields[2] if len(fields) == 3 else None))

    def check(self, job: BatchRun) -> None:
        for kind, min_batch, model in self.rules:
            if job.batch >= min_batch and model in (None, job.spec.model):
                if kind == "oom":
                    raise torch.OutOfMemoryError(f"injected out of memory at batch {job.batch} ({FAULT_ENV})")
                if kind == "host-oom":  # torch's host allocator refuses 2**60 bytes at once: no memory is touched
                    torch.empty(2**60, dtype=torch.uint8)
                if kind == "kill":
                    import os
                    import signal

                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected failure at batch {job.batch} ({FAULT_ENV})")


def load_key(params: SweepParams, spec, output_len: int, level) -> str:
    """A load level's key: its workload's point fields (no batch) and the level itself."""
    from perfkit.rows import point_key

    fields = key_fields(params, spec, output_len, 1)
    fields.pop("batch")
    return point_key({**fields, "load": dataclasses.asdict(level)})


def row_of(m) -> dict:
    """A measurement's row without provenance: an in-process one's (perfkit.rows.to_row), or a served one's."""
    return m.row() if hasattr(m, "row") else to_row(m)


def truncated(m: PointMeasurement, output_len: int) -> PointMeasurement:
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


def judged_rows(params: SweepParams, run_id: str, env: dict, budget: Budget, search: BatchSearch, job: BatchRun,
                status: str, error: str | None, m) -> dict[int, dict]:
    """One job's rows, {output_len: row}: read off the measurement `m` (shorter outputs truncated from it) or
    failed with `status` and `error`; judged by `search` (which advances), with their provenance from `env`.
    A measured run teaches the budget's estimator what such a job costs."""
    u = job.spec
    rows = {}
    for o in job.output_lens:
        if status == "ok":
            rows[o] = row_of(m if o == u.run_output_len else truncated(m, o))
        else:
            rows[o] = failed_row(u.system, Point(u.model, u.input_len, o, job.batch), status, error)
    search.judge(rows)
    full = {}
    for o, row in rows.items():
        full[o] = with_provenance(row, run_id, env, key_fields(params, u, o, job.batch))
        full[o]["sweep_name"] = params.name
    if status == "ok":  # the run as measured (at run_output_len, which the search may have stopped)
        estimator = budget.estimator(u.system.label)
        if estimator is not None:
            estimator.learn({**row_of(m), "warmup": params.warmup})
    return full


def stored_judged(params: SweepParams, done: dict, search: BatchSearch, job: BatchRun) -> dict | None:
    """The job's rows stored by an earlier invocation past an error that stopped the replay (errors are
    retried, the points after them are not), judged by `search`; None where any is missing or failed."""
    stored = {o: done.get(key_of(params, job.spec, o, job.batch)) for o in job.output_lens}
    if not all(r is not None and r["status"] in ("ok", "oom") for r in stored.values()):
        return None
    rows = {o: dict(r) for o, r in stored.items()}
    search.judge(rows)
    return rows


def stored_rows(params: SweepParams, searches: list[BatchSearch], done: dict[str, dict]) -> dict[str, dict]:
    """The stored rows, by key, of the jobs these searches have still to run (a job stored past an error is
    judged from them): what a unit's Ray task needs of the results directory."""
    out = {}
    for s in searches:
        for b in params.batch_sizes[s.next_index:]:
            for o in s.spec.output_lens:
                key = key_of(params, s.spec, o, b)
                if key in done:
                    out[key] = done[key]
    return out


# ---- running a unit --------------------------------------------------------------------------------

class UnitRunner:
    """Runs units and yields their events.

    `env_for(device)` is the provenance of the machine that measures (the serial sweep's, a Ray worker's);
    `resource_for(unit)` makes a unit's resource; `done` holds the rows stored before this invocation (by
    key), `received` the rows this invocation's writer already has of the unit (a Ray task retried after its
    worker died: those jobs are judged from them, neither measured nor sent again)."""

    def __init__(self, params: SweepParams, run_id: str, env_for: Callable[[str], dict], budget: Budget,
                 faults: Faults, resource_for: Callable[[Unit], Resource], done: dict | None = None,
                 received: dict | None = None, done_loads: set | None = None):
        self.params, self.run_id, self.env_for, self.budget, self.faults = params, run_id, env_for, budget, faults
        self.resource_for, self.done, self.received = resource_for, done or {}, received or {}
        self.done_loads = done_loads or set()

    def _catch_up(self, search: BatchSearch) -> None:
        """Judge the jobs whose rows this invocation's writer already holds (a retried Ray task)."""
        while self.received and not search.finished():
            job = search.next_job()
            rows = {o: self.received.get(key_of(self.params, job.spec, o, job.batch)) for o in job.output_lens}
            if any(r is None for r in rows.values()):
                return
            search.judge({o: dict(r) for o, r in rows.items()})

    def run(self, unit: Unit, passes=(False,), proceed=None):
        """Run one unit's jobs, pass by pass (True: pass 1, each search's first batch; False: the searches),
        acquiring its resource at most once for all of them, and yield the events. Before each pass after
        the first, `proceed()` says whether to go on (a Ray task goes on into pass 2 with the model it has
        built when no unit waits for its pass 1); when it says no, the unit stops there."""
        for s in unit.searches:
            self._catch_up(s)
        resource, failure, have = self.resource_for(unit), None, False
        loads = self._pending_loads(unit)
        try:
            for n, first_only in enumerate(passes):
                if n and proceed is not None and not proceed():
                    return
                if failure:  # as a serial sweep does, each pass tries to acquire it again
                    failure, have = None, False
                pending = [(i, s) for i, s in enumerate(unit.searches)
                           if not s.finished() and (s.next_index == 0 or not first_only)]
                if not pending:
                    continue
                if not have:
                    # Acquire only if that and at least one of its jobs fit; otherwise every pending job waits.
                    acquire_s = self.budget.estimate_build(unit.system, unit.model)
                    if not any(self.budget.fits(acquire_s + self.budget.estimate_job(s.next_job()))
                               for _, s in pending):
                        for i, _ in pending:
                            yield Waits(i)
                        continue
                    yield Status(f"building {unit.model}" if not unit.system.served
                                 else f"building {unit.system.label}: {resource.what}")
                    failure = yield from self._acquire(unit, resource)
                    have = True
                for i, s in pending:
                    while not s.finished():
                        job = s.next_job()
                        if not self.budget.fits(self.budget.estimate_job(job)):
                            # this search waits (its later batches cost more still); the others go on
                            yield Waits(i)
                            break
                        yield from self._job(resource, failure, i, s, job)
                        if first_only:
                            break
            if loads and passes[-1] is False:  # a served unit's load levels, once its searches are done
                if not self.budget.fits(0):
                    yield Waits(0)
                    return
                if not have:
                    yield Status(f"building {unit.system.label}: {resource.what}")
                    failure = yield from self._acquire(unit, resource)
                for spec, output_len, level, key in loads:
                    yield from self._load(resource, failure, spec, output_len, level, key)
        finally:
            resource.release()

    def _pending_loads(self, unit: Unit) -> list:
        """(spec, output_len, level, key) of the unit's load levels not yet stored."""
        if not unit.system.served or not self.params.loads:
            return []
        out = []
        for s in unit.searches:
            for o in s.spec.output_lens:
                for level in self.params.loads:
                    key = load_key(self.params, s.spec, o, level)
                    if key not in self.done_loads:
                        out.append((s.spec, o, level, key))
        return out

    def _load(self, resource, failure, spec, output_len: int, level, key: str):
        from perfkit.serving.load import failed_load_row

        yield Status(f"{spec.system.label} {spec.model} I={spec.input_len} O={output_len} {level.label()}")
        error = failure[1] if failure else None
        row = None
        if error is None:
            try:
                row = resource.measure_load(spec, output_len, level, self.params.seed)
            except Exception as exc:  # noqa: BLE001 - the level's error row, as a point's
                error = one_line(exc, with_type=True)
        if row is None:
            row = failed_load_row(spec.system, spec.model, spec.input_len, output_len, level, error)
        env = self.env_for(spec.system.env_key())
        from perfkit.provenance import utc_now

        row.update({"run_id": self.run_id, "load_key": key, "device_name": env.get("device_name"),
                    "seed": self.params.seed, "sweep_name": self.params.name, "git_commit": env.get("git_commit"),
                    "host": env.get("hostname"), "created_utc": utc_now()})
        yield LoadMeasured(row)

    def _acquire(self, unit: Unit, resource: Resource):
        """Acquire the resource; returns (status, error) where it failed: its jobs become failed points."""
        t = self.budget.clock()
        failure = None
        try:
            resource.acquire()
        except Exception as exc:  # noqa: BLE001 - out of memory, a broken checkpoint: failed points, not a failed sweep
            failure = ("oom" if is_out_of_memory(exc) else "error",
                       f"{getattr(resource, 'what', 'building the model')}: {one_line(exc, with_type=True)}")
        record = {"system": unit.system.label, "model": unit.model, "dtype": unit.system.dtype,
                  "seconds": self.budget.clock() - t}
        self.budget.builds.append(record)
        yield Acquired(record)
        if failure:
            resource.release()
        return failure

    def _job(self, resource: Resource, failure, index: int, search: BatchSearch, job: BatchRun):
        u, p = job.spec, self.params
        yield Status(f"{u.system.label} {u.model} I={u.input_len} O={u.run_output_len} B={job.batch}")
        rows = stored_judged(p, self.done, search, job)
        if rows is not None:  # no device time spent on them again
            yield Judged(index, rows, False)
            return
        status, error, m = "ok", None, None
        if failure:
            status, error = failure
        else:
            try:
                self.faults.check(job)
                m = resource.measure(u.system, Point(u.model, u.input_len, u.run_output_len, job.batch),
                                     warmup=p.warmup, repeats=p.repeats, seed=p.seed)
            except Exception as exc:  # noqa: BLE001 - whatever the measurement raises is the point's error row
                status, error = ("oom" if is_out_of_memory(exc) else "error"), one_line(exc, with_type=True)
            if status != "ok":  # outside the except block: the traceback no longer pins the tensors
                resource.recover()
        rows = judged_rows(p, self.run_id, self.env_for(u.system.env_key()), self.budget, search, job, status,
                           error, m)
        yield Judged(index, rows, True)
