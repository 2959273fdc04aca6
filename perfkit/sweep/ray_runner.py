"""A sweep across every GPU of a node and every node of a cluster, on Ray: `perfkit sweep PARAMS --ray`.

Only this module (and the isolation check) imports Ray, and only `--ray` imports them: the measuring core
runs where Ray is not installed. Each unit (perfkit.sweep.units) runs as one Ray task holding one GPU (on a
CPU, one CPU with one thread) with the serial sweep's own UnitRunner; workers write nothing, they send each
event to an inbox actor and the driver, the one writer, stores it. Retries, fencing and the device checks
are described in docs/scaling.md.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import secrets
import socket
import sys
import time

import ray

import perfkit.sweep.units as units
from perfkit.errors import UsageError, one_line, printable, shown

UNIT_RETRIES = 3  # times Ray runs a unit's task again after its worker or node died
CONNECT_TIMEOUT_S = 10.0  # the longest wait for a cluster's address to answer
PROBE_TIMEOUT_S = 600.0  # the longest wait for the device probes (a node starts a worker, imports torch)
POLL_S = 0.5  # the driver's longest wait for an event before it looks at its tasks again

ADDRESS_HELP = ("expected no address (a local Ray instance), local, auto (the cluster running on this machine), "
                "ray://HOST:PORT (Ray Client) or HOST:PORT (a node of the cluster)")


# ---- connecting ------------------------------------------------------------------------------------

def parse_address(address: str | None) -> tuple[str, tuple[str, int] | None]:
    """(the address to give ray.init, (host, port) to check first or None). UsageError where malformed."""
    text = "local" if address in (None, "") else address
    if not isinstance(text, str) or len(text) > 300 or any(c.isspace() or not c.isprintable() for c in text):
        raise UsageError(f"--ray {shown(address)} is not a Ray address: {ADDRESS_HELP}")
    if text in ("local", "auto"):
        return text, None
    rest = text[len("ray://"):] if text.startswith("ray://") else text
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray {shown(address)} is not a Ray address: {ADDRESS_HELP}")
    return text, (host, int(port))


def _reach(address: str, hostport: tuple[str, int]) -> None:
    """UsageError, within CONNECT_TIMEOUT_S, where nothing answers at the address."""
    try:
        socket.create_connection(hostport, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UsageError(f"--ray {shown(address, 80)}: no Ray cluster answers there ({reason}, waited at most "
                         f"{CONNECT_TIMEOUT_S:.0f} s): expected a running cluster (`ray start --head` on its head "
                         "node; ray://HEAD:10001 for Ray Client, HEAD:6379 from one of its nodes)") from None


def _auto_address() -> tuple[str, int]:
    """The address `--ray auto` means: RAY_ADDRESS, else the cluster `ray start` last started on this machine."""
    from ray._private import services

    try:
        found = services.canonicalize_bootstrap_address_or_die("auto")
    except (ConnectionError, ValueError) as exc:
        raise UsageError(f"--ray auto: no running Ray cluster found on this machine ({one_line(exc, 160)}): "
                         "expected `ray start --head` here first, or an address (ray://HOST:PORT, HOST:PORT)") from None
    return parse_address(found)[1]


def _client_mode() -> bool:
    try:
        from ray.util.client import ray as client

        return client.is_connected()
    except Exception:  # noqa: BLE001 - no client support: not a client
        return False


class Connection:
    """A Ray cluster to run a sweep on: `with Connection(address) as c:` connects (or starts a local
    instance, or uses the one this process is already connected to) and disconnects on the way out, shutting
    down only what it started. Constructing it checks the address's form; entering it checks that something
    answers there (within CONNECT_TIMEOUT_S) before Ray is asked to connect. Each refusal is a UsageError."""

    def __init__(self, address: str | None = "local"):
        self.address, self.hostport = parse_address(address)
        self.owned = False  # this connection called ray.init (and so calls ray.shutdown)
        self.announce = ""  # what starting or joining Ray is to say, once the checks have passed
        self.where = "this machine's Ray instance"
        self.slots: dict[str, int] = {}  # "cuda"/"cpu" -> tasks that run at once
        self.expected: dict[str, str] = {}  # "cuda"/"cpu" -> the device name every worker must have
        self.nodes: list[dict] = []  # the probes' answers: host, device names, pid
        self.workers = 0  # GPUs (or CPUs) that measure at once: the cluster's, at most one per unit

    def __enter__(self) -> Connection:
        if self.address == "auto":
            self.hostport = _auto_address()
        if self.hostport is not None:
            _reach(self.address, self.hostport)
        if ray.is_initialized():  # a notebook's, a test's or a benchmark's instance: use it, leave it running
            self.where = "the Ray cluster this process is connected to"
            return self
        kwargs = {}  # Ray Client (ray://) takes them from the cluster
        if not self.address.startswith("ray://"):  # the workers' output stays in their logs, not on this terminal
            kwargs = {"log_to_driver": False, "logging_level": logging.ERROR}
        if self.address == "local":
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=self.address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every way Ray can refuse is one line to the user
            raise UsageError(f"--ray {shown(self.address, 80)}: Ray could not connect ({one_line(exc, 300)})") \
                from None
        self.owned = True
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
        shown_at = f"{self.hostport[0]}:{self.hostport[1]}" if self.address == "auto" else self.address
        self.where = "a local Ray instance" if self.address == "local" else f"the Ray cluster at {shown_at}"
        # said once the checks have passed (a refusal stays one line)
        self.announce = (f"perfkit: Ray: {'started' if self.address == 'local' else 'joined'} {self.where}: "
                         f"{len(alive_nodes())} node(s), {gpus} GPU(s), {cpus} CPU(s)")
        return self

    def say_started(self) -> None:
        if self.announce:
            print(self.announce, file=sys.stderr, flush=True)
            self.announce = ""

    def __exit__(self, *exc) -> None:
        if self.owned:
            ray.shutdown()
            self.owned = False

    # ---- before anything is written: the devices ----------------------------------------------------

    def environments(self, params, chosen, searches, devices: dict[str, set[str]]) -> dict:
        """The provenance of the devices that will measure, per system device (as perfkit.sweep.driver.environments
        gives a serial sweep's), from one probe task per node. Refuses a cluster without the device a system
        needs, a cluster whose devices differ, and a results directory measured on another device."""
        by_kind: dict[str, list] = {}
        for system in chosen:
            if any(s.spec.system == system and not s.finished() for s in searches):
                by_kind.setdefault(kind_of(system.device), []).append(system)
        envs = {}
        self.inbox()  # first: an actor takes a worker process of its own; the probes' stay for the units
        for kind, systems in by_kind.items():
            nodes = [n for n in alive_nodes() if n["Resources"].get(RESOURCE[kind], 0) >= 1]
            if not nodes:
                s = systems[0]
                raise UsageError(f"system {s.label!r} runs on {s.device}, but {self.where} has no "
                                 f"{'GPU' if kind == 'cuda' else 'CPU'}: expected a cluster with "
                                 f"{'GPUs (one per task)' if kind == 'cuda' else 'CPUs'}, or that system on "
                                 f"{'device: cpu' if kind == 'cuda' else 'a GPU'}")
            answers = self._probe(kind, nodes)
            check_one_device(kind, answers)
            env = answers[0]["env"]
            here = env["device_name"]
            for system in systems:
                other = sorted(devices.get(system.label, set()) - {here})
                if other:
                    raise UsageError(f"system {system.label!r}: the results directory holds points measured on "
                                     f"{other[0]!r}, {self.where} has {here!r}: expected the same device "
                                     "(use another --out)")
                envs[system.device] = {**env, "device": system.device, "gpu_index": None}
            self.expected[kind] = here
            self.slots[kind] = int(sum(n["Resources"].get(RESOURCE[kind], 0) for n in nodes))
            self.nodes += answers
        self.workers = sum(self.slots.values())
        self.say_started()
        return envs

    def _probe(self, kind: str, nodes: list[dict]) -> list[dict]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = _probe_gpu if kind == "cuda" else _probe_cpu
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(kind)
                for n in nodes]
        try:
            return ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise UsageError(f"{self.where}: the device probes did not answer within {PROBE_TIMEOUT_S:.0f} s "
                             f"(one task per node, each needing one {RESOURCE[kind]}): expected free "
                             f"{RESOURCE[kind]}s") from None

    # ---- the sweep ------------------------------------------------------------------------------------

    def run(self, writer, units: list, done: dict[str, dict], budget_s: float | None) -> None:
        """Run every unit (perfkit.sweep.units.Unit) as Ray tasks; `writer` (perfkit.sweep.writer.SweepWriter)
        stores what they send. Returns when every unit is done, or left for a later run."""
        _Dispatch(self, writer, units, done, budget_s).run()

    def _recount(self) -> None:
        nodes = alive_nodes()
        for kind in self.slots:
            n = int(sum(node["Resources"].get(RESOURCE[kind], 0) for node in nodes))
            if n:
                self.slots[kind] = n

    def inbox(self):
        """The inbox actor, emptied: one per Ray job, kept for the next sweep of this process (an actor takes
        a worker process of its own, and a worker that imported torch is worth keeping for the units)."""
        job = ray.get_runtime_context().get_job_id()
        if _INBOXES.get("job") != job:
            _INBOXES.update(job=job, actor=_Inbox.options(**self._near_driver()).remote())
        ray.get(_INBOXES["actor"].reset.remote())
        return _INBOXES["actor"]

    def _near_driver(self) -> dict:
        """Options that put an actor on this process's node (its death is then the driver's), needing no CPU."""
        options = dict(num_cpus=0, max_concurrency=1000)
        if not _client_mode():
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                            soft=True)
        return options


RESOURCE = {"cuda": "GPU", "cpu": "CPU"}
_INBOXES: dict = {}  # this process's inbox actor and the Ray job it belongs to


def kind_of(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def check_one_device(kind: str, answers: list[dict]) -> None:
    """UsageError where the nodes' devices differ (torch's names across nodes, NVML's across every GPU)."""
    where: dict[str, list[str]] = {}
    for a in answers:
        for name in {a["env"]["device_name"], *a.get("nvml", [])}:
            where.setdefault(name, []).append(a["env"]["hostname"])
    torch_names = {a["env"]["device_name"] for a in answers}
    nvml_names = {n for a in answers for n in a.get("nvml", [])}
    if len(torch_names) > 1 or len(nvml_names) > 1:
        what = "; ".join(f"{name!r} on {', '.join(sorted(set(hosts)))}" for name, hosts in sorted(where.items()))
        raise UsageError(f"the Ray cluster's {'GPUs' if kind == 'cuda' else 'CPUs'} differ: {what}: expected one "
                         "device model per results directory (a cluster of one model, or each model's nodes "
                         "measuring into their own --out)")


