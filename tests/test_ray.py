"""Sweeps on Ray (perfkit sweep --ray): the same points as a serial sweep, pass 1 of every unit first, one
writer, nothing lost or doubled when a worker or the driver dies, the isolation check, and the refusals (no
Ray, a bad or unreachable address, no GPU for a GPU system) in one line with nothing written.

One local Ray instance (2 CPUs) serves every test of this module: the in-process sweeps use it as the
notebook or a benchmark would, and the subprocess sweeps join it by its address."""

import glob
import logging
import os
import signal
import socket
import sys
import threading
import time

import pytest
from helpers import CPU, call_cli, fake_measuring, modules_loaded_by, sigkill_midway, write_params

import perfkit.sweep.units as units
from perfkit.results import load_results, load_runs
from perfkit.sweep import run_sweep

pytestmark = pytest.mark.slow

MODELS = ["tiny-llama2-13b", "tiny-mistral-7b"]
GRID = {"input_lens": [8, 16], "output_lens": [2, 4], "batch_sizes": [1, 2, 4]}


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance of 2 CPUs for the whole session; its address (HOST:PORT) for subprocesses."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _keys(out):
    return sorted(os.path.basename(f)[: -len(".parquet")] for f in glob.glob(os.path.join(out, "points", "*.parquet")))


def _logged_measuring(monkeypatch, log, sleep_s=0.0):
    """fake_measuring, whose stand-ins (they run in the Ray workers) also append a line per build and per
    measured point to the file `log`: time, pid, what, model, I, O, B."""
    fake_measuring(monkeypatch)
    fake_measure, path = units.measure_point, str(log)

    def measure(model, system, point, warmup, repeats, seed):
        import os
        import time

        with open(path, "a") as f:
            f.write(f"{time.time()} {os.getpid()} measure {point.model} {point.input_len} {point.output_len} "
                    f"{point.batch}\n")
        time.sleep(sleep_s)
        return fake_measure(model, system, point, warmup, repeats, seed)

    def build(name, *a, **kw):
        import os
        import time

        with open(path, "a") as f:
            f.write(f"{time.time()} {os.getpid()} build {name} 0 0 0\n")
        return object()

    monkeypatch.setattr(units, "measure_point", measure)
    monkeypatch.setattr(units, "build_model", build)


def _log_lines(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [(float(t), int(pid), what, model, int(i), int(o), int(b))
                for t, pid, what, model, i, o, b in (line.split() for line in f if line.count(" ") == 6)]


def test_a_ray_sweep_stores_exactly_the_points_of_a_serial_sweep_batch_one_first(ray_cluster, tmp_path,
                                                                                  monkeypatch):
    # four units (two models x two attention implementations) on two workers, out-of-memory rows included
    monkeypatch.setenv(units.FAULT_ENV, "oom:2:tiny-mistral-7b")
    log = tmp_path / "log"
    _logged_measuring(monkeypatch, log)
    params = write_params(tmp_path / "p.yaml", models=MODELS, grid=GRID,
                          systems=[dict(CPU), {**CPU, "label": "cpu-eager", "attn_implementation": "eager"}])
    serial, parallel = str(tmp_path / "serial"), str(tmp_path / "ray")
    a = run_sweep(params, out_dir=serial, progress=False)
    b = run_sweep(params, out_dir=parallel, progress=False, ray="local")
    assert (b.measured, b.skipped, b.failures, b.workers, b.lost) == (a.measured, 0, [], 2, [])
    assert len(b.ooms) == len(a.ooms) == 8  # B=2 of tiny-mistral-7b: out of memory stays data, ends the search
    assert _keys(parallel) == _keys(serial) and len(_keys(parallel)) == a.measured == 40  # none twice
    columns = ["point_key", "status", "search_gain", "search_stop", "ttft_ms", "e2e_ms", "output_tok_s", "device"]
    left, right = (load_results(d).sort_values("point_key")[columns].reset_index(drop=True) for d in (serial, parallel))
    assert left.equals(right)
    rows = load_results(parallel)
    assert set(rows["host"]) == {socket.gethostname()} and rows["gpu_index"].isna().all()
    assert set(load_results(serial)["host"]) == {socket.gethostname()}  # a serial sweep says where it ran too
    [run] = load_runs(parallel)
    assert run["ray"]["slots"] == {"cpu": 2} and run["ray"]["workers"]

    # Batch 1 of every unit first: no batch > 1 is measured before every unit's pass 1 has begun (its build).
    lines = [x for x in _log_lines(log) if x[1] != os.getpid()]  # the Ray sweep's, in its workers
    builds = sorted(t for t, _, what, *_ in lines if what == "build")
    first_pass2 = min(t for t, _, what, _, _, _, b in lines if what == "measure" and b > 1)
    assert len([x for x in lines if x[2] == "measure" and x[6] == 1]) == 16
    assert len(builds) >= 4 and builds[3] < first_pass2  # four units, each built before any search step


def test_a_worker_killed_mid_sweep_is_retried_and_every_point_is_stored_once(ray_cluster, tmp_path, monkeypatch,
                                                                            capsys):
    log = str(tmp_path / "log")
    _logged_measuring(monkeypatch, log, sleep_s=0.1)
    params = write_params(tmp_path / "p.yaml", models=MODELS, grid=GRID)
    out = str(tmp_path / "out")
    killed = []

    def kill_a_worker():  # once three points have been measured, kill the process measuring the latest one
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            measured = [x for x in _log_lines(log) if x[2] == "measure"]
            if len(measured) >= 3:
                pid = measured[-1][1]
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, len(measured)))
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    outcome = run_sweep(params, out_dir=out, progress=False, ray="local")
    killer.join()
    assert killed, "no worker was killed"
    assert "started again on" in capsys.readouterr().err  # Ray ran the unit's task again (max_retries)
    pid, before = killed[0]
    measured = [x for x in _log_lines(log) if x[2] == "measure"]
    assert any(p == pid for _, p, *_ in measured) and any(p != pid for _, p, *_ in measured[before:])
    expected = len(MODELS) * 2 * 2 * 3  # models x I x O x B
    assert (outcome.measured, outcome.failures, outcome.lost) == (expected, [], [])
    assert len(_keys(out)) == expected and len(load_results(out)) == expected  # every point, once
    # the retried unit went on from what it had sent: at most the point in progress was measured again
    points = [x[3:] for x in measured]
    assert len(points) - len(set(points)) <= 1 and len(set(points)) == expected


