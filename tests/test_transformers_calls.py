"""The calls perfkit makes into transformers, on the pinned 5.17 and on the newest 5.x (`make test-newest`):
each backend hands the KV cache under the keyword the model's forward names, and a prefill plus one decode
step warns of nothing (transformers 5.24 renamed `past_key_values` to `cache` and warns on the old name)."""

import dataclasses
import logging
import warnings

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import DynamicCache

from perfkit.backends import get_backend
from perfkit.measure import synthetic_prompt
from perfkit.models import REGISTRY, cache_keyword
from perfkit.timing import CpuClock


def test_the_cache_keyword_is_the_one_this_transformers_names(tiny_models):
    expected = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    for model in tiny_models.values():
        assert cache_keyword(model) == expected
        # and the cache handed under it is the one the forward fills (the other name would vanish into **kwargs)
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 5), dtype=torch.long), use_cache=True, **{expected: cache})
        assert cache.get_seq_length() == 5


def test_a_forward_naming_no_cache_keyword_is_refused():
    class Bare(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return input_ids

    with pytest.raises(TypeError, match="Bare.forward names neither `cache` nor `past_key_values`"):
        cache_keyword(Bare())


class _Logged(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def _sliding_mistral():
    """tiny-mistral-7b with a 16-token window: I + O = 18 exceeds it, so `static` decodes on its eager path."""
    spec = dataclasses.replace(REGISTRY["tiny-mistral-7b"], sliding_window=16)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(spec.config(), dtype=torch.float32).eval()


@pytest.mark.parametrize("backend_name, model_name", [
    ("hf-loop", "tiny-llama3-8b"), ("hf-generate", "tiny-llama3-8b"), ("static", "tiny-llama3-8b"),
    ("static", "tiny-llama2-13b"), ("static", "sliding-mistral"),
])
def test_a_prefill_and_one_decode_step_warn_of_nothing(tiny_models, backend_name, model_name):
    model = _sliding_mistral() if model_name == "sliding-mistral" else tiny_models[model_name]
    prompt = synthetic_prompt(2, 16, model.config.vocab_size, seed=1)
    backend = get_backend(backend_name)
    backend.prepare(model, 2, 16, 2)
    logged = _Logged()  # transformers' own logger (warning_once), which does not propagate to the root
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
            warnings.simplefilter("always")  # every warning, however often it was shown before
            tokens = backend.run(model, prompt, 2, CpuClock(3))
    finally:
        transformers_logger.removeHandler(logged)
    assert tokens.shape == (2, 2)
    assert model_name != "sliding-mistral" or not backend.graph_ready
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert logged.records == []
