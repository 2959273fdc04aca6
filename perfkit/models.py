"""Building models: the registry's architectures with random weights on a device, or a local checkpoint.

Timing does not need real weights: a model built from the published configuration with random weights
does the same arithmetic on the same shapes. Random weights are created directly on the target device
(`with torch.device(device)`), so building llama3-8b on a GPU never holds its 16 GB in CPU memory.
A local checkpoint directory (config.json + *.safetensors) loads the real weights instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from perfkit.errors import UsageError
from perfkit.registry import REGISTRY, ModelSpec, check_model_name, is_checkpoint_dir  # noqa: F401 (re-exported)
from perfkit.workload import ATTN_IMPLEMENTATIONS, DTYPE_NAMES, canonical_dtype

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


def parse_dtype(name: str) -> torch.dtype:
    return DTYPES[canonical_dtype(name)]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_model(model: str):
    """Return the registry spec, or the checkpoint's config for a local directory. Raises UsageError."""
    if model in REGISTRY:
        return REGISTRY[model]
    if os.path.isdir(model):
        if not is_checkpoint_dir(model):
            raise UsageError(
                f"{model!r} is a directory but not a checkpoint: expected config.json and *.safetensors in it"
            )
        from transformers import AutoConfig

        from safetensors import safe_open
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        try:
            config = AutoConfig.from_pretrained(model, trust_remote_code=False, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the checkpoint config in {model!r}: {exc}") from None
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise UsageError(f"checkpoint {model!r} is a {config.model_type!r} model: expected a causal language "
                             "model (llama, mistral, ...)")
        for name in sorted(f for f in os.listdir(model) if f.endswith(".safetensors")):
            try:  # reads the header only: a truncated or corrupt file is refused before anything is built
                with safe_open(os.path.join(model, name), framework="pt"):
                    pass
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise UsageError(f"checkpoint file {os.path.join(model, name)!r} is not valid safetensors "
                                 f"({exc}): expected an intact checkpoint") from None
        return config
    check_model_name(model)  # raises: neither a registry name nor a directory


def model_config(model: str):
    """The transformers config of a registry name or checkpoint directory."""
    spec = resolve_model(model)
    return spec.config() if isinstance(spec, ModelSpec) else spec


def context_length(model: str) -> int:
    spec = resolve_model(model)
    if isinstance(spec, ModelSpec):
        return spec.context
    return int(getattr(spec, "max_position_embeddings", 0) or 0) or 2**31


def count_params(model: str) -> int:
    """Parameter count, from a model built on the meta device (no memory, no arithmetic)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(model_config(model))
    return sum(p.numel() for p in m.parameters())


def build_model(model: str, dtype: torch.dtype, device: str | torch.device, attn_implementation: str = "sdpa",
                seed: int = 0):
    """Build a registry model with random weights directly on `device`, or load a checkpoint there."""
    from transformers import AutoModelForCausalLM

    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise UsageError(
            f"unknown attention implementation {attn_implementation!r}: expected one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    spec = resolve_model(model)
    if isinstance(spec, ModelSpec):
        torch.manual_seed(seed)
        # Allocating and initialising under the device context puts every parameter on `device` from the
        # start; the CPU never sees the full-size weights.
        with torch.device(device):
            m = AutoModelForCausalLM.from_config(spec.config(), dtype=dtype, attn_implementation=attn_implementation)
    else:
        import importlib.util

        # With accelerate, safetensors stream straight onto the device; without it (the GPU machine has
        # none) transformers loads on the host and we move the model: real weights must be read anyway.
        placement = {"device_map": str(device)} if importlib.util.find_spec("accelerate") else {}
        try:
            m = AutoModelForCausalLM.from_pretrained(
                model,
                dtype=dtype,
                attn_implementation=attn_implementation,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,
                **placement,
            )
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load the checkpoint {model!r}: {exc}") from None
        if not placement:
            m = m.to(device)
    return m.eval()


def describe(name: str) -> dict[str, Any]:
    """The registry row shown by `perfkit models`."""
    s = REGISTRY[name]
    return {
        "name": s.name,
        "params": count_params(name),
        "layers": s.layers,
        "hidden": s.hidden,
        "heads": s.heads,
        "kv_heads": s.kv_heads,
        "intermediate": s.intermediate,
        "vocab": s.vocab,
        "context": s.context,
        "stand_in_for": s.stand_in_for,
    }
