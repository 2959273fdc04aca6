"""Interleaved sweeps: for each point, the systems' timed repeats alternate in ABBA order.

A sequential sweep measures one system's grid, then the next's: whatever drifts in between (another
tenant's load, the clock frequency, a cache warming) lands in the ratio, and an interval drawn from repeats
taken minutes apart cannot see it. Here each system holds its model in its own process (a worker started
with the system's environment, so no warm-up or library state is shared), every worker opens the point
(set-up and warm-up, untimed), and then the repeats run A B B A A B B A ... (three systems: A B C C B A
...), so a drift linear in time adds the same to every side. Every timed repeat follows an untimed run of
its own system (the caches are its own again, as in a sequential sweep), so an interleaved point costs
about twice the runs of a sequential one. Each row records its repeats'
places in the shared sequence (`repeat_slots`) and the job's `interleave_id`, so a comparison can pair
repeat i of one side with repeat i of the other (perfkit.compare). Rows are otherwise a sequential sweep's.

Where the systems' models cannot be held at once (perfkit.memory_check.together_problem), the order falls
back to grouped: each point whole on one system, then whole on the next, which goes first alternating point
by point, each worker building its model for its point and dropping it after (slow at full size; each row
says so). A system whose search has stopped measures its peers' remaining points without them ("alone").
See docs/comparisons.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import time

import perfkit.sweep.units as units
from perfkit import memory_check
from perfkit.errors import UsageError, one_line
from perfkit.sweep.child import environment_added, system_env_json, warn_lost
from perfkit.workload import Point, System

INTERLEAVED, GROUPED, ALONE = "interleaved", "grouped", "alone"


def check_interleavable(systems: list[System], ray: bool, loads: tuple = ()) -> None:
    """Refuse, in one line, a sweep whose systems cannot be interleaved."""
    if ray:
        raise UsageError("interleave with --ray: an interleaved sweep alternates its systems on this machine, "
                         "expected the serial sweep (or interleave: false)")
    if len(systems) < 2:
        names = ", ".join(repr(s.label) for s in systems) or "none"
        raise UsageError(f"interleave needs two or more systems to alternate, this sweep runs {names}: expected "
                         "more systems (--system) or interleave: false")
    if loads and any(s.served for s in systems):
        raise UsageError("interleave with loads: a load level is a window of steady traffic to one server, not "
                         "repeats that can alternate, expected interleave: false for a sweep with loads")
    launched = [s.label for s in systems if s.served and s.endpoint.launch]
    if len(launched) > 1:
        import torch

        if torch.cuda.is_available():
            raise UsageError(f"interleave with servers {launched[0]!r} and {launched[1]!r} both launched on a machine "
                             "with a GPU: each takes its share of GPU memory when it starts, and side by side the "
                             "second would not start as it does alone, expected interleave: false (or one of them "
                             "reached by base_url)")
    on_gpu = [s.label for s in systems if not s.served and s.device.startswith("cuda")]
    if launched and on_gpu:
        raise UsageError(f"interleave with server {launched[0]!r} and in-process system {on_gpu[0]!r} on a GPU: a "
                         "server takes its share of the GPU's memory when it starts, so perfkit cannot know that "
                         "both fit, expected interleave: false (or the server on another machine, by base_url)")


def abba(labels: list[str], repeats: int) -> list[str]:
    """The order of a point's timed repeats: the systems forward, then backward, and so on (A B B A A B ...,
    A B C C B A ...), each system `repeats` times: a linear drift adds the same total to each."""
    out = []
    for i in range(repeats):
        out.extend(labels if i % 2 == 0 else labels[::-1])
    return out


# ---- a system's process ------------------------------------------------------------------------------

class WorkerFailed(Exception):
    """A command failed in the worker: `status` "oom" or "error", `message` one line."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class WorkerDied(RuntimeError):
    """The worker's process ended (killed, out of host memory) while a command was outstanding."""


