"""A sweep across every GPU of a node and every node of a cluster, on Ray: `perfkit sweep PARAMS --ray`.

Only this module imports Ray, and only `perfkit sweep --ray` imports this module (perfkit.sweep.ray_module):
the measuring core runs where Ray is not installed.

The unit of work is what a serial sweep builds once: a model with its build settings (dtype, device,
attention) and the systems that share it (perfkit.sweep._by_model's groups). Each unit runs as one Ray task
holding one GPU (num_gpus=1; on a CPU, num_cpus=1 with one thread), which builds the model once and runs
the unit's jobs with the serial sweep's own code (perfkit.sweep._UnitRunner): the same batch searches, the
same rows, the same keys. So a Ray sweep stores exactly the points a serial sweep would, only sooner.

Order. Pass 1 (each search's first batch, normally B = 1) of every unit comes first across the cluster: the
driver submits no more tasks than there are GPUs (or CPUs), pass-1 tasks before any pass-2 task, so a study
cut short holds batch 1 everywhere. A pass-1 task goes on into its unit's pass 2 with the model it has built
when no unit still waits for its pass 1; otherwise its pass 2 is a task of its own, later.

One writer. A worker writes nothing: it sends each event (perfkit.sweep's events: a job's rows, a build,
a budget wait) to an inbox actor on the driver's node as soon as it happens, and waits for the inbox to take
it. The driver takes the events and writes each row with the serial sweep's atomic, keyed write
(perfkit.results.write_point), under the results directory's lock, which it holds throughout.

Failures. The driver's death is a serial sweep's SIGKILL: what was written is whole, the same command
resumes. A worker's or a node's death makes Ray run the unit's task again (UNIT_RETRIES times): the new
attempt asks the inbox for the rows it already holds of that unit, judges its searches from them (as a
resumed serial sweep replays stored rows) and measures only the rest. An attempt that is superseded is
fenced off (the inbox ignores it), so no point is written twice. Out of memory inside a point stays data
(an `oom` row), as in a serial sweep. A unit whose task fails past its retries is reported and left for the
next run of the same command.

Devices. One device model per results directory: before anything is written, one probe task per node names
its device (torch's name, and NVML's for every GPU where nvidia-ml-py is installed); a cluster whose GPUs
(or CPUs) differ is refused, naming them, as is a results directory measured on another model. Rows record
the `host` and `gpu_index` they ran on. A system's `cuda` or `cuda:N` means the one GPU Ray gives its task.
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

from perfkit.errors import UsageError, one_line, shown

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
                         f"{len(_alive_nodes())} node(s), {gpus} GPU(s), {cpus} CPU(s)")
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

    def environments(self, params, chosen, searches, out_dir: str, devices: dict[str, set[str]]) -> dict:
        """The provenance of the devices that will measure, per system device (as perfkit.sweep._environments
        gives a serial sweep's), from one probe task per node. Refuses a cluster without the device a system
        needs, a cluster whose devices differ, and a results directory measured on another device."""
        by_kind: dict[str, list] = {}
        for system in chosen:
            if any(s.spec.system == system and not s.finished() for s in searches):
                by_kind.setdefault(_kind(system.device), []).append(system)
        envs = {}
        self.inbox()  # first: an actor takes a worker process of its own; the probes' stay for the units
        for kind, systems in by_kind.items():
            nodes = [n for n in _alive_nodes() if n["Resources"].get(_RESOURCE[kind], 0) >= 1]
            if not nodes:
                s = systems[0]
                raise UsageError(f"system {s.label!r} runs on {s.device}, but {self.where} has no "
                                 f"{'GPU' if kind == 'cuda' else 'CPU'}: expected a cluster with "
                                 f"{'GPUs (one per task)' if kind == 'cuda' else 'CPUs'}, or that system on "
                                 f"{'device: cpu' if kind == 'cuda' else 'a GPU'}")
            answers = self._probe(kind, nodes)
            _check_one_device(kind, answers)
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
            self.slots[kind] = int(sum(n["Resources"].get(_RESOURCE[kind], 0) for n in nodes))
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
                             f"(one task per node, each needing one {_RESOURCE[kind]}): expected free "
                             f"{_RESOURCE[kind]}s") from None

    # ---- the sweep ------------------------------------------------------------------------------------

    def run(self, runner, groups, done: dict[str, dict], budget_s: float | None) -> None:
        """Run every unit of `groups` (perfkit.sweep._by_model) as Ray tasks; `runner` (perfkit.sweep.
        _SweepRunner) writes what they send. Returns when every unit is done, or left for a later run."""
        import perfkit.sweep as sweep

        deadline = None if budget_s is None else time.time() + budget_s
        inbox = self.inbox()
        learn_ref = ray.put([_slim(r) for r in done.values()])  # the budget's references, shared by every task
        faults = os.environ.get(sweep.FAULT_ENV)
        # the functions a worker measures and builds with: perfkit's own (pickled by name), or a test's stand-in
        measure, build = sweep.measure_point, sweep.build_model
        kinds = [_kind(system.device) for system, _, _ in groups]
        queue1 = collections.deque(i for i, (_, _, g) in enumerate(groups)
                                   if any(not s.finished() and s.next_index == 0 for s in g))
        queue2 = collections.deque(i for i, (_, _, g) in enumerate(groups)
                                   if i not in queue1 and any(not s.finished() for s in g))
        self.workers = min(self.workers, len(queue1) + len(queue2))  # at most one GPU (or CPU) per unit
        running: dict[int, tuple] = {}  # unit -> (ref, first_only)
        ending: set[int] = set()  # units whose task said it has ended
        hellos: dict[int, int] = {}  # unit -> attempts that started, for the task running now
        measured_now: list[dict] = []  # rows measured by this invocation (slim), for the budget of later tasks
        proceed = False
        runner.run_extra["ray"] = {"cluster": self.where, "slots": dict(self.slots), "workers": {}}

        def submit(u: int, first_only: bool) -> None:
            system, model, group = groups[u]
            task = _unit_gpu if kinds[u] == "cuda" else _unit_cpu
            ref = task.options(max_retries=UNIT_RETRIES, retry_exceptions=False).remote(
                u, runner.params, system, model, group, (True, False) if first_only else (False,), runner.run_id,
                faults, deadline, learn_ref, list(measured_now), list(runner.builds), _stored_of(runner.params, group, done),
                measure, build, inbox, self.expected[kinds[u]], kinds[u])
            running[u] = (ref, first_only)
            hellos[u] = 0

        def take(timeout: float) -> None:
            for u, event in ray.get(inbox.take.remote(timeout)):
                system, model, group = groups[u]
                if event[0] == "hello":
                    info = event[1]
                    hellos[u] += 1
                    key = f"{info['host']}:{'gpu' + str(info['gpu_index']) if info['gpu_index'] is not None else 'cpu'}"
                    runner.run_extra["ray"]["workers"][key] = info["env"]
                    if hellos[u] > 1:
                        print(f"perfkit: Ray: {system.label} {model} started again on {info['host']} (attempt "
                              f"{hellos[u]}: its worker or node died); it goes on after the points already "
                              "written", file=sys.stderr, flush=True)
                elif event[0] == "end":
                    ending.add(u)
                else:
                    if event[0] == "job" and event[3]:
                        measured_now.extend(_slim(r) for r in event[2].values() if r["status"] == "ok")
                    if event[0] == "status":
                        event = ("status", f"{len(running)} running, last: {event[1]}")
                    runner.handle(event, group, remote=True)

        try:
            checked = 0.0
            while queue1 or queue2 or running:
                if time.monotonic() - checked > 2.0:  # nodes may join or leave
                    self._recount()
                    checked = time.monotonic()
                for queue, first_only in ((queue1, True), (queue2, False)):
                    for u in list(queue):
                        busy = sum(1 for v in running if kinds[v] == kinds[u])
                        if busy < max(1, self.slots.get(kinds[u], 1)):
                            queue.remove(u)
                            submit(u, first_only)
                if not proceed and not queue1 and all(hellos[u] for u, (_, first) in running.items() if first):
                    # every unit's pass 1 holds its GPU (or CPU): a pass-1 task may now go on into its pass 2
                    inbox.allow_proceed.remote()
                    proceed = True
                take(POLL_S)
                refs = {running[u][0]: u for u in running}
                if not refs:
                    continue
                if ending & set(running):  # a task that said it ended returns within moments
                    ray.wait([running[u][0] for u in ending & set(running)],
                             num_returns=len(ending & set(running)), timeout=30)
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
                if not ready:
                    continue
                take(0)  # each task's events reached the inbox before it returned: all of them are there now
                for ref in ready:
                    u = refs[ref]
                    system, model, group = groups[u]
                    first_only = running.pop(u)[1]
                    ending.discard(u)
                    inbox.forget.remote(u)
                    try:
                        whole = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        if isinstance(exc.cause, UsageError):  # a worker on another device model than the rest
                            raise UsageError(str(exc.cause)) from None
                        raise
                    except ray.exceptions.RayError as exc:  # its worker or node died more often than retried
                        runner.lost.append(f"{system.label} {model}: {one_line(exc, 300)}")
                        continue
                    if first_only and not whole and any(not s.finished() for s in group):
                        queue2.append(u)
        except BaseException as exc:  # Ctrl-C or a refusal: stop the tasks; what was written stays
            for ref, _ in running.values():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already ended
                    pass
            if isinstance(exc, KeyboardInterrupt):  # the jobs that finished before it: stored, as serially
                try:
                    take(0)
                except Exception:  # noqa: BLE001 - the inbox went with the interrupt: nothing more to store
                    pass
            raise
        finally:
            if runner.run_written:  # the record names every worker that measured
                runner._write_run(again=True)

    def _recount(self) -> None:
        nodes = _alive_nodes()
        for kind in self.slots:
            n = int(sum(node["Resources"].get(_RESOURCE[kind], 0) for node in nodes))
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


_RESOURCE = {"cuda": "GPU", "cpu": "CPU"}
_INBOXES: dict = {}  # this process's inbox actor and the Ray job it belongs to


def _kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _check_one_device(kind: str, answers: list[dict]) -> None:
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


def _stored_of(params, group, done: dict[str, dict]) -> dict[str, dict]:
    """The stored rows of a unit's points, by key (a job stored past an error is judged from them)."""
    from perfkit.rows import point_key
    from perfkit.sweep import key_fields

    out = {}
    for s in group:
        for b in params.batch_sizes[s.next_index:]:
            for o in s.spec.output_lens:
                key = point_key(key_fields(params, s.spec, o, b))
                if key in done:
                    out[key] = done[key]
    return out


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

    async def put(self, unit: int, token: str, event: tuple) -> bool:
        if self.tokens.get(unit) != token:
            return False
        if event[0] == "job" and event[3]:
            self.rows.setdefault(unit, {}).update({r["point_key"]: r for r in event[2].values()})
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


def _worker_setup(kind: str) -> None:
    """One thread per CPU worker (two workers on two cores must not wait on each other's OpenMP threads);
    the garbage collector told to skip what already exists, as the serial sweep does."""
    global _SETUP_DONE
    import gc

    import torch

    if kind == "cpu":
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    if not _SETUP_DONE:
        import perfkit.sweep  # noqa: F401 - everything a unit needs, imported before the freeze

        gc.collect()
        _SETUP_DONE = True
    # What is alive as a task starts (modules an earlier task imported, Ray's state) stays alive: out of the
    # collector's sight, the collection that frees a unit's model at its end takes milliseconds, not 0.1 s.
    gc.freeze()


def _worker_env(kind: str, device: str) -> dict:
    """This worker's provenance for `device` (its one GPU, or the CPU), as a serial sweep records its own."""
    from perfkit.provenance import environment

    local = "cuda" if kind == "cuda" else "cpu"
    if local not in _ENVS or kind == "cuda":  # a GPU worker runs one task (max_calls=1): no cache to go stale
        _ENVS[local] = environment(local)
    return {**_ENVS[local], "device": device}


def _probe(kind: str) -> dict:
    _worker_setup(kind)
    env = _worker_env(kind, kind)
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


def _run_unit(unit, params, system, model, searches, passes, run_id, faults, deadline, learn_rows, measured_rows,
              builds, stored, measure, build, inbox, expected, kind) -> bool:
    """One unit's task: its passes, with perfkit.sweep's _UnitRunner, each event sent to the inbox. Returns
    whether it ran every pass it was given (False: it stopped after pass 1, whose pass 2 is another task)."""
    import perfkit.sweep as sweep
    from perfkit import hardware
    from perfkit.budget import DurationEstimator

    _worker_setup(kind)
    token = secrets.token_hex(8)
    received = ray.get(inbox.begin.remote(unit, token))
    env = _worker_env(kind, system.device)
    if env["device_name"] != expected:
        raise UsageError(f"host {env['hostname']} measures on {env['device_name']!r}, the rest of the sweep on "
                         f"{expected!r}: expected one device model per results directory (a node joined the "
                         "cluster with another model)")

    def send(event) -> None:
        put = inbox.put.remote(unit, token, event)
        if event[0] == "status":  # a note for the progress bar: not waited for (the next put keeps the order)
            return
        # Waited for: a retried attempt then finds every row this one sent (inbox.begin), and the driver has
        # every event of a task by the time the task returns.
        if not ray.get(put):
            raise _Superseded(f"unit {unit}: a newer attempt took over")

    send(("hello", {"host": env["hostname"], "pid": os.getpid(), "gpu_index": env["gpu_index"], "env": env}))
    estimators = {system.device: DurationEstimator(hardware.lookup(env["device_name"]))}
    runner = sweep._UnitRunner(params, run_id, lambda device: env, sweep._Faults(faults), deadline, time.time,
                               estimators, builds, stored, received, measure, build,
                               (lambda d: "cuda") if kind == "cuda" else None)
    runner.learn(list(learn_rows) + list(measured_rows))
    answer = {}

    def proceed() -> bool:
        answer["proceed"] = bool(ray.get(inbox.may_proceed.remote()))
        return answer["proceed"]

    for event in runner.run(system, model, searches, passes, proceed):
        send(event)
    send(("end", answer))
    return answer.get("proceed", True)


# GPU tasks never share a worker process (max_calls=1): a process's CUDA context stays on the GPU it first had.
_probe_gpu = ray.remote(num_gpus=1, num_cpus=0, max_calls=1, max_retries=0)(_probe)
_probe_cpu = ray.remote(num_cpus=1, max_retries=0)(_probe)
_unit_gpu = ray.remote(num_gpus=1, num_cpus=1, max_calls=1)(_run_unit)
_unit_cpu = ray.remote(num_cpus=1)(_run_unit)


# ---- the isolation check ------------------------------------------------------------------------------

ISOLATION_MIN_REPEATS = 10  # timed repeats per worker and round, at least
ISOLATION_ROUNDS = 3  # alone, then all busy, this many times over: a drift in the background hits both


class _Barrier:
    """Lines up the busy phase's workers, all on one node: all start their timed repeats together, and each
    keeps its device busy after them until every worker has finished its own. Files in a folder of the
    node's temporary directory, not an actor: a worker that waits asks the file system (a system call), so
    its waiting loads no other process while the others are timed."""

    def __init__(self, token: str, n: int):
        import tempfile

        self.folder, self.n = os.path.join(tempfile.gettempdir(), f"perfkit-isolation-{token}"), n
        os.makedirs(self.folder, exist_ok=True)

    def _count(self, what: str) -> int:
        return sum(name.startswith(what) for name in os.listdir(self.folder))

    def mark(self, what: str, i: int) -> None:
        open(os.path.join(self.folder, f"{what}-{i}"), "w").close()

    def arrived(self) -> bool:
        return self._count("arrived") >= self.n

    def finished(self) -> bool:
        return self._count("finished") >= self.n

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


class _Worker:
    """One GPU (or CPU worker) of the isolation check: builds the point's model once and warms it up, then
    times the point on request, alone or lined up with the others (`barrier`)."""

    def __init__(self, params, system, point, kind, measure, build):
        from perfkit.models import parse_dtype

        _worker_setup(kind)
        self.kind, self.point, self.seed, self.measure = kind, point, params.seed, measure
        device = "cuda" if kind == "cuda" else system.device
        self.system = dataclasses.replace(system, device=device)
        self.model = build(point.model, parse_dtype(system.dtype), device, system.attn_implementation,
                           seed=params.seed)
        self.env = _worker_env(kind, system.device)
        self.run(max(params.warmup, 1))  # warm-up

    def run(self, repeats: int):
        return self.measure(self.model, self.system, self.point, warmup=0, repeats=repeats, seed=self.seed)

    def where(self) -> dict:
        return {"host": self.env["hostname"], "gpu_index": self.env["gpu_index"],
                "device_name": self.env["device_name"]}

    def timed(self, repeats: int, lineup: tuple | None = None) -> dict:
        """`repeats` timed repeats; with `lineup` (token, workers, this worker's number), lined up with the
        other workers of the round (_Barrier)."""
        barrier = None
        if lineup is not None:
            token, n, i = lineup
            barrier = _Barrier(token, n)
            barrier.mark("arrived", i)
            while not barrier.arrived():
                time.sleep(0.001)
        m = self.run(repeats)
        if barrier is not None:
            barrier.mark("finished", i)
            while not barrier.finished():  # the load stays until every timed repeat is done
                self.run(1)
        return {"ttft_s": list(m.ttft_s), "e2e_s": list(m.e2e_s)}

    def remove(self, token: str) -> None:
        _Barrier(token, 0).remove()


_worker_gpu = ray.remote(num_gpus=1, num_cpus=0)(_Worker)
_worker_cpu = ray.remote(num_cpus=1)(_Worker)


def isolation_check(params_or_path, systems: list[str] | None = None, address: str | None = "local",
                    n_boot: int = 2000, seed: int = 0) -> dict:
    """How much a busy node slows a point: the plan's first point (first system, model, I, O; first batch)
    timed on one GPU (or CPU worker) of the node with the most, alone, then while every other GPU of that
    node runs the same point, ISOLATION_ROUNDS times over. Returns the samples, the busy/alone ratio of the
    median e2e and ttft on that one device with a bootstrap interval, the other devices' busy medians, and
    a verdict. Writes nothing."""
    import numpy as np
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import perfkit.sweep as sweep
    from perfkit.compare import _boot_medians
    from perfkit.search import search_specs
    from perfkit.workload import Point

    params = sweep._as_params(params_or_path)
    chosen = sweep._select(params, systems)
    specs = search_specs(params, chosen)
    if not specs:
        raise UsageError(f"{params.source}: no point to measure (every length beyond its model's context)")
    spec = specs[0]
    point = Point(spec.model, spec.input_len, spec.run_output_len, params.batch_sizes[0])
    kind = _kind(spec.system.device)
    repeats = max(params.repeats, ISOLATION_MIN_REPEATS)
    with Connection(address) as c:
        nodes = [n for n in _alive_nodes() if n["Resources"].get(_RESOURCE[kind], 0) >= 1]
        if not nodes:
            raise UsageError(f"system {spec.system.label!r} runs on {spec.system.device}, but {c.where} has no "
                             f"{_RESOURCE[kind]}: expected a node with {_RESOURCE[kind]}s")
        node = max(nodes, key=lambda n: n["Resources"].get(_RESOURCE[kind], 0))
        n = int(node["Resources"][_RESOURCE[kind]])
        if n < 2:
            raise UsageError(f"the isolation check needs a node with 2 {_RESOURCE[kind]}s or more; the largest of "
                             f"{c.where} has {n}")
        c.say_started()
        pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        workers = [(_worker_gpu if kind == "cuda" else _worker_cpu).options(scheduling_strategy=pin).remote(
            params, spec.system, point, kind, sweep.measure_point, sweep.build_model) for _ in range(n)]
        try:
            where = ray.get([w.where.remote() for w in workers], timeout=PROBE_TIMEOUT_S)
            alone, busy = [], [[] for _ in workers]
            for _ in range(ISOLATION_ROUNDS):
                alone.append(ray.get(workers[0].timed.remote(repeats)))
                token = secrets.token_hex(6)
                for i, r in enumerate(ray.get([w.timed.remote(repeats, (token, n, i)) for i, w in enumerate(workers)])):
                    busy[i].append(r)
                ray.get(workers[0].remove.remote(token))
        except ray.exceptions.GetTimeoutError:
            raise UsageError(f"{c.where}: the isolation check's {n} workers did not start within "
                             f"{PROBE_TIMEOUT_S:.0f} s: expected {n} free {_RESOURCE[kind]}s on "
                             f"{node['NodeManagerAddress']}") from None
        finally:
            for w in workers:
                ray.kill(w)
    rng = np.random.default_rng(seed)
    out = {"system": spec.system.label, "model": point.model, "input_len": point.input_len,
           "output_len": point.output_len, "batch": point.batch, "repeats": repeats, "rounds": ISOLATION_ROUNDS,
           "kind": kind, "workers": n, **where[0], "where": where}

    def pooled(runs, metric):
        return np.concatenate([np.array(r[f"{metric}_s"]) for r in runs]) * 1e3

    for metric in ("e2e", "ttft"):
        a, b = pooled(alone, metric), pooled(busy[0], metric)
        draws = _boot_medians(b, rng, n_boot) / _boot_medians(a, rng, n_boot)
        lo, hi = (float(q) for q in np.quantile(draws, [0.025, 0.975]))
        others = [float(np.median(pooled(runs, metric))) for runs in busy[1:]]
        out[metric] = {"alone_ms": float(np.median(a)), "busy_ms": float(np.median(b)), "alone_iqr": _iqr(a),
                       "busy_iqr": _iqr(b), "ratio": float(np.median(b) / np.median(a)), "lo": lo, "hi": hi,
                       "others_busy_ms": (min(others), max(others)), "alone": a.tolist(), "busy": b.tolist()}
    e2e = out["e2e"]
    out["verdict"] = ("within noise" if e2e["lo"] <= 1 <= e2e["hi"] else
                      "slower when the node is busy" if e2e["lo"] > 1 else "faster when the node is busy")
    return out


def _iqr(x) -> float:
    import numpy as np

    return float(np.subtract(*np.percentile(x, [75, 25])) / np.median(x))


def isolation_text(r: dict) -> str:
    """What `perfkit sweep --ray --isolation-check` prints."""
    unit = "GPUs" if r["kind"] == "cuda" else "CPU workers"
    device = f"GPU {r['gpu_index']}" if r["gpu_index"] is not None else "worker 1"
    lines = [f"isolation check on {r['host']} ({r['workers']} {unit}, {r['device_name']}): {r['system']} "
             f"{r['model']} I={r['input_len']} O={r['output_len']} B={r['batch']}, {r['rounds']} rounds of "
             f"{r['repeats']} timed repeats, on {device} alone and with all {r['workers']} busy"]
    for metric in ("e2e", "ttft"):
        m = r[metric]
        lo, hi = m["others_busy_ms"]
        lines.append(f"  {metric:<5} alone {m['alone_ms']:.3f} ms (IQR {100 * m['alone_iqr']:.1f} %), busy "
                     f"{m['busy_ms']:.3f} ms (IQR {100 * m['busy_iqr']:.1f} %): ratio busy/alone {m['ratio']:.3f} "
                     f"[95 % interval {m['lo']:.3f} to {m['hi']:.3f}]; the other {unit} busy: {lo:.3f} to {hi:.3f} ms")
    e2e = r["e2e"]
    if r["verdict"] == "within noise":
        advice = (f"the parallel figures can be trusted: with every {unit[:-1]} busy, e2e moved by "
                  f"{100 * (e2e['ratio'] - 1):+.1f} %, within this point's noise")
    elif r["verdict"] == "slower when the node is busy":
        advice = (f"a busy node slows this point by {100 * (e2e['ratio'] - 1):.1f} % "
                  f"({100 * (e2e['lo'] - 1):.1f} to {100 * (e2e['hi'] - 1):.1f} %): a parallel sweep's figures are "
                  "that much slower than a serial sweep's; sweep serially, or compare only figures measured the "
                  "same way")
    else:
        advice = (f"a busy node made this point {100 * (1 - e2e['ratio']):.1f} % faster (clocks or caches while "
                  "alone?): repeat the check before trusting either")
    lines.append(f"verdict: {r['verdict']}: {advice}")
    return "\n".join(lines)