def _slim(row: dict) -> dict:
    """What the duration estimates read of a row (perfkit.budget.measured_job): a few numbers, not its samples."""
    return {k: row.get(k) for k in ("status", "derived_from_output_len", "ttft_ms", "tpot_ms", "system", "model",
                                    "dtype", "batch", "input_len", "output_len", "setup_ms", "warmup", "repeats",
                                    "created_utc")}


# ---- the driver's side: units to tasks, events to the writer --------------------------------------------

@dataclasses.dataclass(frozen=True)
class Hello:
    """A unit's attempt started on a worker: host, pid, gpu_index and the worker's provenance."""

    info: dict


@dataclasses.dataclass(frozen=True)
class End:
    """A unit's attempt has sent its last event; `proceed`: it went on into pass 2 (None: never asked)."""

    proceed: bool | None


@dataclasses.dataclass
class UnitJob:
    """Everything one unit's task needs, as one object: the unit, the passes it runs, and what the driver
    knows that the worker needs (the budget's references, builds so far, the unit's stored rows)."""

    index: int
    unit: units.Unit
    passes: tuple
    params: object  # perfkit.params.SweepParams
    run_id: str
    faults: str | None  # the PERFKIT_SWEEP_FAULT rules, as the driver read them
    deadline: float | None  # on time.time(): the workers' clocks are the nodes'
    references: object  # ObjectRef of the stored rows the budget learns from (one copy for every task)
    measured: list[dict]  # the rows this invocation measured so far (slim)
    builds: list[dict]
    stored: dict[str, dict]  # the unit's stored rows by key (a job stored past an error is judged from them)
    measure: object  # the functions a worker measures and builds with: perfkit's own, or a test's stand-ins
    build: object
    expected: str  # the device name every worker must have
    kind: str  # "cuda" or "cpu"


