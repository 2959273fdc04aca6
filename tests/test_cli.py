import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, call_cli, run_cli

from perfkit.results import COLUMNS


def test_models_json_lists_the_registry():
    r = call_cli("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert set(rows) == {"llama3-8b", "llama2-13b", "mistral-7b", "tiny-llama3-8b", "tiny-llama2-13b",
                         "tiny-mistral-7b"}
    assert rows["llama2-13b"]["kv_heads"] == 40 and rows["llama3-8b"]["vocab"] == 128256
    assert round(rows["mistral-7b"]["params"] / 1e9, 2) == 7.24


def test_env_json_has_provenance():
    r = call_cli("env", "--json")
    env = json.loads(r.stdout)
    for field in ("device_name", "cpu_model", "torch_version", "transformers_version", "created_utc", "git_commit"):
        assert field in env
    assert env["torch_version"].startswith("2.")


@pytest.mark.slow
def test_run_json_has_every_column_and_appends(tmp_path):
    args = ["run", "--model", "tiny-llama2-13b", "--input-len", "16", "--output-len", "4", "--batch", "2",
            "--repeats", "2", "--warmup", "0", "--system", "cli", "--out", str(tmp_path), "--json"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert set(COLUMNS) <= set(row)
    assert (row["system"], row["batch"], row["status"], row["repeats"]) == ("cli", 2, "ok", 2)
    assert row["output_tok_s"] == pytest.approx(2 * 4 / (row["e2e_ms"] / 1e3))
    assert run_cli(*args).returncode == 0
    from perfkit import load_results

    assert len(load_results(tmp_path)) == 2  # a second run appends, never overwrites
    assert len(os.listdir(tmp_path / "runs")) == 2


BAD = [
    (["--model", "llama4"], "unknown model 'llama4'"),
    (["--model", "/nonexistent/ckpt"], "does not exist"),
    (["--model", "tiny-llama3-8b", "--input-len", "0"], "input-len must be a positive integer"),
    (["--model", "tiny-llama3-8b", "--batch", "-1"], "batch must be a positive integer"),
    (["--model", "tiny-llama3-8b", "--output-len", "x"], "expected an integer"),
    (["--model", "llama2-13b", "--input-len", "4000", "--output-len", "128"], "exceeds llama2-13b's context"),
    (["--model", "tiny-llama3-8b", "--dtype", "int3"], "unknown dtype 'int3'"),
    (["--model", "tiny-llama3-8b", "--backend", "tensorrt"], "unknown backend 'tensorrt'"),
    (["--model", "tiny-llama3-8b", "--seed", "-1"], "--seed must be an integer from 0"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, extra, message):
    base = {"--input-len": "8", "--output-len": "4", "--batch": "1"}
    args = ["run", *extra]
    for flag, value in base.items():
        if flag not in extra:
            args += [flag, value]
    r = call_cli(*args, "--out", str(tmp_path / "out"))  # in this process: it stops before building a model
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", BAD[:1])
def test_bad_input_through_python_dash_m_is_one_line_exit_2(tmp_path, extra, message):
    # The same check through a fresh `python -m perfkit`: nothing printed at import time (a warning from a
    # dependency) adds a line to stderr, and the process's exit code is 2.
    r = run_cli("run", *extra, "--input-len", "8", "--output-len", "4", "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_is_not_one(tmp_path):
    r = call_cli("run", "--model", str(tmp_path), "--input-len", "8", "--output-len", "4")
    assert r.returncode == 2 and "not a checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(sys.platform != "linux", reason="CUDA absence is checked on the CPU machines")
def test_cuda_asked_for_where_there_is_none():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = call_cli("run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "4", "--device", "cuda")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr


def test_measuring_core_imports_no_notebook_or_plotting_machinery():
    code = (
        "import sys, perfkit, perfkit.cli, perfkit.measure, perfkit.results, perfkit.backends, perfkit.provenance\n"
        "import importlib.util\n"
        "for extra in ('perfkit.sweep', 'perfkit.params', 'perfkit.summary', 'perfkit.compare', "
        "'perfkit.console', 'perfkit.sweep.search', 'perfkit.rows', 'perfkit.sweep.budget', 'perfkit.attention', "
        "'perfkit.roofline', 'perfkit.static_backend', 'perfkit.energy', 'perfkit.hardware'):\n"
        "    if importlib.util.find_spec(extra): importlib.import_module(extra)\n"
        "import importlib\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('matplotlib', 'papermill', 'nbformat', 'nbconvert', 'IPython', 'jupyter', 'jupyterlab', 'seaborn')]\n"
        "print(bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", "import importlib\n" + code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [
    ["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2"],
    ["sweep", "params/smoke.yaml"],
    ["probe", "--device", "cpu"],
])
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for out, words in ((blocker, "is a file"), (blocker / "below", "lies under the file")):
        r = call_cli(*command, "--out", str(out))
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert blocker.read_text() == "not a directory"


def test_sigint_stops_perfkit_even_when_started_with_it_ignored():
    # A shell's background job inherits SIGINT ignored; `timeout --signal=INT` must still reach Python.
    import signal

    code = ("import os, signal, time\n"
            "from perfkit.cli import restore_interrupt\n"
            "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
            "restore_interrupt()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not interrupted')\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.stdout.strip() == "interrupted", done.stderr
