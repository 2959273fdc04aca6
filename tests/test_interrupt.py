"""Ctrl-C during a sweep: the summary it promises (what was measured, that the same command continues),
exit 130, and no finished point lost."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, write_params


def _points(out):
    return glob.glob(os.path.join(out, "points", "*.parquet"))


@pytest.mark.slow
def test_ctrl_c_prints_the_summary_keeps_every_point_and_the_same_command_continues(tmp_path):
    # Points of about a second each on a CPU, so that SIGINT lands while one is being measured.
    params = write_params(tmp_path / "p.yaml", repeats=12, warmup=0,
                          grid={"input_lens": [64], "output_lens": [24], "batch_sizes": [1, 2, 3]})
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "perfkit", "sweep", params, "--out", out, "--no-progress"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _points(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _points(out), "no point was written"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    stored = len(_points(out))
    assert 1 <= stored < 3
    assert f"sweep -> {out}: measured {stored} points" in stdout, stdout
    assert f"interrupted (Ctrl-C): the {stored} points measured before it are stored" in stdout, stdout
    assert "run the same command to continue with the rest" in stdout

    from perfkit.results import load_results

    assert (load_results(out)["status"] == "ok").all()  # every stored point whole and readable

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"measured {3 - stored} points, {stored} already done" in again.stdout, again.stdout
    assert len(_points(out)) == 3
