"""Fixtures and hooks only: what test modules share as code (runners, row and params factories) is in
helpers.py, imported as `from helpers import ...`."""

import pytest


def pytest_configure(config):
    import torch

    # Tests run the measuring core on the CPU with a couple of threads: the machine has 2 cores.
    torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """Every test marked `gpu` is skipped where CUDA is not available (one place, not a skipif per test)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in gpu:
        item.add_marker(skip)


def pytest_collection_finish(session):
    """Freeze what the imports made (torch, transformers, pandas: a few million objects) out of the garbage
    collector's sight: every gc.collect() the code under test makes (a sweep frees memory after each model
    and each out-of-memory) then scans only what the tests themselves made, ~0.3 s less per call."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def tiny_models():
    """The three tiny registry models in float32 on the CPU, built once for the whole session."""
    import torch

    from perfkit.models import build_model

    return {name: build_model(name, torch.float32, "cpu")
            for name in ("tiny-llama3-8b", "tiny-llama2-13b", "tiny-mistral-7b")}


@pytest.fixture(scope="session")
def hostile_reports(tmp_path_factory):
    """A report and a comparison published from results whose every text is hostile (tests/hostile_text.py),
    rendered once for the session: test_report_safety.py reads their HTML, test_browser.py opens them."""
    from hostile_text import publish_hostile

    return publish_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="session")
def served_checkpoints(tmp_path_factory):
    """Tiny checkpoints a real server loads (perfkit.tiny_checkpoint): "exact" and "eos"."""
    from servers import write_checkpoints

    return write_checkpoints(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def vllm_server(served_checkpoints, tmp_path_factory):
    """vLLM's CPU build serving the "exact" checkpoint for the whole session, started (and stopped) by
    perfkit's own server lifecycle, with an API key that every request must carry (in servers.KEY_ENV)."""
    import os
    import types

    from servers import KEY_ENV, VLLM_ENV, VLLM_LAUNCH, need_vllm, new_key

    from perfkit.serving.endpoint import Endpoint
    from perfkit.serving.server import Server

    need_vllm()
    key = new_key()
    os.environ[KEY_ENV] = key
    endpoint = Endpoint(launch=VLLM_LAUNCH, launch_env=tuple(sorted({**VLLM_ENV, "VLLM_API_KEY": key}.items())),
                        ready_timeout_s=400)
    log_dir = str(tmp_path_factory.mktemp("vllm-log"))
    server = Server(endpoint, served_checkpoints["exact"], log_dir, "vllm")
    server.start()
    try:
        yield types.SimpleNamespace(base_url=server.base_url, key=key, model=served_checkpoints["exact"],
                                    log=server.log_path, server=server)
    finally:
        server.stop()
        os.environ.pop(KEY_ENV, None)
