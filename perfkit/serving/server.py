"""A server's life: started by perfkit (its own process group, its log kept, stopped whatever happens) or
reached where it already runs; ready when its readiness URL answers 200; what it says of itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time

from perfkit.errors import UsageError, one_line, shown
from perfkit.serving.endpoint import Endpoint, root_of, shown_url

STOP_GRACE_S = 15.0  # SIGTERM, then this long for the engine to shut its workers down, then SIGKILL
MAX_MODELS_CHARS = 2000  # of the /v1/models answer a row keeps


class ServerError(RuntimeError):
    """A server that did not come up, or died: the message says which and ends with its log's last lines."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_argv(endpoint: Endpoint, model: str, port: int) -> list[str]:
    """The launch command with {port}, {model} and {served_model} filled in, split as a shell would (never
    run by one: no quoting accident can run something else)."""
    values = {"port": str(port), "model": model, "served_model": endpoint.model_name(model)}
    try:
        return [part.format(**values) for part in shlex.split(endpoint.launch)]
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"launch {shown(endpoint.launch)}: {one_line(exc)}, expected a command using only "
                         "{port}, {model} and {served_model}") from None


def check_launch(endpoint: Endpoint, model: str) -> None:
    """Before any work: the command can be split and its program exists (UsageError)."""
    argv = launch_argv(endpoint, model, 0)
    if not argv:
        raise UsageError("launch is empty, expected a command that starts the server")
    if shutil.which(argv[0]) is None:
        raise UsageError(f"launch: program {shown(argv[0])} not found, expected an executable (a path, or a name "
                         "on PATH)")


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when perfkit dies, even by SIGKILL (Linux), so a
    killed sweep leaves no server behind holding its port and memory."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def probe(url: str, timeout_s: float = 5.0, headers: dict | None = None):
    """GET `url` (no proxies): (status, body bytes) or (None, the connection error's message)."""
    import http.client
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as r:
            return r.status, r.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"


class Server:
    """One endpoint's server, started or reached. `start()` returns when it is ready; `stop()` always works."""

    def __init__(self, endpoint: Endpoint, model: str, log_dir: str | None, label: str, secret: str | None = None):
        self.endpoint, self.model, self.log_dir, self.label = endpoint, model, log_dir, label
        self.secret = secret  # the API key: masked in whatever of the server's words perfkit keeps
        self.proc: subprocess.Popen | None = None
        self.log_path: str | None = None
        self.base_url = endpoint.base_url

    # ---- starting ----
    def start(self) -> None:
        e = self.endpoint
        if e.launch is None:
            self.wait_ready(e.ready_timeout_s)
            return
        port = free_port()
        argv = launch_argv(e, self.model, port)
        self.base_url = e.base_url or f"http://127.0.0.1:{port}/v1"
        env = {**os.environ, **dict(e.launch_env)}
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            os.makedirs(self.log_dir, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.label)
            self.log_path = os.path.join(self.log_dir, f"{safe}-{stamp}-{port}.log")
            log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise ServerError(f"cannot start {shown(argv[0])}: {exc.strerror or exc}") from None
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            self.wait_ready(e.ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def ready_url(self) -> str:
        return root_of(self.base_url) + self.endpoint.ready_path

    def wait_ready(self, timeout_s: float) -> None:
        """Poll the readiness URL until it answers 200; ServerError past `timeout_s` or when the process
        perfkit started exits."""
        deadline = time.monotonic() + timeout_s
        status, body = None, ""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"the server exited with code {self.proc.returncode} before it was ready"
                                  f"{self.log_tail()}")
            status, body = probe(self.ready_url(), timeout_s=5.0)
            if status == 200:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5 if self.proc is not None else 1.0)
        said = f"HTTP {status}" if status is not None else body
        raise ServerError(f"{shown_url(self.ready_url())} not ready after {timeout_s:g} s ({one_line(said, 200)})"
                          f"{self.log_tail()}")

    # ---- while it runs ----
    def check_alive(self) -> None:
        """ServerError if the server perfkit started has exited (a point then fails with that, not with a
        connection error that hides why)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"the server exited (code {self.proc.returncode}) during the sweep{self.log_tail()}")

    def describe(self, headers: dict) -> dict:
        """What the server says of itself: its version (/version, vLLM's and SGLang's) and /v1/models."""
        from perfkit.serving.client import masked

        root = root_of(self.base_url)
        out = {"url": self.base_url, "version": None, "models": None}
        odd = (ValueError, AttributeError, TypeError, RecursionError)  # whatever a server says, it is not fatal
        status, body = probe(root + "/version", headers=headers)
        if status == 200:
            with contextlib.suppress(*odd):
                out["version"] = masked(str(json.loads(body).get("version")), self.secret)[:100]
        status, body = probe(self.base_url.rstrip("/") + "/models", headers=headers)
        out["models"] = f"unavailable (HTTP {status})" if status is not None else "unavailable"
        if status == 200:
            with contextlib.suppress(*odd):
                ids = [str(m.get("id")) for m in json.loads(body).get("data", []) if isinstance(m, dict)]
                out["models"] = masked(json.dumps(ids), self.secret)[:MAX_MODELS_CHARS]
        return out

    def log_tail(self, lines: int = 3) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 8192))
                tail = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()][-lines:]
        except OSError:
            return ""
        from perfkit.serving.client import masked

        return f"; its log ({self.log_path}) ends: " + " | ".join(
            " ".join(masked(t, self.secret).split())[:200] for t in tail)

    # ---- stopping ----
    def stop(self) -> None:
        """SIGTERM to the server's whole process group, SIGKILL after STOP_GRACE_S: no engine worker stays."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (workers that ignored SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
