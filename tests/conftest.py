import os
import sys

import pytest
import torch

# Tests run the measuring core on the CPU with a couple of threads: the machine has 2 cores.
torch.set_num_threads(2)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_models():
    """The three tiny registry models in float32 on the CPU, built once for the whole session."""
    from perfkit.models import build_model

    return {name: build_model(name, torch.float32, "cpu") for name in ("tiny-llama3-8b", "tiny-llama2-13b", "tiny-mistral-7b")}


def run_cli(*args, cwd=None, timeout=300):
    """`python -m perfkit ARGS` in a subprocess; returns CompletedProcess with text output."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout)
