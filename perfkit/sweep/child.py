"""A unit whose system sets its own environment, run in a child process that starts with it.

Some settings act only if they are in place before torch loads its libraries: oneDNN's ISA limit
(`ONEDNN_MAX_CPU_ISA`), the OpenMP thread count, the CUDA allocator's configuration. The sweep's own
process has torch loaded already, so such a unit runs in a fresh interpreter (multiprocessing's spawn,
started with the system's variables added to the environment), builds its model there and sends its
events back over a pipe; the sweep's one writer stores them, as it does a Ray worker's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys

import perfkit.sweep.units as units
from perfkit.errors import printable

_END = "end"


@dataclasses.dataclass
class ChildJob:
    """What the child needs to run one unit (all of it pickles)."""

    params: object
    run_id: str
    envs: dict
    budget: object
    done: dict
    unit: units.Unit
    passes: tuple


def _child_main(conn, job: ChildJob) -> None:
    """In the child: run the unit and send every event, then the end marker. The rows' provenance is this
    process's (its torch threads under OMP_NUM_THREADS, say), and so is the fault hook: a system's own
    environment may set PERFKIT_SWEEP_FAULT as it may set anything else."""
    from perfkit.provenance import environment

    system = job.unit.system
    envs = {**job.envs, system.env_key(): {**environment(system.device), "system_env": system_env_json(system)}}

    def resource_for(unit: units.Unit) -> units.BuiltModel:
        return units.BuiltModel(unit.system, unit.model, job.params.seed, system.device)

    runner = units.UnitRunner(job.params, job.run_id, envs.__getitem__, job.budget,
                              units.Faults(os.environ.get(units.FAULT_ENV)), resource_for, done=job.done)
    try:
        for event in runner.run(job.unit, job.passes):
            conn.send(event)
        conn.send(_END)
    finally:
        conn.close()


@contextlib.contextmanager
def environment_added(env: dict):
    """os.environ with `env` added while a child is started (a spawned child inherits it), then restored."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_in_child(job: ChildJob):
    """Yield the unit's events as its child process sends them. A child that dies before it ends (killed,
    out of host memory) ends the iteration with RuntimeError naming its exit code; the events it sent are
    the writer's already."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    with environment_added(dict(job.unit.system.env)):
        proc = ctx.Process(target=_child_main, args=(send, job), daemon=True,
                           name=f"perfkit-unit-{job.unit.system.label}")
        proc.start()
    send.close()
    ended = False
    try:
        while True:
            try:
                event = receive.recv()
            except EOFError:
                break
            if event == _END:
                ended = True
                break
            yield event
    finally:
        receive.close()
        proc.join(30 if ended else 5)
        if proc.is_alive():  # interrupted or abandoned: the child goes with the sweep
            proc.kill()
            proc.join()
    if not ended:
        raise RuntimeError(f"the process of system {job.unit.system.label!r} ({job.unit.model}) exited with code "
                           f"{proc.exitcode} before its unit ended")


def system_env_json(system) -> str:
    return json.dumps(dict(system.env), sort_keys=True)


def warn_lost(text: str) -> None:
    print(printable(f"perfkit: warning: {text}"), file=sys.stderr, flush=True)
