"""A checkpoint directory whose config.json does not describe its weights is refused in one line before
anything is built: transformers would load it anyway, leave the model's own tensors random behind a wall
of warnings, and perfkit would measure a model that is not the checkpoint's. Everything is local: the
tiny stand-in's random weights saved with save_pretrained, beside a config of another model."""

import json
import os
import shutil
import time

import pandas as pd
import pytest
import torch
from helpers import call_cli, fake_measuring, write_params
from hostile_files import HOSTILE_CONFIGS

from perfkit.errors import UsageError
from perfkit.models import build_model, resolve_model
from perfkit.registry import REGISTRY, checkpoint_fingerprint
from perfkit.results import load_results
from perfkit.sweep import run_sweep

pytestmark = pytest.mark.slow  # builds and saves models / starts processes: seconds

@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_models):
    """tiny-llama3-8b's weights saved as a checkpoint (model.safetensors + config.json)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama3-8b"
    tiny_models["tiny-llama3-8b"].save_pretrained(path, safe_serialization=True)
    return path


def _with_config(saved, tmp_path, config, name="ckpt"):
    """A copy of the saved weights with `config` as its config.json."""
    d = tmp_path / name
    shutil.copytree(saved, d)
    os.remove(d / "config.json")
    config.save_pretrained(d)
    return str(d)


def _config(name="tiny-llama3-8b", **changes):
    c = REGISTRY[name].config()
    for k, v in changes.items():
        setattr(c, k, v)
    return c


def _gpt2():
    from transformers import GPT2Config

    return GPT2Config(n_layer=2, n_embd=64, n_head=2)


WRONG = [
    # (what the config says, the config, fragments of the refusal)
    ("another size: llama2-13b's vocabulary and heads", lambda: _config("tiny-llama2-13b"),
     ["tensors of another shape", "model.embed_tokens.weight: [128256, 128] vs [32000, 128]"]),
    ("another architecture: mistral with its own vocabulary", lambda: _config("tiny-mistral-7b"),
     ["a mistral model", "of another shape"]),
    ("another family altogether: gpt2", _gpt2,
     ["a gpt2 model", "missing from the weights (transformer.wte.weight", "in the weights but not in the model"]),
    ("fewer layers than the weights hold", lambda: _config(num_hidden_layers=2),
     ["in the weights but not in the model (model.layers.2."]),
    ("more layers than the weights hold", lambda: _config(num_hidden_layers=6),
     ["missing from the weights (model.layers.4."]),
    ("an absurd number of layers", lambda: _config(num_hidden_layers=10**6),
     ["says 1,000,000 layers, but its weights hold 39 tensors"]),
]


@pytest.mark.parametrize("what, config, fragments", WRONG, ids=[w[0] for w in WRONG])
def test_a_config_that_does_not_describe_its_weights_is_refused(tmp_path, saved, what, config, fragments):
    path = _with_config(saved, tmp_path, config())
    t = time.perf_counter()
    with pytest.raises(UsageError) as err:
        resolve_model(path)
    message = str(err.value)
    assert time.perf_counter() - t < 2.0
    assert "\n" not in message and len(message) < 900, message
    assert f"checkpoint {path!r}" in message and "expected the config.json saved with these weights" in message
    for fragment in fragments:
        assert fragment in message, message


def test_the_refusal_comes_before_any_work_everywhere(tmp_path, saved):
    path = _with_config(saved, tmp_path, _config(num_hidden_layers=2))
    out = tmp_path / "out"
    r = call_cli("run", "--model", path, "--input-len", "8", "--output-len", "2", "--out", out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "does not describe its weights" in lines[0], r.stderr
    params = write_params(tmp_path / "p.yaml", models=[path])
    r = call_cli("sweep", params, "--out", out, "--dry-run")
    assert r.returncode == 2 and "models[0]: " in r.stderr and "does not describe its weights" in r.stderr, r.stderr
    with pytest.raises(UsageError, match="does not describe its weights"):
        build_model(path, torch.float32, "cpu")
    assert not out.exists()


def test_a_base_model_checkpoint_lacks_the_head(tmp_path, saved, tiny_models):
    # The weights of the model without its language-model head (LlamaModel): transformers would add a
    # random head. The "model." prefix those weights lack is not itself a problem.
    d = tmp_path / "base"
    tiny_models["tiny-llama3-8b"].model.save_pretrained(d, safe_serialization=True)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(d)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(d)
    with pytest.raises(UsageError, match=r"1 tensor missing from the weights \(lm_head.weight\)") as err:
        resolve_model(str(d))
    assert "in the weights but not in the model" not in str(err.value)


def test_a_matching_checkpoint_still_loads_and_is_checked_once(tmp_path, saved, tiny_models, monkeypatch):
    path = _with_config(saved, tmp_path, _config())
    resolve_model(path)
    import perfkit.models

    calls = []
    monkeypatch.setattr(perfkit.models, "_weight_problems", lambda *a, **k: calls.append(a))
    resolve_model(path)  # the same files: not compared again
    assert calls == []
    loaded = build_model(path, torch.float32, "cpu")  # build_model asks transformers what it loaded
    ids = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, tiny_models["tiny-llama3-8b"](ids).logits)
    assert len(calls) == 1


def test_a_tied_config_beside_an_untied_head_is_accepted(tmp_path, saved):
    # Tying makes lm_head an alias of the embeddings: either may be stored, and shapes agree.
    resolve_model(_with_config(saved, tmp_path, _config(tie_word_embeddings=True)))


# ---- a config.json of the wrong types or shape -----------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(HOSTILE_CONFIGS))
def test_a_wrongly_typed_config_is_refused_in_one_line_naming_the_field(tmp_path, saved, kind, monkeypatch):
    calls = fake_measuring(monkeypatch)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.link(saved / "model.safetensors", ckpt / "model.safetensors")  # the weights, without a copy
    text, fragment = HOSTILE_CONFIGS[kind](json.loads((saved / "config.json").read_text()))
    (ckpt / "config.json").write_text(text)
    out = tmp_path / "out"
    params = write_params(tmp_path / "p.yaml", models=[str(ckpt)])
    for args in (("run", "--model", ckpt, "--input-len", "8", "--output-len", "2", "--out", out),
                 ("sweep", params, "--out", out, "--dry-run"), ("sweep", params, "--out", out)):
        r = call_cli(*args)  # an exception that escapes main (a traceback in a terminal) fails the test here
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (args, r.stderr)
        assert f"{str(ckpt / 'config.json')!r}: " in lines[0] and fragment in lines[0] and "expected" in lines[0], \
            (args, lines[0])
    assert calls == [] and not out.exists()


# ---- a checkpoint is what its directory holds -------------------------------------------------------------

def test_a_registry_models_point_key_is_the_one_stored_before_checkpoints_had_fingerprints():
    from perfkit.rows import point_fields, point_key
    from perfkit.workload import System

    cpu = System("cpu", "hf-loop", "float32", "cpu", "sdpa")
    assert point_key(point_fields(cpu, "tiny-llama2-13b", 16, 4, 2, 1, 2, 0)) == "240c8a702157cdd3f61d"
    assert point_key(point_fields(cpu, "tiny-llama2-13b", 16, 4, 2, 1, 2, 0, 4)) == "656e9286b4a91aa544ad"
    assert checkpoint_fingerprint("tiny-llama2-13b") is None


def test_a_checkpoint_replaced_on_disk_is_another_model_not_a_resume(tmp_path, saved, tiny_models, monkeypatch):
    """The same path holding another model (a folder replaced, a config edited) is refused like a redefined
    system: by a sweep and its dry run, naming the checkpoint, and by `perfkit run` into the directory;
    nothing is measured and the stored points stay as they were."""
    calls = fake_measuring(monkeypatch)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved, ckpt)
    out = tmp_path / "out"
    params = write_params(tmp_path / "p.yaml", models=[str(ckpt)], grid={"input_lens": [8], "output_lens": [2],
                                                                            "batch_sizes": [1, 2]})
    before = checkpoint_fingerprint(str(ckpt))
    assert run_sweep(params, out_dir=str(out), progress=False).measured == 2
    stored = load_results(out)
    assert set(stored["checkpoint"]) == {before}  # recorded with each row
    assert run_sweep(params, out_dir=str(out), progress=False).measured == 0  # unchanged: a resume

    shutil.rmtree(ckpt)
    tiny_models["tiny-llama2-13b"].save_pretrained(ckpt, safe_serialization=True)  # another model, same path
    after = checkpoint_fingerprint(str(ckpt))
    assert after != before
    for args in ((), ("--dry-run",)):
        r = call_cli("sweep", params, "--out", out, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"checkpoint {ckpt} changed on disk (fingerprint {before} there, {after} here)" in lines[0], lines[0]
    r = call_cli("run", "--model", ckpt, "--input-len", "8", "--output-len", "2", "--warmup", "1", "--repeats",
                 "2", "--system", "cpu", "--out", out)
    lines, both = r.stderr.strip().splitlines(), ", ".join(sorted((before, after)))
    assert r.returncode == 2 and len(lines) == 1 and f"definitions (checkpoint of {ckpt} {both})" in lines[0], r.stderr
    assert len(calls) == 2
    pd.testing.assert_frame_equal(load_results(out), stored)