def _worker_main(conn, system: System, seed: int) -> None:
    """In the worker: build, open, repeat and finish on command, replying ("ok", value) or ("error", (status,
    message)). The model and the open point stay here between commands."""
    from perfkit.measure import is_out_of_memory
    from perfkit.provenance import environment

    faults = units.Faults(os.environ.get(units.FAULT_ENV))
    resource, session = None, None

    def environment_of():
        env = environment(system.device)
        return {**env, "system_env": system_env_json(system)} if system.env else env

    def build(model: str) -> None:
        nonlocal resource
        resource = units.BuiltModel(system, model, seed, system.device)
        resource.acquire()

    def open_point(job, warmup: int, point_seed: int) -> None:
        nonlocal session
        u = job.spec
        faults.check(job)  # the sweep's fault hook, as a unit's own process applies it
        session = resource.open_point(system, Point(u.model, u.input_len, u.run_output_len, job.batch), warmup,
                                      point_seed)

    def repeat(rewarm: bool) -> float:
        if rewarm:  # an untimed run first: the caches are this system's again (the other's run may have gone before)
            session.untimed_run()
        return session.repeat()

    def finish():
        nonlocal session
        m, session = session.finish(), None
        return dataclasses.replace(m, tokens=m.tokens.numpy())  # plain arrays over the pipe, not shared memory

    def release() -> None:
        nonlocal resource
        if resource is not None:
            resource.release()
        resource = None

    handlers = {"environment": environment_of, "build": build, "open": open_point,
                "repeat": repeat, "finish": finish, "release": release}
    try:
        while True:
            try:
                command, args = conn.recv()
            except EOFError:
                return
            if command == "stop":
                return
            failure = None
            try:
                reply = ("ok", handlers[command](*args))
            except Exception as exc:  # noqa: BLE001 - the point's (or the build's) error, sent back as one line
                what = "building the model: " if command == "build" else ""
                failure = ("oom" if is_out_of_memory(exc) else "error", what + one_line(exc, with_type=True))
            if failure is not None:
                # outside the handler: its traceback no longer pins the failed point's tensors, so what is
                # freed here is free before the other system's process measures
                if session is not None:
                    session.__exit__(None, None, None)
                    session = None
                units.free_memory(system.device)
                reply = ("error", failure)
            conn.send(reply)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the sweep says what was stored
        return
    finally:
        conn.close()


class Worker:
    """The sweep's handle on one system's process."""

    def __init__(self, system: System, seed: int):
        self.system, self.dead = system, None
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        with environment_added(dict(system.env)):
            self.proc = ctx.Process(target=_worker_main, args=(theirs, system, seed), daemon=True,
                                    name=f"perfkit-interleave-{system.label}")
            self.proc.start()
        theirs.close()

    def call(self, command: str, *args):
        if self.dead:
            raise WorkerDied(self.dead)
        try:
            self._conn.send((command, args))
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            self.dead = (f"the process of system {self.system.label!r} exited with code {self.proc.exitcode} "
                         f"while {command!r} was outstanding")
            raise WorkerDied(self.dead) from None
        if kind == "error":
            raise WorkerFailed(*value)
        if command == "finish":
            import torch

            value = dataclasses.replace(value, tokens=torch.from_numpy(value.tokens))
        return value

    def stop(self) -> None:
        try:
            if not self.dead:
                self._conn.send(("stop", ()))
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self._conn.close()


