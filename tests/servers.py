"""Real servers for the endpoint tests: vLLM's CPU build and `transformers serve`, from the venvs that
`make servers` makes (PERFKIT_SERVERS, default .venv-servers), serving tiny checkpoints written here.

Under `make test` (PERFKIT_REQUIRE_SERVERS=1) a missing server venv fails the tests that need it; a bare
`pytest` skips them, naming `make servers`.
"""

from __future__ import annotations

import os
import secrets

import pytest
from helpers import ROOT

SERVERS = os.environ.get("PERFKIT_SERVERS") or os.path.join(ROOT, ".venv-servers")
VLLM_PYTHON = os.path.join(SERVERS, "vllm", "bin", "python")
HF_SERVE = os.path.join(SERVERS, "transformers", "bin", "transformers")
KEY_ENV = "PERFKIT_TEST_API_KEY"

# The launch commands, as a params file gives them ({model} and {port} filled in by perfkit).
VLLM_LAUNCH = (f"{VLLM_PYTHON} -m vllm.entrypoints.openai.api_server --model {{model}} --dtype float32 "
               "--max-model-len 2048 --host 127.0.0.1 --port {port}")
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
HF_LAUNCH = f"{HF_SERVE} serve {{model}} --host 127.0.0.1 --port {{port}} --device cpu"
HF_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def rows_of(out_dir, sub: str = "points") -> list[dict]:
    """The rows of a results directory's point files (or `sub`: loads), read straight from Parquet."""
    import glob

    import pyarrow.parquet as pq

    return [pq.read_table(p).to_pylist()[0] for p in sorted(glob.glob(os.path.join(out_dir, sub, "*.parquet")))]


def all_text_under(folder) -> str:
    """Every byte of every file below `folder`, as text (Parquet files included: a key would show in them)."""
    out = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                out.append(f.read().decode("latin-1"))
    return "\n".join(out)


def need(path: str, what: str) -> None:
    if os.path.exists(path):
        return
    message = f"{what} is not installed at {path}: run `make servers`"
    if os.environ.get("PERFKIT_REQUIRE_SERVERS"):
        pytest.fail(message)
    pytest.skip(message)


def need_vllm() -> None:
    need(VLLM_PYTHON, "vLLM's CPU build")


def need_hf() -> None:
    need(HF_SERVE, "transformers serve")


def write_checkpoints(folder) -> dict:
    """{"exact": a checkpoint that never emits a special token, "eos": one that emits EOS at once}."""
    from perfkit.tiny_checkpoint import write_checkpoint

    return {"exact": write_checkpoint(os.path.join(folder, "tiny-served")),
            "eos": write_checkpoint(os.path.join(folder, "tiny-served-eos"), eos_first=True)}


def new_key() -> str:
    return "pk-test-" + secrets.token_hex(16)


def endpoint(**fields) -> dict:
    return dict(fields)


def hf_system(label: str = "hf-serve", **extra) -> dict:
    """`transformers serve`, launched by perfkit; it takes no token ids, so its prompts are text."""
    return {"label": label, "endpoint": {"launch": HF_LAUNCH, "env": HF_ENV, "ready_timeout_s": 120, "prompt": "text",
                                         **extra}}


def vllm_system(base_url: str, label: str = "vllm", **extra) -> dict:
    ep = {"base_url": base_url, "api_key_env": KEY_ENV, "extra_body": {"ignore_eos": True}}
    ep.update(extra)
    return {"label": label, "endpoint": ep}