class _Dispatch:
    """One Ray sweep's scheduling: pass-1 tasks first, no more running than there are GPUs (or CPUs), each
    task's events handed to the writer as they arrive, dead tasks retried by Ray and lost ones reported."""

    def __init__(self, connection: Connection, writer, unit_list: list, done: dict, budget_s: float | None):
        self.c, self.writer, self.units, self.done = connection, writer, unit_list, done
        self.deadline = None if budget_s is None else time.time() + budget_s
        self.inbox = connection.inbox()
        self.references = ray.put([_slim(r) for r in done.values()])  # the budget's, shared by every task
        self.faults = os.environ.get(units.FAULT_ENV)
        self.kinds = [kind_of(u.system.device) for u in unit_list]
        self.queue1 = collections.deque(i for i, u in enumerate(unit_list)
                                        if any(not s.finished() and s.next_index == 0 for s in u.searches))
        self.queue2 = collections.deque(i for i, u in enumerate(unit_list)
                                        if i not in self.queue1 and any(not s.finished() for s in u.searches))
        connection.workers = min(connection.workers, len(self.queue1) + len(self.queue2))  # one per unit at most
        self.running: dict[int, tuple] = {}  # unit -> (ref, first_only)
        self.ending: set[int] = set()  # units whose task said it has ended
        self.hellos: dict[int, int] = {}  # unit -> attempts that started, for the task running now
        self.measured_now: list[dict] = []  # rows measured by this invocation (slim), for later tasks' budgets
        self.proceed = False
        writer.run_extra["ray"] = {"cluster": connection.where, "slots": dict(connection.slots), "workers": {}}

    def submit(self, u: int, first_only: bool) -> None:
        unit = self.units[u]
        job = UnitJob(u, unit, (True, False) if first_only else (False,), self.writer.params, self.writer.run_id,
                      self.faults, self.deadline, self.references, list(self.measured_now),
                      list(self.writer.builds), units.stored_rows(self.writer.params, unit.searches, self.done),
                      units.measure_point, units.build_model, self.c.expected[self.kinds[u]], self.kinds[u])
        task = _unit_gpu if self.kinds[u] == "cuda" else _unit_cpu
        options = {"max_retries": UNIT_RETRIES, "retry_exceptions": False}
        if unit.system.env:  # a system's own environment: the worker process starts with it (before torch loads)
            options["runtime_env"] = {"env_vars": dict(unit.system.env)}
        self.running[u] = (task.options(**options).remote(job, self.inbox), first_only)
        self.hellos[u] = 0

    def take(self, timeout: float) -> None:
        """Hand the events the inbox holds to the writer."""
        for u, event in ray.get(self.inbox.take.remote(timeout)):
            unit = self.units[u]
            if isinstance(event, Hello):
                info = event.info
                self.hellos[u] += 1
                where = f"gpu{info['gpu_index']}" if info["gpu_index"] is not None else "cpu"
                self.writer.run_extra["ray"]["workers"][f"{info['host']}:{where}"] = info["env"]
                if self.hellos[u] > 1:
                    print(printable(f"perfkit: Ray: {unit.system.label} {unit.model} started again on {info['host']} "
                                    f"(attempt {self.hellos[u]}: its worker or node died); it goes on after the "
                                    "points already written"), file=sys.stderr, flush=True)
            elif isinstance(event, End):
                self.ending.add(u)
            else:
                if isinstance(event, units.Judged) and event.fresh:
                    self.measured_now.extend(_slim(r) for r in event.rows.values() if r["status"] == "ok")
                if isinstance(event, units.Status):
                    event = units.Status(f"{len(self.running)} running, last: {event.text}")
                self.writer.handle(event, unit.searches, remote=True)

    def start_what_fits(self) -> None:
        for queue, first_only in ((self.queue1, True), (self.queue2, False)):
            for u in list(queue):
                busy = sum(1 for v in self.running if self.kinds[v] == self.kinds[u])
                if busy < max(1, self.c.slots.get(self.kinds[u], 1)):
                    queue.remove(u)
                    self.submit(u, first_only)
        if not self.proceed and not self.queue1 and all(self.hellos[u] for u, (_, first) in self.running.items()
                                                         if first):
            # every unit's pass 1 holds its GPU (or CPU): a pass-1 task may now go on into its pass 2
            self.inbox.allow_proceed.remote()
            self.proceed = True

    def collect_finished(self) -> None:
        """Take the results of the tasks that returned: done, to be continued in pass 2, or lost."""
        refs = {self.running[u][0]: u for u in self.running}
        if not refs:
            return
        ended = self.ending & set(self.running)
        if ended:  # a task that said it ended returns within moments
            ray.wait([self.running[u][0] for u in ended], num_returns=len(ended), timeout=30)
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        if not ready:
            return
        self.take(0)  # each task's events reached the inbox before it returned: all of them are there now
        for ref in ready:
            u = refs[ref]
            unit = self.units[u]
            first_only = self.running.pop(u)[1]
            self.ending.discard(u)
            self.inbox.forget.remote(u)
            try:
                whole = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, UsageError):  # a worker on another device model than the rest
                    raise UsageError(str(exc.cause)) from None
                raise
            except ray.exceptions.RayError as exc:  # its worker or node died more often than retried
                self.writer.lost.append(f"{unit.system.label} {unit.model}: {one_line(exc, 300)}")
                continue
            if first_only and not whole and any(not s.finished() for s in unit.searches):
                self.queue2.append(u)

    def run(self) -> None:
        try:
            checked = 0.0
            while self.queue1 or self.queue2 or self.running:
                if time.monotonic() - checked > 2.0:  # nodes may join or leave
                    self.c._recount()
                    checked = time.monotonic()
                self.start_what_fits()
                self.take(POLL_S)
                self.collect_finished()
        except BaseException as exc:  # Ctrl-C or a refusal: stop the tasks; what was written stays
            for ref, _ in self.running.values():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already ended
                    pass
            if isinstance(exc, KeyboardInterrupt):  # the jobs that finished before it: stored, as serially
                try:
                    self.take(0)
                except Exception:  # noqa: BLE001 - the inbox went with the interrupt: nothing more to store
                    pass
            raise
        finally:
            if self.writer.run_written:  # the record names every worker that measured
                self.writer.write_run()