class ServedWorker:
    """A served system's side of an interleaved sweep: its server is a process of its own already, so its
    resource (perfkit.sweep.served.ServedEndpoint) stays in the sweep's process, behind Worker's commands."""

    def __init__(self, system: System, seed: int, env: dict, out_dir: str):
        self.system, self.seed, self.env, self.out_dir, self.dead = system, seed, env, out_dir, None
        self.resource, self.session = None, None

    def call(self, command: str, *args):
        from perfkit.measure import is_out_of_memory

        try:
            return getattr(self, "_" + command)(*args)
        except Exception as exc:  # noqa: BLE001 - the point's (or the server's) error, as a worker's
            self.session = None
            what = f"{self.resource.what}: " if command == "build" and self.resource is not None else ""
            raise WorkerFailed("oom" if is_out_of_memory(exc) else "error",
                               what + one_line(exc, with_type=True)) from None

    def _environment(self) -> dict:
        return self.env

    def _build(self, model: str) -> None:
        from perfkit.sweep.served import ServedEndpoint

        self.resource = ServedEndpoint(self.system, model, self.seed, self.out_dir)
        try:
            self.resource.acquire()
        except BaseException:
            self.resource.release()
            raise

    def _open(self, job, warmup: int, seed: int) -> None:
        u = job.spec
        self.session = self.resource.open_point(self.system, Point(u.model, u.input_len, u.run_output_len,
                                                                   job.batch), warmup, seed)

    def _repeat(self, rewarm: bool) -> None:
        self.session.repeat()  # always after an untimed batch of its own (ServedPointSession)

    def _finish(self):
        m, self.session = self.session.finish(), None
        return m

    def _release(self) -> None:
        if self.resource is not None:
            self.resource.release()
        self.resource = None

    def stop(self) -> None:
        self._release()


# ---- the sweep ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Member:
    """One system's search in a group of searches that share a workload."""

    index: int
    search: object  # perfkit.sweep.search.BatchSearch


