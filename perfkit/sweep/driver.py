"""run_sweep: a params file's grid measured into a results directory, under its lock, serially in this
process or on Ray (perfkit.sweep.ray_runner), with the same units either way. See docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys

import perfkit.sweep.budget as budget_clock
import perfkit.sweep.units as units
from perfkit import hardware
from perfkit import results as store
from perfkit.errors import UsageError, WriteError, printable
from perfkit.measure import check_device
from perfkit.params import SweepParams, check_point_count
from perfkit.paths import default_out_dir
from perfkit.sweep.budget import Budget, DurationEstimator
from perfkit.sweep.planning import Work, as_params, discard_stale, out_subdirs, select, work_of
from perfkit.sweep.search import BatchSearch
from perfkit.sweep.units import FAULT_ENV, BuiltModel, Faults, Unit, UnitRunner, units_of
from perfkit.sweep.writer import SweepWriter
from perfkit.workload import System

RAY_HINT = "pip install 'perfkit[ray]'"


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
    # a point or run record the file system refused (full, the file size limit): the sweep stopped there;
    # the points written before it are stored, the same command continues
    write_error: str | None = None
    loads: int = 0  # load levels of served systems written by this invocation (RESULTS_DIR/loads/)


def run_sweep(params_or_path, systems: list[str] | None = None, out_dir: str | None = None,
              max_minutes: float | None = None, progress: bool = True, discard_stale: bool = False,
              yes: bool = False, ray: str | None = None, interleave: bool | None = None) -> SweepOutcome:
    """Measure every point of a params file (skipping those already stored in `out_dir`).

    Holds the results directory's lock throughout (a second sweep into it is refused, naming this one);
    under it, removes the temporary files of interrupted writes, then refuses points of its labels that the
    params file does not define, or with `discard_stale` moves them to DIR/stale/<timestamp>/. Bad input
    is refused before anything is written; a grid beyond max_points needs `yes`. Ctrl-C ends it with an
    outcome whose `interrupted` is set: the finished points are stored, the same command continues. A write
    the file system refuses (a full disk, the file size limit) ends it the same way, with `write_error` set.

    `ray`: run the units as Ray tasks, one GPU (or CPU) each: "local" (or "") starts a Ray instance here,
    "auto", "ray://HOST:PORT" or "HOST:PORT" joins a running cluster. None: serially, in this process.

    `interleave`: alternate the systems' repeats point by point, each system in its own process
    (perfkit.sweep.interleave); None takes the params file's `interleave`."""
    params = as_params(params_or_path, yes)
    if interleave is not None:
        params = dataclasses.replace(params, interleave=interleave)
    if params.interleave:
        from perfkit.sweep.interleave import check_interleavable

        check_interleavable(select(params, systems), ray is not None, params.loads)
    check_point_count(params, select(params, systems), yes=True)
    out_dir = out_dir or default_out_dir(params.name)
    store.check_out_dir(out_dir, subdirs=out_subdirs(discard_stale))
    check_max_minutes(max_minutes)
    Faults(os.environ.get(FAULT_ENV))
    cluster = None
    if ray is not None:
        served = [s.label for s in select(params, systems) if s.served]
        if served:
            raise UsageError(f"--ray with served system {served[0]!r}: a served system is timed from this machine, "
                             "expected the serial sweep for it (--system to run the in-process ones on Ray)")
        cluster = require_ray().Connection(ray)  # Ray importable, a well-formed address; connects later
    with store.lock(out_dir):
        removed = store.remove_interrupted_writes(out_dir)
        if removed:
            print(printable(f"perfkit: removed {removed} temporary files of interrupted writes from {out_dir}"),
                  file=sys.stderr, flush=True)
        return _run(params, systems, out_dir, max_minutes, progress, discard_stale, cluster)


def require_ray():
    """perfkit.sweep.ray_runner, where Ray is importable; UsageError with the install line where it is not.
    The measuring core never imports Ray: only this path does (a GPU machine may have no Ray)."""
    try:
        import ray  # noqa: F401 - only whether it imports
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed here: {RAY_HINT} (or pip install 'ray>=2.40')") \
            from None
    import perfkit.sweep.ray_runner as module

    return module


def check_max_minutes(max_minutes) -> None:
    if max_minutes is not None and not (isinstance(max_minutes, (int, float)) and max_minutes > 0):
        raise UsageError(f"max_minutes {max_minutes!r} is not a positive number of minutes")


def environments(params: SweepParams, systems: list[System], searches: list[BatchSearch],
                 devices: dict[str, set[str]]) -> dict[str, dict]:
    """Check each device that has work and record its provenance; refuse to mix devices in one directory.

    Every stored point of a label counts (`devices`), not only this plan's: an older params version measured
    elsewhere under the same label would otherwise mix devices in one directory."""
    from perfkit.provenance import environment

    envs = {}
    for system in systems:
        if not any(s.spec.system == system and not s.finished() for s in searches) and not (
                system.served and params.loads):
            continue
        if system.served:
            from perfkit.sweep.served import preflight, served_environment

            for model in dict.fromkeys(s.spec.model for s in searches if s.spec.system == system):
                preflight(system, model)
            if "cpu" not in envs:
                envs["cpu"] = environment("cpu")
            envs[system.env_key()] = served_environment(system, envs["cpu"])
            here = envs[system.env_key()]["device_name"]
        elif system.device not in envs:
            try:
                check_device(system.device)
            except UsageError as exc:
                raise UsageError(f"{params.source}: system {system.label!r}: {exc}") from None
            envs[system.device] = environment(system.device)
        if system.env:  # its own process's environment, recorded with every row it measures
            from perfkit.sweep.child import system_env_json

            envs[system.env_key()] = {**envs[system.device], "system_env": system_env_json(system)}
        if not system.served:
            here = envs[system.device]["device_name"]
        other = sorted(devices.get(system.label, set()) - {here})
        if other:
            raise UsageError(f"system {system.label!r}: the results directory holds points measured on "
                             f"{other[0]!r}, this machine is {here!r}: expected the same device "
                             "(use another --out)")
    return envs


