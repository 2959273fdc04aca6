"""Building models: the registry's architectures with random weights on a device, or a local checkpoint.

Timing does not need real weights: a model built from the published configuration with random weights
does the same arithmetic on the same shapes. Random weights are created directly on the target device
(`with torch.device(device)`), so building llama3-8b on a GPU never holds its 16 GB in CPU memory.
A local checkpoint directory (config.json + *.safetensors) loads the real weights instead.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import torch

from perfkit.errors import UnreadableFile, UsageError, nesting_refused, one_line, open_regular, read_regular, shown
from perfkit.registry import MAX_CONFIG_BYTES, REGISTRY, ModelSpec, check_model_name, is_checkpoint_dir
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
        try:
            is_checkpoint = is_checkpoint_dir(model)
        except OSError as exc:  # a directory that cannot be listed
            raise UsageError(f"{shown(model)} cannot be read ({exc.strerror}): expected a checkpoint "
                             "directory") from None
        if not is_checkpoint:
            raise UsageError(
                f"{shown(model)} is a directory but not a checkpoint: expected config.json and *.safetensors in it"
            )
        from safetensors import safe_open
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        _check_regular_files(model)
        _check_config_values(model)
        try:
            config = AutoConfig.from_pretrained(model, trust_remote_code=False, local_files_only=True)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers' validation raises its own types, and differs by version
            raise UsageError(f"cannot read the checkpoint config in {model!r} ({one_line(exc, 400)}): expected a "
                             "config.json that transformers reads") from None
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
        _check_weights(model, config)
        return config
    check_model_name(model)  # raises: neither a registry name nor a directory


def _check_regular_files(model: str) -> None:
    """Refuse a checkpoint whose config.json or a *.safetensors is not a regular file (a FIFO would block
    its open for ever, a link to /dev/zero would be read without end), or a config.json of more than
    MAX_CONFIG_BYTES, before transformers or safetensors opens any of them (errors.open_regular)."""
    for path in _checkpoint_files(model):
        config = path.endswith("config.json")
        what = "a checkpoint's config.json" if config else "a checkpoint's safetensors file"
        try:
            os.close(open_regular(path, what, MAX_CONFIG_BYTES if config else None))
        except UnreadableFile as exc:
            raise UsageError(f"checkpoint file {path!r}: {exc}") from None


# The sizes in a config.json that perfkit and transformers compute with: each a positive integer where given
# (null too for those in _MAY_BE_NULL, which transformers then derives). GPT-2's names too: any causal
# model's config.json is read.
_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
          "vocab_size", "max_position_embeddings", "head_dim", "sliding_window",
          "n_layer", "n_embd", "n_head", "n_positions", "n_inner")
_MAY_BE_NULL = ("num_key_value_heads", "head_dim", "sliding_window", "n_inner")


def _check_config_values(model: str) -> None:
    """Refuse, in one line naming the field, a checkpoint's config.json that is no JSON object (a list, JSON
    nested too deeply), whose sizes (_SIZES) are not positive integers (NaN, "4", 4.5, true, 0), whose heads
    do not divide its hidden size (where no head_dim is given) or whose key/value heads do not divide its
    heads, or whose dtype or torch_dtype names no torch dtype. Checked on the file's own values, before
    transformers reads it: transformers refuses some of these with an error of its own type, differently
    from version to version, and lets others through to fail in the middle of a measurement."""
    path = os.path.join(model, "config.json")
    expected = "the model's configuration as a JSON object"

    def refuse(problem: str, what: str):
        raise UsageError(f"checkpoint file {path!r}: {problem}: expected {what}")

    try:
        blob = read_regular(path, "a checkpoint's config.json", MAX_CONFIG_BYTES)
        with nesting_refused("JSON nested a few levels deep"):
            config = json.loads(blob)
    except UnreadableFile as exc:
        raise UsageError(f"checkpoint file {path!r}: {exc}") from None
    except ValueError as exc:  # json's, a UnicodeDecodeError, nesting_refused's
        refuse(f"is not valid JSON ({one_line(exc, 160)})", expected)
    if not isinstance(config, dict):
        refuse(f"holds a JSON {type(config).__name__}", expected)
    for field in _SIZES:
        value = config.get(field)
        if field not in config or (value is None and field in _MAY_BE_NULL):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            refuse(f"{field} is {shown(value)}", "a positive integer" + (" or null" if field in _MAY_BE_NULL else ""))
    hidden_field = next((f for f in ("hidden_size", "n_embd") if config.get(f) is not None), None)
    heads_field = next((f for f in ("num_attention_heads", "n_head") if config.get(f) is not None), None)
    heads, kv_heads = config.get(heads_field), config.get("num_key_value_heads")
    if hidden_field and heads_field and config.get("head_dim") is None and config[hidden_field] % heads:
        refuse(f"{hidden_field} {config[hidden_field]} is not a multiple of {heads_field} {heads}",
               f"a {hidden_field} that its heads divide (or a head_dim)")
    if heads_field and kv_heads is not None and heads % kv_heads:
        refuse(f"{heads_field} {heads} is not a multiple of num_key_value_heads {kv_heads}",
               "key/value heads that divide the attention heads")
    for field in ("dtype", "torch_dtype"):
        value = config.get(field)
        if value is not None and not (isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype)):
            refuse(f"{field} is {shown(value)}", "the name of a torch dtype (float32, bfloat16, float16, ...) or null")


_WEIGHTS_CHECKED: dict[str, tuple] = {}  # checkpoint directory -> the files' (name, mtime, size) it was checked at


def _checkpoint_files(model: str) -> list[str]:
    return [os.path.join(model, "config.json")] + sorted(
        os.path.join(model, f) for f in os.listdir(model) if f.endswith(".safetensors"))


def _weight_problems(model: str, config, missing, unexpected, mismatched) -> None:
    """UsageError naming a couple of each kind of key that does not match; nothing where all match."""
    problems = []
    for keys, what in ((mismatched, "of another shape"), (missing, "missing from the weights"),
                       (unexpected, "in the weights but not in the model")):
        if keys:
            problems.append(f"{len(keys)} tensor{'s' if len(keys) > 1 else ''} {what} "
                            f"({', '.join(map(str, list(keys)[:2]))}"
                            f"{', ...' if len(keys) > 2 else ''})")
    if problems:
        described = (f"a {config.model_type} model, {getattr(config, 'num_hidden_layers', '?')} layers, hidden size "
                     f"{getattr(config, 'hidden_size', '?')}")
        raise UsageError(f"checkpoint {model!r}: its config.json ({described}) does not describe its weights: "
                         f"{'; '.join(problems)}: expected the config.json saved with these weights")


def _check_weights(model: str, config) -> None:
    """Refuse a checkpoint whose config.json does not describe its safetensors, before anything is built.

    transformers loads such a checkpoint anyway: the tensors it cannot place are dropped and the model's own
    are left random, behind a wall of warnings, and a measurement of that model is not one of the
    checkpoint. Here the safetensors headers' tensor names and shapes are compared with the model the
    config builds on the meta device (no memory, no arithmetic): every tensor of the model present (tied
    aliases aside) with its shape, and no tensor of the checkpoint left over. Checked once per version of
    the files (a sweep resolves a model many times)."""
    import re

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    files = _checkpoint_files(model)
    signature = tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files)
    if _WEIGHTS_CHECKED.get(os.path.abspath(model)) == signature:
        return
    stored: dict[str, tuple] = {}
    for f in files[1:]:
        with safe_open(f, framework="pt") as handle:
            for key in handle.keys():
                stored[key] = tuple(handle.get_slice(key).get_shape())
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > len(stored):  # before building thousands of layers, even on meta
        raise UsageError(f"checkpoint {model!r}: its config.json says {layers:,} layers, but its weights hold "
                         f"{len(stored):,} tensors: expected the config.json saved with these weights")
    try:
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 - a config transformers cannot build from
        raise UsageError(f"checkpoint {model!r}: its config.json does not build a model "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): "
                         "expected a valid config") from None
    expected, optional, first = {}, set(getattr(built, "all_tied_weights_keys", None) or {}), {}
    for key, tensor in built.state_dict(keep_vars=True).items():
        expected[key] = tuple(tensor.shape)
        if first.setdefault(id(tensor), key) != key:  # a tied alias (lm_head = embeddings): either name will do
            optional.add(key)
    prefix = f"{built.base_model_prefix}." if built.base_model_prefix else ""
    if prefix and not any(k.startswith(prefix) for k in stored):  # a base model's checkpoint: transformers
        prefixed = {(k if k in expected else prefix + k): shape for k, shape in stored.items()}  # adds the prefix
        if sum(k in expected for k in prefixed) > sum(k in expected for k in stored):
            stored = prefixed
    ignored = [re.compile(p) for p in (getattr(built, "_keys_to_ignore_on_load_unexpected", None) or ())]
    ignored.append(re.compile(r"rotary_emb\.inv_freq$"))  # a buffer older conversions saved; never loaded
    _weight_problems(
        model, config,
        missing=[k for k in expected if k not in stored and k not in optional],
        unexpected=[k for k in stored if k not in expected and not any(p.search(k) for p in ignored)],
        mismatched=[f"{k}: {list(stored[k])} vs {list(shape)}" for k, shape in expected.items()
                    if k in stored and stored[k] != shape])
    _WEIGHTS_CHECKED[os.path.abspath(model)] = signature


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
            f"unknown attention implementation {shown(attn_implementation)}: expected one of "
            f"{', '.join(ATTN_IMPLEMENTATIONS)}"
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
                output_loading_info=True,
                **placement,
            )
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load the checkpoint {model!r}: {exc}") from None
        except RuntimeError as exc:  # shapes that differ: transformers refuses unless told to re-initialise them
            if "mismatched" not in str(exc):
                raise  # out of memory, among others: the caller records it
            raise UsageError(f"checkpoint {model!r}: its config.json does not describe its weights (tensors of "
                             "another shape): expected the config.json saved with these weights") from None
        m, info = m
        # resolve_model compared the headers already; this is what transformers itself saw while loading
        _weight_problems(model, spec, info.get("missing_keys") or [],
                         [], [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []])
        if not placement:
            m = m.to(device)
    return m.eval()


@functools.cache
def _cache_keyword(model_class) -> str:
    import inspect

    named = inspect.signature(model_class.forward).parameters  # through transformers' wrappers (__wrapped__)
    for keyword in ("cache", "past_key_values"):
        if keyword in named:
            return keyword
    raise TypeError(f"{model_class.__name__}.forward names neither `cache` nor `past_key_values`: perfkit cannot "
                    "hand it a KV cache")


def cache_keyword(model) -> str:
    """The keyword under which `model`'s forward takes the KV cache: `cache` from transformers 5.24 on (which
    still takes `past_key_values`, with a FutureWarning on every call, until 5.40), `past_key_values` before.

    Read off the forward's signature, once per model class, not off transformers' version: a forward that
    does not name the keyword it is given swallows it into **kwargs without a word (5.17 takes `cache=`
    so, and 5.40, which drops the old name, will take `past_key_values=` so) and builds a fresh empty cache
    on every call: decode would run, and be timed, attending to nothing but its own token. The backends
    build their keyword arguments from it outside the timed loops."""
    return _cache_keyword(type(model))


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