def test_sigkill_of_the_driver_then_the_same_command_resumes_every_point_once(ray_cluster, tmp_path):
    """The driver (a subprocess joining the session's cluster by its address) dies by SIGKILL midway; the
    same command (here in this process, joining the same cluster) measures only what is missing."""
    params = write_params(tmp_path / "p.yaml", repeats=3,
                          grid={"input_lens": [16, 32], "output_lens": [6], "batch_sizes": [1, 2, 4]})
    out = str(tmp_path / "out")
    argv = ["sweep", params, "--out", out, "--no-progress", "--ray", ray_cluster]
    sigkill_midway(argv, out)
    before = load_results(out)
    assert 2 <= len(before) < 6, "the sweep was not killed midway"
    r = call_cli(*argv)
    assert r.returncode == 0, r.stderr
    assert f"measured {6 - len(before)} points, {len(before)} already done" in r.stdout, r.stdout
    after = load_results(out)
    assert len(after) == 6 and len(_keys(out)) == 6  # every point, exactly once
    kept = after[after["run_id"].isin(set(before["run_id"]))]
    assert set(kept["point_key"]) == set(before["point_key"])  # nothing written before the kill measured again


def test_the_isolation_check_runs_on_cpu_workers_and_prints_its_ratio(ray_cluster, tmp_path):
    params = write_params(tmp_path / "p.yaml", grid={"input_lens": [16], "output_lens": [4], "batch_sizes": [1]})
    r = call_cli("sweep", params, "--ray", "--isolation-check")
    assert r.returncode == 0, r.stderr
    head, e2e, ttft, verdict = r.stdout.strip().splitlines()
    assert head.startswith(f"isolation check on {socket.gethostname()} (2 CPU workers, ")
    assert "cpu tiny-llama2-13b I=16 O=4 B=1, 3 rounds of 10 timed repeats, on worker 1 alone and with all 2 " \
           "busy" in head
    assert e2e.strip().startswith("e2e") and "ratio busy/alone" in e2e and "95 % interval" in e2e
    assert ttft.strip().startswith("ttft") and "ratio busy/alone" in ttft
    ratio = float(e2e.split("ratio busy/alone ")[1].split()[0])
    assert 0.2 < ratio < 5
    assert verdict.startswith("verdict: ")
    assert not os.path.exists(tmp_path / "results")  # it writes nothing


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_the_measuring_core_and_the_command_line_never_import_ray():
    """A GPU machine has no Ray: only `--ray` imports it (perfkit.sweep.ray_runner)."""
    assert modules_loaded_by("perfkit.cli, perfkit.sweep, perfkit.measure, perfkit.results", ("ray",)) == []