def _run(params: SweepParams, systems: list[str] | None, out_dir: str, max_minutes: float | None,
         progress: bool, discard: bool, cluster=None) -> SweepOutcome:
    """run_sweep's work, under the directory's lock. `cluster`: a ray_runner.Connection, not yet connected
    (it connects only where there is work)."""
    from tqdm import tqdm

    from perfkit.provenance import new_run_id

    clock = budget_clock.clock
    t0 = clock()
    # Freeing memory between models and after out-of-memory runs gc.collect(), which scans every object
    # alive: with torch, transformers and pandas loaded that is ~0.3 s a call. What exists now (modules,
    # their tables) lives as long as the process anyway: collect once and exempt it from later scans.
    gc.collect()
    gc.freeze()
    minutes = max_minutes if max_minutes is not None else params.max_minutes
    work = work_of(params, systems, out_dir, discard)
    searches = work.searches
    skipped = sum(len(s.history) for s in searches)
    run_id = new_run_id()
    with contextlib.ExitStack() as stack:
        if cluster is not None and any(not s.finished() for s in searches):
            stack.enter_context(cluster)  # connects (or starts a local instance); shut down on the way out
            envs = cluster.environments(params, work.chosen, searches, work.stored.devices)
        else:
            cluster = None
            envs = environments(params, work.chosen, searches, work.stored.devices)
        discard_stale(out_dir, work.stored)

        total = sum(s.remaining() for s in searches)
        with tqdm(total=total, desc=params.name, unit="pt", file=sys.stderr,
                  disable=not progress or total == 0, dynamic_ncols=True) as bar:
            budget = Budget(params, None if minutes is None else t0 + minutes * 60,
                            {device: DurationEstimator(hardware.lookup(env.get("device_name")))
                             for device, env in envs.items()}, clock)
            budget.learn(work.stored.rows.values())
            writer = SweepWriter(params, out_dir, envs, run_id, bar, budget.builds)
            interrupted, write_error = False, None
            try:
                if cluster is None:
                    _serial(work, writer, budget, envs, run_id)
                else:
                    cluster.run(writer, units_of(searches), work.stored.rows,
                                None if minutes is None else minutes * 60 - (clock() - t0))
            except KeyboardInterrupt:  # Ctrl-C: what finished is stored (atomically, point by point); say so
                interrupted = True
            except WriteError as exc:  # a full disk: the points before it are stored; stop, and say so
                write_error = str(exc)
    return SweepOutcome(out_dir=out_dir, run_id=run_id if writer.run_written else None,
                        measured=writer.measured, skipped=skipped, failures=writer.failures, ooms=writer.ooms,
                        stopped_early=writer.stopped and any(not s.finished() for s in searches),
                        left=sum(s.remaining() for s in searches),
                        wall_s=clock() - t0, build_s=budget.builds, interrupted=interrupted,
                        workers=cluster.workers if cluster is not None else 0, lost=writer.lost,
                        write_error=write_error, loads=writer.loads)


def _serial(work: Work, writer: SweepWriter, budget: Budget, envs: dict, run_id: str) -> None:
    """Every unit in this process, pass 1 (the first batch everywhere) before pass 2 (the searches)."""
    p = work.params
    measure, build = units.measure_point, units.build_model  # perfkit's own, or a test's stand-ins

    def resource_for(unit: Unit):
        if unit.system.served:
            from perfkit.sweep.served import ServedEndpoint

            return ServedEndpoint(unit.system, unit.model, p.seed, writer.out_dir)
        return BuiltModel(unit.system, unit.model, p.seed, unit.system.device, measure, build)

    from perfkit.loads import stored_keys

    if p.interleave:
        from perfkit.sweep.interleave import run_interleaved

        run_interleaved(work, writer, budget, run_id, envs)
        return
    runner = UnitRunner(p, run_id, envs.__getitem__, budget, Faults(os.environ.get(FAULT_ENV)), resource_for,
                        done=work.stored.rows, done_loads=stored_keys(writer.out_dir) if p.loads else set())
    groups = units_of(work.searches)
    for first_only in (True, False):
        for unit in groups:
            # A served unit's resource is a server that can take a minute to start: it runs both passes on
            # one start, in pass 1's turn.
            if unit.system.served and not first_only:
                continue
            passes = (True, False) if unit.system.served else (first_only,)
            if unit.system.env:
                _in_child(work, writer, budget, envs, run_id, runner, unit, passes)
                continue
            for event in runner.run(unit, passes):
                writer.handle(event, unit.searches)


def _in_child(work: Work, writer: SweepWriter, budget: Budget, envs: dict, run_id: str, runner: UnitRunner,
              unit: Unit, passes: tuple) -> None:
    """A unit whose system sets its own environment, in a child process started with it (perfkit.sweep.child).
    Its events arrive as a Ray worker's do: the writer judges them on this process's copy of the searches."""
    from perfkit.sweep.child import ChildJob, run_in_child, warn_lost

    job = ChildJob(work.params, run_id, envs, budget, units.stored_rows(work.params, unit.searches, runner.done),
                   unit, passes)
    try:
        for event in run_in_child(job):
            writer.handle(event, unit.searches, remote=True)
    except RuntimeError as exc:  # the child died (killed, out of host memory): its finished points are stored
        writer.lost.append(str(exc))
        warn_lost(str(exc))
