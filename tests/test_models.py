import resource

import pytest
import torch

from perfkit.errors import UsageError
from perfkit.models import REGISTRY, build_model, context_length, count_params, resolve_model


@pytest.mark.parametrize("name,billions", [("llama3-8b", 8.03), ("llama2-13b", 13.0), ("mistral-7b", 7.24)])
def test_full_size_parameter_counts(name, billions):
    # DESIGN.md: 8.03 B, 13.02 B, 7.24 B; three significant digits.
    assert float(f"{count_params(name) / 1e9:.3g}") == billions


def test_published_architectures():
    l3, l2, mi = REGISTRY["llama3-8b"], REGISTRY["llama2-13b"], REGISTRY["mistral-7b"]
    assert (l3.layers, l3.hidden, l3.heads, l3.kv_heads, l3.intermediate, l3.vocab) == (32, 4096, 32, 8, 14336, 128256)
    assert l3.config().rope_parameters["rope_theta"] == 500000.0
    assert (l2.layers, l2.hidden, l2.heads, l2.kv_heads, l2.intermediate, l2.vocab, l2.context) == (
        40, 5120, 40, 40, 13824, 32000, 4096)
    assert (mi.layers, mi.hidden, mi.heads, mi.kv_heads, mi.intermediate, mi.vocab) == (32, 4096, 32, 8, 14336, 32000)
    assert mi.config().sliding_window == 4096


@pytest.mark.parametrize("full", ["llama3-8b", "llama2-13b", "mistral-7b"])
def test_tiny_variants_keep_family_attention_layout_and_vocab(full):
    f, t = REGISTRY[full], REGISTRY[f"tiny-{full}"]
    assert t.family == f.family and t.vocab == f.vocab and t.context == f.context
    assert t.heads // t.kv_heads == f.heads // f.kv_heads  # GQA ratio (1 = full multi-head attention)
    assert type(t.config()) is type(f.config())
    assert t.sliding_window == f.sliding_window
    assert count_params(t.name) < 50e6


def test_full_size_build_never_materializes_on_the_host():
    # Built under the target device's context, every parameter is created there. On the meta device the
    # full llama3-8b (16 GB in bf16) must then cost the host next to nothing: were any weight allocated on
    # the CPU first, the peak resident set would jump by gigabytes.
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model("llama3-8b", torch.bfloat16, "meta")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert grown_mib < 1024
    assert model.dtype == torch.bfloat16


def test_checkpoint_directory_round_trip(tmp_path, tiny_models):
    model = tiny_models["tiny-llama2-13b"]
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = build_model(str(tmp_path), torch.float32, "cpu")
    ids = torch.randint(0, 32000, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert context_length(str(tmp_path)) == 4096


def test_bad_models_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown model 'llama4'.*llama3-8b"):
        resolve_model("llama4")
    with pytest.raises(UsageError, match="not a checkpoint"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")  # safetensors only: a pickle checkpoint is refused
    with pytest.raises(UsageError, match="safetensors"):
        resolve_model(str(tmp_path))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))


def test_a_broken_or_non_causal_checkpoint_is_refused(tmp_path, tiny_models):
    tiny_models["tiny-mistral-7b"].save_pretrained(tmp_path, safe_serialization=True)
    weights = next(tmp_path.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(UsageError, match="not valid safetensors"):
        resolve_model(str(tmp_path))
    from safetensors.torch import save_file
    from transformers import ViTConfig

    vit = tmp_path / "vit"
    vit.mkdir()
    ViTConfig().save_pretrained(vit)
    save_file({"w": torch.zeros(2)}, str(vit / "model.safetensors"))
    with pytest.raises(UsageError, match="'vit' model: expected a causal language model"):
        resolve_model(str(vit))
