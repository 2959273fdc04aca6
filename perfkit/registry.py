"""The model registry: the study's three architectures at full size and as tiny CPU stand-ins.

Plain values, no torch: a params file naming registry models is checked without loading it. Building a
model from an entry is perfkit.models' work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from perfkit.errors import UnreadableFile, UsageError, read_regular, shown


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



def is_checkpoint_dir(path: str) -> bool:
    return (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, "config.json"))
        and any(f.endswith(".safetensors") for f in os.listdir(path))
    )


MAX_CONFIG_BYTES = 16 << 20  # a config.json is a few kB


def checkpoint_fingerprint(model: str) -> str | None:
    """What a checkpoint directory holds, read cheaply: a hash of its config.json's bytes and of each
    *.safetensors file's name, size and modification time (never its gigabytes); None for a registry name.

    It is part of the key of every point measured from the checkpoint (perfkit.rows.point_fields), so a
    directory whose config or weights were replaced is another model, not a resume of the old one. A
    checkpoint copied without its modification times (cp without -p) reads as changed too. Raises UsageError
    where the files cannot be read."""
    if model in REGISTRY or not os.path.isdir(model):
        return None
    config = os.path.join(model, "config.json")
    try:
        digest = hashlib.sha256(hashlib.sha256(read_regular(config, "a checkpoint's config.json",
                                                            MAX_CONFIG_BYTES)).digest())
        for name in sorted(f for f in os.listdir(model) if f.endswith(".safetensors")):
            st = os.stat(os.path.join(model, name))
            digest.update(f"\0{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    except UnreadableFile as exc:
        raise UsageError(f"checkpoint file {config!r}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"checkpoint {shown(model)} cannot be read ({exc.strerror or exc}): expected a checkpoint "
                         "directory") from None
    return digest.hexdigest()[:16]


def check_model_name(model: str) -> None:
    """A registry name or an existing directory (perfkit.models.resolve_model checks a checkpoint in full)."""
    if model in REGISTRY or os.path.isdir(model):
        return
    if os.sep in model or model.startswith("."):
        raise UsageError(f"model path {shown(model)} does not exist: expected a checkpoint directory")
    raise UsageError(f"unknown model {shown(model)}: expected one of {', '.join(REGISTRY)} or a checkpoint directory")