# ---- the inbox: the one way from the workers to the writer ---------------------------------------------

@ray.remote
class _Inbox:
    """Holds the events workers send until the driver takes them. Each unit's attempt registers with a token
    (`begin`), which returns the rows of that unit the inbox already took (for a retried task to go on
    from); a put from any other attempt of the unit is refused, so a superseded attempt writes nothing."""

    def __init__(self):
        import asyncio

        self.ready = asyncio.Event()
        self.events, self.tokens, self.rows, self.proceed = [], {}, {}, False

    async def reset(self) -> None:
        """Empty, for the next sweep: the attempts of an earlier one (cancelled) are refused from now on."""
        self.events, self.tokens, self.rows, self.proceed = [], {}, {}, False
        self.ready.clear()

    async def begin(self, unit: int, token: str) -> dict:
        self.tokens[unit] = token
        return dict(self.rows.get(unit, {}))

    async def put(self, unit: int, token: str, event) -> bool:
        if self.tokens.get(unit) != token:
            return False
        if isinstance(event, units.Judged) and event.fresh:
            self.rows.setdefault(unit, {}).update({r["point_key"]: r for r in event.rows.values()})
        self.events.append((unit, event))
        self.ready.set()
        return True

    async def take(self, timeout: float) -> list:
        import asyncio

        if not self.events and timeout > 0:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        events, self.events = self.events, []
        self.ready.clear()
        return events

    async def forget(self, unit: int) -> None:
        self.rows.pop(unit, None)

    async def allow_proceed(self) -> None:
        self.proceed = True

    async def may_proceed(self) -> bool:
        return self.proceed


