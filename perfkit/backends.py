"""Inference backends: each runs one request batch (prefill, then greedy decode) while marking a clock.


Contract: `run(model, input_ids_host, output_len, clock)` marks the clock exactly output_len + 1 times —
once before the prompt leaves the host, then once as each generated token becomes available on the
device — and returns the generated tokens, shape (batch, output_len). Time between the first two marks
is ttft; each later gap is one decode step. Decoding is greedy and never stops early.

A backend that needs per-shape set-up (allocating a static cache, capturing a graph) does it in
`prepare(...)`, which returns its set-up seconds so they are reported, never hidden in ttft.
"""

from __future__ import annotations

import torch

from perfkit.models import cache_keyword


class HFLoop:
    """An explicit prefill + decode loop over transformers' DynamicCache: the reference eager path."""

    name = "hf-loop"

    def prepare(self, model, batch: int, input_len: int, output_len: int) -> float:
        return 0.0

    def run(self, model, input_ids_host: torch.Tensor, output_len: int, clock) -> torch.Tensor:
        from transformers import DynamicCache

        keyword = cache_keyword(model)  # `cache` or `past_key_values`, looked up once per model class
        clock.mark()
        input_ids = input_ids_host.to(model.device)
        cache = DynamicCache(config=model.config)
        step = {keyword: cache, "use_cache": True}
        # logits_to_keep=1: the prompt forward projects only the last position onto the vocabulary,
        # as any serving stack does; the other positions' logits are never used.
        logits = model(input_ids=input_ids, logits_to_keep=1, **step).logits
        token = logits[:, -1].argmax(dim=-1)
        clock.mark()
        # Each step's token tensor is kept as it is (a list append, no device op) and stacked after the
        # last mark, so the timed loop holds nothing but the model's own work and the clock.
        generated = [token]
        for _ in range(1, output_len):
            logits = model(input_ids=token[:, None], **step).logits
            token = logits[:, -1].argmax(dim=-1)
            generated.append(token)
            clock.mark()
        return torch.stack(generated, dim=1)


class _MarkEachToken:
    """A stopping criterion that never stops and marks the clock as each token is appended.

    transformers calls stopping criteria right after the new token joins `input_ids`, which is exactly
    the moment the token is available. It returns a preallocated all-False tensor, so it adds no device
    work and no host synchronisation (generate's own deferred stop check keeps working).
    """

    def __init__(self, clock, batch: int, device):
        self.clock = clock
        self.never = torch.zeros(batch, dtype=torch.bool, device=device)

    def __call__(self, input_ids, scores, **kwargs):
        self.clock.mark()
        return self.never


class HFGenerate:
    """transformers' own `generate`, greedy, timed from the outside without changing what it does."""

    name = "hf-generate"

    def prepare(self, model, batch: int, input_len: int, output_len: int) -> float:
        return 0.0

    def run(self, model, input_ids_host: torch.Tensor, output_len: int, clock) -> torch.Tensor:
        from transformers import GenerationConfig, StoppingCriteriaList

        batch, input_len = input_ids_host.shape
        # eos_token_id=[]: no token ends a sequence, so every sequence produces exactly output_len tokens
        # and no logits processor suppresses EOS (min_new_tokens would, changing the greedy tokens).
        # None would not do: generate fills None from the model's own generation_config.
        config = GenerationConfig(
            max_new_tokens=output_len,
            min_new_tokens=None,
            do_sample=False,
            eos_token_id=[],
            pad_token_id=0,
            use_cache=True,
        )
        criteria = StoppingCriteriaList([_MarkEachToken(clock, batch, model.device)])
        clock.mark()
        input_ids = input_ids_host.to(model.device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            stopping_criteria=criteria,
        )
        return out[:, input_len:]


BACKENDS = {b.name: b for b in (HFLoop, HFGenerate)}

from perfkit.static_backend import StaticBackend  # noqa: E402  (static cache + CUDA graph decode)

BACKENDS[StaticBackend.name] = StaticBackend


def get_backend(name: str):
    from perfkit.errors import UsageError, shown

    if name not in BACKENDS:
        raise UsageError(f"unknown backend {shown(name)}: expected one of {', '.join(BACKENDS)}")
    return BACKENDS[name]()