class Interleaver:
    """Runs a sweep's searches with the systems' repeats interleaved; the writer stores every job as it ends."""

    def __init__(self, work, writer, budget, run_id: str, envs: dict):
        self.work, self.params, self.writer, self.budget, self.run_id = work, work.params, writer, budget, run_id
        self.sweep_envs = envs  # the sweep's provenance by env_key (a served system's is its server's)
        self.workers: dict[str, Worker | ServedWorker] = {}
        self.envs: dict[str, dict] = {}
        self.jobs = 0  # jobs measured, for the grouped order's turn

    def run(self) -> None:
        try:
            models = list(dict.fromkeys(s.spec.model for s in self.work.searches))
            for model in models:
                self._model(model)
        finally:
            for w in self.workers.values():
                w.stop()

    def _worker(self, system: System) -> Worker:
        if system.label not in self.workers:
            if system.served:
                w = ServedWorker(system, self.params.seed, self.sweep_envs[system.env_key()], self.writer.out_dir)
            else:
                w = Worker(system, self.params.seed)
            self.workers[system.label] = w
            self.envs[system.label] = w.call("environment")
        return self.workers[system.label]

    def _groups(self, model: str) -> list[dict[str, _Member]]:
        """The model's searches grouped by workload (input length, output lengths), each by system label."""
        groups: dict[tuple, dict[str, _Member]] = {}
        for i, s in enumerate(self.work.searches):
            u = s.spec
            if u.model == model:
                groups.setdefault((u.input_len, u.run_output_len, u.output_lens), {})[u.system.label] = _Member(i, s)
        return list(groups.values())

    def _model(self, model: str) -> None:
        for label in [x for x, w in self.workers.items() if w.dead]:  # a process lost with an earlier model
            self.workers.pop(label).stop()
        groups = self._groups(model)
        systems = [s for s in self.work.chosen
                   if any(g.get(s.label) and not g[s.label].search.finished() for g in groups)]
        if not systems:
            return
        # a server's memory is its own business (and the in-process systems' checks see what it took)
        held = [(model, s.dtype, s.device) for s in systems if not s.served]
        problem = memory_check.together_problem(held) if len(systems) > 1 and len(held) > 1 else None
        built: dict[str, tuple | None] = {}  # label -> None (built) or (status, error) of a failed build
        for system in systems:
            # a server is started once per model in either order: only in-process models are built point by
            # point where they cannot be held together
            if problem is None or system.served:
                built[system.label] = self._build(system, model)
        # pass 1 (every workload's first batch), then the searches, as a sequential sweep takes them
        for first_only in (True, False):
            for group in groups:
                self._group(group, first_only, built, problem)
        for label in built:
            self._release(label)

    def _build(self, system: System, model: str):
        self.writer.bar.set_postfix_str(f"building {model} for {system.label}", refresh=True)
        t = time.perf_counter()
        failure = None
        try:
            self._worker(system).call("build", model)
        except WorkerFailed as exc:
            failure = (exc.status, exc.message)
        except WorkerDied as exc:  # its process ended (the host's OOM killer, say): the system's points of this
            failure = ("error", str(exc))  # model wait for the same command; the next model gets a new process
            warn_lost(str(exc))
            self.writer.lost.append(str(exc))
        record = {"system": system.label, "model": model, "dtype": system.dtype, "seconds": time.perf_counter() - t}
        self.writer.handle(units.Acquired(record), [], remote=True)
        return failure

    def _release(self, label: str) -> None:
        w = self.workers.get(label)
        if w is not None and not w.dead:
            try:
                w.call("release")
            except (WorkerFailed, WorkerDied):
                pass

    def _group(self, group: dict[str, _Member], first_only: bool, built: dict, problem: str | None) -> None:
        """Run the group's jobs: those at the same batch together, until every search of it is done (pass 1:
        only each search's first batch)."""
        waiting: set[str] = set()
        while True:
            live = {label: m for label, m in group.items() if not m.search.finished() and label not in waiting
                    and not (first_only and m.search.next_index > 0)
                    and not self._lost(label)}
            if not live:
                return
            jobs = {label: m.search.next_job() for label, m in live.items()}
            batch = min(j.batch for j in jobs.values())
            together = {label: j for label, j in jobs.items() if j.batch == batch}
            if not self.budget.fits(sum(self._estimate(j, problem) for j in together.values())):
                for label in together:
                    self.writer.handle(units.Waits(0), [])
                    waiting.add(label)
                continue
            for label in list(together):
                member = group[label]
                rows = units.stored_judged(self.params, self.work.stored.rows, member.search, together[label])
                if rows is not None:
                    self.writer.handle(units.Judged(0, rows, False), [member.search])
                    del together[label]
            if together:
                self._measure(group, together, built, problem)

    def _estimate(self, job, problem: str | None) -> float:
        """Seconds of one system's job here: the budget's estimate of a sequential job, for twice the timed runs
        (each follows an untimed one), plus a build per point in grouped order."""
        p, system = self.params, job.spec.system
        runs = p.warmup + p.repeats
        seconds = self.budget.estimate_job(job) * (p.warmup + 2 * p.repeats) / runs
        if problem is not None and not system.served:
            seconds += self.budget.estimate_build(system, job.spec.model)
        return seconds

    def _lost(self, label: str) -> bool:
        w = self.workers.get(label)
        return w is not None and w.dead is not None

    def _measure(self, group: dict[str, _Member], jobs: dict, built: dict, problem: str | None) -> None:
        """Measure one job of each system in `jobs` (same workload, same batch) and store their rows."""
        labels = list(jobs)
        first = next(iter(jobs.values()))
        u = first.spec
        self.writer.bar.set_postfix_str(f"{'/'.join(labels)} {u.model} I={u.input_len} O={u.run_output_len} "
                                        f"B={first.batch}")
        ident = hashlib.sha256(f"{self.run_id}|{u.model}|{u.input_len}|{u.run_output_len}|{first.batch}|"
                               f"{'|'.join(labels)}".encode()).hexdigest()[:16]
        results, slots = self._interleaved(jobs, built) if problem is None else self._grouped(jobs, built)
        ran = [label for label in labels if results[label][0] == "ok"]
        if len(ran) < 2:
            order, note = ALONE, "measured alone: no other system measured this point with it"
        elif problem is None:
            order, note = INTERLEAVED, "interleaved (ABBA) with " + ", ".join(repr(x) for x in labels)
        else:
            order, note = GROUPED, f"grouped, not interleaved: {problem}"
        self.jobs += 1
        for label, job in jobs.items():
            status, error, m = results[label]
            member = group[label]
            env = self.envs.get(label) or {}
            rows = units.judged_rows(self.params, self.run_id, env, self.budget, member.search, job, status, error, m)
            for row in rows.values():
                row.update({"repeat_order": order if status == "ok" else None,
                            "interleave_id": ident if order != ALONE and status == "ok" else None,
                            "repeat_slots": slots.get(label) if status == "ok" else None,
                            "order_note": note if status == "ok" else None})
            self.writer.handle(units.Judged(0, rows, True), [member.search])
            if self._lost(label):
                warn_lost(self.workers[label].dead)
                self.writer.lost.append(self.workers[label].dead)

    def _call(self, label: str, results: dict, command: str, *args):
        """A command to one system's worker; a failure becomes that system's result for the job."""
        try:
            return self.workers[label].call(command, *args)
        except WorkerFailed as exc:
            results[label] = (exc.status, exc.message, None)
        except WorkerDied as exc:
            results[label] = ("error", str(exc), None)
        return None

    def _interleaved(self, jobs: dict, built: dict):
        """Open the point on every system, then run the repeats in ABBA order; (results, slots) by label."""
        p = self.params
        results: dict[str, tuple] = {}
        for label in jobs:
            failure = built.get(label)
            if failure:
                results[label] = (*failure, None)
        for label, job in jobs.items():
            if label not in results:
                self._call(label, results, "open", job, p.warmup, p.seed)
        slots: dict[str, list[int]] = {label: [] for label in jobs}
        # Every timed repeat starts right after an untimed run of its own, as a sequential sweep's repeats follow
        # one another: on a CPU the other model's run evicts this one's weights from the caches (on the tiny demo
        # models a repeat right after a switch ran 2-4 % slower), and re-warming only after a switch would leave
        # ABBA's repeats in two states (after a switch, or not) that its pairs would mix.
        for slot, label in enumerate(abba([x for x in jobs if x not in results], p.repeats)):
            if label not in results:
                self._call(label, results, "repeat", True)
                slots[label].append(slot)
        for label in jobs:
            if label not in results:
                m = self._call(label, results, "finish")
                if m is not None:
                    results[label] = ("ok", None, m)
        return results, slots

    def _grouped(self, jobs: dict, built: dict):
        """Each system builds the model, measures the whole point and drops the model, in turn; who goes first
        alternates job by job. (results, slots) by label."""
        p = self.params
        labels = list(jobs) if self.jobs % 2 == 0 else list(jobs)[::-1]
        results: dict[str, tuple] = {}
        slots: dict[str, list[int]] = {}
        at = 0
        for label in labels:
            job = jobs[label]
            system = self.work.params.system(label)
            failure = built.get(label) if system.served else self._build(system, job.spec.model)
            if failure:
                results[label] = (*failure, None)
                continue
            self._call(label, results, "open", job, p.warmup, p.seed)
            if label in results:
                if not system.served:
                    self._release(label)
                continue
            slots[label] = []
            for _ in range(p.repeats):
                if label in results:
                    break
                self._call(label, results, "repeat", False)
                slots[label].append(at)
                at += 1
            if label not in results:
                m = self._call(label, results, "finish")
                if m is not None:
                    results[label] = ("ok", None, m)
            if not system.served:
                self._release(label)
        return results, slots


def run_interleaved(work, writer, budget, run_id: str, envs: dict) -> None:
    """The serial sweep's work with the systems interleaved (perfkit.sweep.driver calls it)."""
    check_interleavable(work.chosen, False, work.params.loads)
    Interleaver(work, writer, budget, run_id, envs).run()