class _Superseded(Exception):
    """This attempt of a unit's task is no longer the one the inbox takes events from."""


# ---- in a worker --------------------------------------------------------------------------------------

_SETUP_DONE = False
_ENVS: dict = {}


def worker_setup(kind: str) -> None:
    """One thread per CPU worker (two workers on two cores must not wait on each other's OpenMP threads);
    the garbage collector told to skip what already exists, as the serial sweep does."""
    global _SETUP_DONE
    import gc

    import torch

    if kind == "cpu":
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    if not _SETUP_DONE:
        import perfkit.sweep.units  # noqa: F401 - everything a unit needs, imported before the freeze

        gc.collect()
        _SETUP_DONE = True
    # What is alive as a task starts (modules an earlier task imported, Ray's state) stays alive: out of the
    # collector's sight, the collection that frees a unit's model at its end takes milliseconds, not 0.1 s.
    gc.freeze()


def worker_env(kind: str, device: str) -> dict:
    """This worker's provenance for `device` (its one GPU, or the CPU), as a serial sweep records its own."""
    from perfkit.provenance import environment

    local = "cuda" if kind == "cuda" else "cpu"
    if local not in _ENVS or kind == "cuda":  # a GPU worker runs one task (max_calls=1): no cache to go stale
        _ENVS[local] = environment(local)
    return {**_ENVS[local], "device": device}