def test_without_ray_the_flag_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    params = write_params(tmp_path / "p.yaml")
    before = _files(tmp_path)
    for argv in (["sweep", params, "--out", tmp_path / "out", "--ray"],
                 ["sweep", params, "--ray", "auto", "--isolation-check"],
                 ["publish", "sweep", params, "--out", tmp_path / "out", "--reports", tmp_path / "r", "--ray"]):
        r = call_cli(*argv)
        assert r.returncode == 2 and r.stdout == ""
        [line] = r.stderr.splitlines()
        assert "pip install 'perfkit[ray]'" in line
    assert _files(tmp_path) == before


@pytest.mark.parametrize("address, says", [
    ("nonsense", "is not a Ray address"),
    ("ray://", "is not a Ray address"),
    ("localhost:99999", "is not a Ray address"),
    ("http://host:6379", "is not a Ray address"),
    ("127.0.0.1:1", "no Ray cluster answers there"),
    ("ray://127.0.0.1:1", "no Ray cluster answers there"),
])
def test_a_bad_or_unreachable_address_is_one_line_and_writes_nothing(tmp_path, address, says, monkeypatch):
    fake_measuring(monkeypatch)
    params = write_params(tmp_path / "p.yaml")
    t = time.monotonic()
    r = call_cli("sweep", params, "--out", tmp_path / "out", "--ray", address)
    assert time.monotonic() - t < 15  # a bounded wait
    assert r.returncode == 2 and r.stdout == ""
    [line] = r.stderr.splitlines()
    assert says in line and "expected" in line
    assert not os.path.exists(tmp_path / "out")


def test_a_cluster_without_a_gpu_refuses_a_gpu_system_and_writes_nothing(ray_cluster, tmp_path, monkeypatch):
    fake_measuring(monkeypatch)
    params = write_params(tmp_path / "p.yaml", systems=[{**CPU, "label": "gpu", "device": "cuda", "dtype": "bfloat16"}])
    r = call_cli("sweep", params, "--out", tmp_path / "out", "--ray")
    assert r.returncode == 2 and r.stdout == ""
    [line] = r.stderr.splitlines()
    assert "system 'gpu' runs on cuda, but the Ray cluster this process is connected to has no GPU" in line
    assert not os.path.exists(tmp_path / "out")


def test_the_serial_sweeps_refusals_and_repairs_hold_for_a_ray_sweep(ray_cluster, tmp_path, monkeypatch, capsys):
    """The same code reads the directory first: another definition under a label is refused before Ray is asked
    for anything; a damaged point file is named and its point measured again, by a worker, once."""
    fake_measuring(monkeypatch)
    out = str(tmp_path / "out")
    params = write_params(tmp_path / "p.yaml", grid=GRID)
    assert run_sweep(params, out_dir=out, progress=False).measured == 12
    r = call_cli("sweep", write_params(tmp_path / "changed.yaml", grid=GRID, repeats=5), "--out", out, "--ray")
    assert r.returncode == 2 and "repeats 2 there, 5 here" in r.stderr and len(r.stderr.splitlines()) == 1
    damaged = glob.glob(os.path.join(out, "points", "*.parquet"))[0]
    with open(damaged, "r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    outcome = run_sweep(params, out_dir=out, progress=False, ray="local")
    assert (outcome.measured, outcome.skipped, outcome.workers) == (1, 11, 1)  # one unit had work
    assert f"perfkit: warning: skipped {damaged}: " in capsys.readouterr().err
    assert len(load_results(out)) == 12 and load_results(out).attrs["skipped_files"] == []


def test_a_cluster_whose_devices_differ_is_refused_naming_them():
    from perfkit.errors import UsageError
    from perfkit.sweep.ray_runner import check_one_device

    def node(host, name, nvml=()):
        return {"env": {"hostname": host, "device_name": name}, "nvml": list(nvml)}

    h100, a100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
    check_one_device("cuda", [node("a", h100, [h100]), node("b", h100, [h100])])  # one model: fine
    with pytest.raises(UsageError, match=rf"GPUs differ: '{a100}' on b; '{h100}' on a: expected one device model"):
        check_one_device("cuda", [node("a", h100), node("b", a100)])
    with pytest.raises(UsageError, match=rf"'{a100}' on a; '{h100}' on a"):  # one node, two models (NVML sees all)
        check_one_device("cuda", [node("a", h100, [h100, a100])])
