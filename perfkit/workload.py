"""What is measured, in plain values: a system (how a model is run) and a point (the workload).

Nothing here imports torch, so a params file is parsed and a sweep planned (`--dry-run`) without it.
"""

from __future__ import annotations

import dataclasses

from perfkit.errors import UsageError, shown
from perfkit.serving.endpoint import SERVED_BACKEND, Endpoint

# The dtypes a system may name, canonical names first; the aliases a params file or flag may use.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
BACKEND_NAMES = ("hf-loop", "hf-generate", "static")  # perfkit.backends registers each

SEED_MAX = 2**63 - 1  # torch's generators take a signed 64-bit seed


@dataclasses.dataclass(frozen=True)
class System:
    """How a model is run: the things a target and a baseline may differ in."""

    label: str = "default"
    backend: str = "hf-loop"
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str = "sdpa"
    endpoint: Endpoint | None = None  # a served system (backend "served"): the server answers, perfkit times
    env: tuple = ()  # sorted (NAME, VALUE) pairs set before torch loads: its units run in a child process

    @property
    def served(self) -> bool:
        return self.endpoint is not None

    def env_key(self) -> str:
        """Whose provenance its rows carry: the device for an in-process system (its own entry where it sets
        an environment), the server for a served one."""
        if self.served:
            return f"{SERVED_BACKEND}:{self.label}"
        return f"{self.device}|env:{self.label}" if self.env else self.device


@dataclasses.dataclass(frozen=True)
class Point:
    model: str
    input_len: int
    output_len: int
    batch: int


def canonical_dtype(name: str) -> str:
    """"bf16" -> "bfloat16"; UsageError for a dtype perfkit does not run."""
    key = DTYPE_ALIASES.get(name, name)
    if key not in DTYPE_NAMES:
        raise UsageError(f"unknown dtype {shown(name)}: expected one of {', '.join(DTYPE_NAMES)}")
    return key


def check_seed(seed, what: str = "--seed") -> int:
    """The one rule for seeds, wherever they come from (flags, params files)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise UsageError(f"{what} must be an integer from 0 to 2**63 - 1, got {shown(seed)}")
    return seed