def _probe(kind: str) -> dict:
    worker_setup(kind)
    env = worker_env(kind, kind)
    nvml = []
    if kind == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                for i in range(pynvml.nvmlDeviceGetCount()):
                    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                    nvml.append(name.decode() if isinstance(name, bytes) else name)
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nvidia-ml-py is optional: torch's name is then the only one
            nvml = []
    return {"env": env, "nvml": sorted(set(nvml)), "pid": os.getpid()}


def _run_unit(job: UnitJob, inbox) -> bool:
    """One unit's task: its passes with the serial sweep's UnitRunner, each event sent to the inbox. Returns
    whether it ran every pass it was given (False: it stopped after pass 1, whose pass 2 is another task)."""
    from perfkit import hardware
    from perfkit.sweep.budget import Budget, DurationEstimator

    worker_setup(job.kind)
    token = secrets.token_hex(8)
    received = ray.get(inbox.begin.remote(job.index, token))
    system = job.unit.system
    env = worker_env(job.kind, system.device)
    if env["device_name"] != job.expected:
        raise UsageError(f"host {env['hostname']} measures on {env['device_name']!r}, the rest of the sweep on "
                         f"{job.expected!r}: expected one device model per results directory (a node joined the "
                         "cluster with another model)")

    def send(event) -> None:
        put = inbox.put.remote(job.index, token, event)
        if isinstance(event, units.Status):  # a note for the progress bar: not waited for (puts keep their order)
            return
        # Waited for: a retried attempt then finds every row this one sent (inbox.begin), and the driver has
        # every event of a task by the time the task returns.
        if not ray.get(put):
            raise _Superseded(f"unit {job.index}: a newer attempt took over")

    send(Hello({"host": env["hostname"], "pid": os.getpid(), "gpu_index": env["gpu_index"], "env": env}))
    if system.env:
        from perfkit.sweep.child import system_env_json

        env = {**env, "system_env": system_env_json(system)}
    budget = Budget(job.params, job.deadline,
                    {system.env_key(): DurationEstimator(hardware.lookup(env["device_name"]))}, time.time, job.builds)
    budget.learn(list(ray.get(job.references)) + list(job.measured))
    device = "cuda" if job.kind == "cuda" else system.device  # a task's one GPU is its "cuda"

    def resource_for(unit: units.Unit) -> units.BuiltModel:
        return units.BuiltModel(unit.system, unit.model, job.params.seed, device, job.measure, job.build)

    runner = units.UnitRunner(job.params, job.run_id, lambda _: env, budget, units.Faults(job.faults), resource_for,
                              job.stored, received)
    answer = {}

    def proceed() -> bool:
        answer["proceed"] = bool(ray.get(inbox.may_proceed.remote()))
        return answer["proceed"]

    for event in runner.run(job.unit, job.passes, proceed):
        send(event)
    send(End(answer.get("proceed")))
    return answer.get("proceed", True)


# GPU tasks never share a worker process (max_calls=1): a process's CUDA context stays on the GPU it first had.
_probe_gpu = ray.remote(num_gpus=1, num_cpus=0, max_calls=1, max_retries=0)(_probe)
_probe_cpu = ray.remote(num_cpus=1, max_retries=0)(_probe)
_unit_gpu = ray.remote(num_gpus=1, num_cpus=1, max_calls=1)(_run_unit)
_unit_cpu = ray.remote(num_cpus=1)(_run_unit)


