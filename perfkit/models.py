"""The model registry: the study's three architectures at full size and as tiny CPU stand-ins.

Timing does not need real weights: a model built from the published configuration with random weights
does the same arithmetic on the same shapes. Random weights are created directly on the target device
(`with torch.device(device)`), so building llama3-8b on a GPU never holds its 16 GB in CPU memory.
A local checkpoint directory (config.json + *.safetensors) loads the real weights instead.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from perfkit.errors import UsageError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registry entry: a transformers config class and the fields that define the architecture."""

    name: str
    family: str  # "llama" or "mistral": the transformers config class
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context: int  # max_position_embeddings: the longest input_len + output_len allowed
    rope_theta: float
    sliding_window: int | None = None
    stand_in_for: str | None = None  # tiny variants name the full model they scale down

    def config(self):
        """A fresh transformers config for this architecture."""
        from transformers import LlamaConfig, MistralConfig

        common: dict[str, Any] = dict(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.context,
            rope_theta=self.rope_theta,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        )
        if self.family == "mistral":
            return MistralConfig(sliding_window=self.sliding_window, **common)
        return LlamaConfig(**common)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


_FULL = [
    ModelSpec("llama3-8b", "llama", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0),
    ModelSpec("llama2-13b", "llama", 40, 5120, 40, 40, 13824, 32000, 4096, 10000.0),
    ModelSpec("mistral-7b", "mistral", 32, 4096, 32, 8, 14336, 32000, 32768, 10000.0, sliding_window=4096),
]


def _tiny(full: ModelSpec) -> ModelSpec:
    # Same family, vocabulary, context and attention layout (the query/kv head ratio: GQA 4:1 for
    # llama3 and mistral, full multi-head for llama2), same MLP/hidden ratio; 4 layers, hidden 128.
    heads = 8
    kv_heads = heads * full.kv_heads // full.heads
    hidden = 128
    intermediate = int(round(hidden * full.intermediate / full.hidden / 8)) * 8
    return dataclasses.replace(
        full,
        name=f"tiny-{full.name}",
        layers=4,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        stand_in_for=full.name,
    )


REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _FULL}
REGISTRY.update({t.name: t for t in (_tiny(s) for s in _FULL)})


def parse_dtype(name: str) -> torch.dtype:
    key = DTYPE_ALIASES.get(name, name)
    if key not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_checkpoint_dir(path: str) -> bool:
    return (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, "config.json"))
        and any(f.endswith(".safetensors") for f in os.listdir(path))
    )


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
    if os.sep in model or model.startswith("."):
        raise UsageError(f"model path {model!r} does not exist: expected a checkpoint directory")
    raise UsageError(f"unknown model {model!r}: expected one of {', '.join(REGISTRY)} or a checkpoint directory")


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
