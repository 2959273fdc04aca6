"""Backend `static`: a pre-allocated KV cache and a fixed-shape decode step, captured once as a CUDA graph.

Why. transformers' eager loop spends most of a batch-1 decode step in Python and kernel launches: an 8B
model issues ~600 small kernels per token, and the GPU waits for the host between them. A CUDA graph
records those launches once and replays them with one call, so the step costs what the kernels cost.
Graphs need every tensor at a fixed address with a fixed shape, hence a static cache sized for the point.

What it does (the same arithmetic as `hf-loop`, greedy, exactly output_len tokens):
- prepare(model, B, I, O), timed and returned as set-up seconds, never inside ttft or decode:
  allocate a transformers `StaticCache` for batch B and I + O positions; on CUDA, warm the decode step up
  on a side stream and capture it in a `torch.cuda.CUDAGraph`. Once per (model, batch, max length): every
  warm-up and timed repeat of the point replays the same graph.
- run(...): reset the cache (each repeat is a fresh request; not timed), mark the clock, prefill the
  prompt in one forward pass (eager: its shape is the prompt's, and it runs once) with logits_to_keep=1,
  then O − 1 decode steps: graph replay on CUDA, the same step function called eagerly elsewhere.

Attention in the decode step: with sdpa, the step runs one of two functions registered with transformers'
AttentionInterface and selected for the step only, both of which read each grouped K/V head once
(transformers' own sdpa would copy the KV cache once per query head whenever a mask is passed, and the
static step always passes one):
- `gqa_decode_sdpa`: SDPA's own grouped-query mode (`enable_gqa=True`) on the (B, H, 1, d) query. Chosen on
  a GPU when PyTorch's selector sends that call to a fused kernel (cuDNN on Hopper in bf16, or the
  memory-efficient kernel where the torch build accepts grouped heads there): FlashAttention declines a
  mask, and the unfused math fallback would expand K/V itself.
- `grouped_decode_sdpa`: a K/V head's query heads stand as rows of one query, (B, kv_heads, n_rep, d),
  which every kernel accepts with a mask. Chosen otherwise, and always on a CPU.
The choice is made once per point in `prepare` and the kernel SDPA picked is recorded in the row
(perfkit.attention). If graph capture fails, it is retried once with the memory-efficient kernel and the
row-grouped layout before decode falls back to eager. The prompt forward is transformers' sdpa unchanged
(mask-free, causal).

The decode step reads its inputs from fixed buffers (the current token and its position) and builds its
own attention mask from the position, so nothing in it depends on Python-side state that a replay would
not update. transformers' sliding-window cache layer keeps such state (it branches on a Python counter
once the window is full), so when I + O exceeds a sliding window the step runs eagerly with the model's
own masks; on CUDA that is said loudly on stderr, as is any capture failure (never a silent fallback).
On a CPU there are no graphs: `static` runs the same static-cache loop eagerly.
PERFKIT_STATIC_GRAPHS=0 disables capture on CUDA too (to see what the graph buys).
"""

from __future__ import annotations

import os
import sys
import time

import torch

from perfkit.attention import decode_phase, forget_kernels
from perfkit.errors import printable
from perfkit.models import cache_keyword
from perfkit.timing import synchronize

GROUPED_DECODE_SDPA = "perfkit-grouped-decode-sdpa"


def grouped_decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA for one new token per sequence that reads each key/value head once, mask or no mask.

    transformers' sdpa attention expands grouped K/V heads to one copy per query head (`repeat_kv`)
    whenever a mask is given, since SDPA's own grouped-query path needs mask-free attention. The static
    decode step always has a mask (the cache holds empty slots), so that would copy the whole KV cache
    n_rep times per layer and step — extra memory traffic that grows with B·(I + O) and is not the model's
    work. With one query position, a K/V head's n_rep query heads can instead stand as n_rep query rows
    of that head: query (B, H, 1, d) -> (B, kv_heads, n_rep, d) against K/V (B, kv_heads, L, d), the
    (B, 1, 1, L) mask broadcasting over both. Same arithmetic; anything else goes to transformers' sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads == kv_heads or dropout or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
    with decode_phase():  # n_rep query rows per head: still one decode position, whatever the shape says
        out = torch.nn.functional.scaled_dot_product_attention(
            query.reshape(batch, kv_heads, heads // kv_heads, head_dim), key, value, attn_mask=mask,
            scale=scaling)
    # (B, kv_heads, n_rep, d) -> (B, H, 1, d) -> (B, 1, H, d), the layout attention functions return
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def gqa_decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA for one new token per sequence in SDPA's grouped-query mode: K/V heads unexpanded, mask kept."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or query.shape[1] == key.shape[1] or dropout or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


GQA_DECODE_SDPA = "perfkit-gqa-decode-sdpa"
_DECODE_FUNCTIONS = {GROUPED_DECODE_SDPA: grouped_decode_sdpa, GQA_DECODE_SDPA: gqa_decode_sdpa}


def _register_decode_attention() -> None:
    from transformers import AttentionInterface

    for name, function in _DECODE_FUNCTIONS.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, function)


def choose_decode_attention(config, batch: int, max_len: int, dtype, device, cached_keys=None) -> str:
    """Which decode attention function the step uses at this point (see the module docstring).

    `cached_keys`: one layer's key cache, (B, kv_heads, max_len, d), to ask the selector about without
    allocating a copy of it; a stand-in of that shape is made when it is not given (tests)."""
    from perfkit.attention import sdpa_kernel_choice

    device = torch.device(device)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if device.type != "cuda" or heads == kv_heads:
        return GROUPED_DECODE_SDPA
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    # The step's exact shapes, mask included; the selector only reads their metadata.
    query = torch.empty((batch, heads, 1, head_dim), dtype=dtype, device=device)
    kv = cached_keys if cached_keys is not None else torch.empty((batch, kv_heads, max_len, head_dim), dtype=dtype,
                                                                 device=device)
    mask = torch.ones((batch, 1, 1, max_len), dtype=torch.bool, device=device)
    fused = sdpa_kernel_choice(query, kv, kv, mask, enable_gqa=True) in ("cudnn", "flash", "efficient")
    return GQA_DECODE_SDPA if fused else GROUPED_DECODE_SDPA


class _Buffers:
    """Everything the decode step touches, at fixed addresses for the life of the point."""

    def __init__(self, model, cache, batch: int, max_len: int):
        device = model.device
        self.cache = cache
        self.cache_kwargs = {cache_keyword(model): cache, "use_cache": True}  # every forward's, built once
        self.token = torch.zeros((batch, 1), dtype=torch.long, device=device)  # token fed to the step
        self.position = torch.zeros((1, 1), dtype=torch.long, device=device)  # its position in the sequence
        self.kv_index = torch.arange(max_len, device=device).view(1, 1, 1, max_len)
        self.batch = batch
        self.max_len = max_len
        # sdpa takes a boolean mask (True = attend); the eager attention adds the mask to the scores.
        self.attn_implementation = model.config._attn_implementation
        self.bool_mask = self.attn_implementation == "sdpa"
        self.dtype = model.dtype
        layer_keys = getattr(cache.layers[0], "keys", None) if cache.layers else None
        self.decode_attention = (choose_decode_attention(model.config, batch, max_len, model.dtype, device,
                                                         layer_keys) if self.bool_mask else self.attn_implementation)


def _recover_from_capture(device, pool, stream) -> bool:
    """After a capture that raised: put back the stream the capture replaced, end the allocator's capture
    into `pool` (torch may not have, when the capture's end failed) and release the pool's memory. Returns
    whether the allocator works again (empty_cache asserts while it still believes a capture is running)."""
    torch.cuda.set_stream(stream)
    index = device.index if device.index is not None else torch.cuda.current_device()
    for name in ("_cuda_endAllocateToPool", "_cuda_releasePool"):
        function = getattr(torch._C, name, None)
        if function is not None:
            try:
                function(index, pool)
            except Exception:  # noqa: BLE001 - already ended, or already released: nothing to undo
                pass
    try:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        return True
    except Exception:  # noqa: BLE001 - the allocator is left in capture mode: say so, do not retry
        return False


class StaticBackend:
    name = "static"

    def __init__(self):
        self.buffers: _Buffers | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_ready = False  # the fixed-shape step is valid for this point (no full sliding window)
        self.mode = "unprepared"  # "cuda-graph" | "eager": how decode steps run
        self.note: str | None = None  # why there is no graph, when there should be one

    # ---- set-up --------------------------------------------------------------------------------

    def prepare(self, model, batch: int, input_len: int, output_len: int) -> float:
        from transformers import StaticCache

        with torch.inference_mode():
            t0 = time.perf_counter()
            self.graph = None
            max_len = input_len + output_len
            _register_decode_attention()
            cache = StaticCache(config=model.config, max_cache_len=max_len)
            c = model.config
            head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            # Allocate now (not lazily in the first forward), so the allocation is set-up time and the
            # cache tensors have their final addresses before a graph captures them.
            cache.early_initialization(batch, c.num_key_value_heads, head_dim, model.dtype, model.device)
            self.buffers = _Buffers(model, cache, batch, max_len)
            # A sliding-window layer smaller than the sequence rolls its cache on Python-side state.
            self.graph_ready = not any(getattr(layer, "is_sliding", False) and layer.max_cache_len < max_len
                                       for layer in cache.layers)
            self.mode = "eager"
            if model.device.type == "cuda":
                if not self.graph_ready:
                    self._warn(f"I + O = {max_len} exceeds the model's sliding window: decode runs eagerly "
                               "with a static cache, without a CUDA graph")
                elif os.environ.get("PERFKIT_STATIC_GRAPHS", "1") == "0":
                    self._warn("PERFKIT_STATIC_GRAPHS=0: decode runs eagerly with a static cache, no CUDA graph")
                else:
                    self._capture(model)
                torch.cuda.synchronize(model.device)
            return time.perf_counter() - t0

    def _capture(self, model) -> None:
        """Capture the decode step; if that fails, once more with the memory-efficient kernel and the
        row-grouped layout (which every kernel accepts), before decode falls back to eager."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        first_failure, healthy = self._try_capture(model)
        if first_failure is None:
            return
        b = self.buffers
        if b.bool_mask:
            # The row-grouped layout from here on, for the retry and for eager decode: the first failure may
            # have been the chosen layout's kernel itself (say cuDNN refusing it), even outside a capture.
            b.decode_attention = GROUPED_DECODE_SDPA
        second_failure = "not tried: the failed capture left the CUDA allocator unusable"
        if healthy:
            with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                second_failure, _ = self._try_capture(model)
        if second_failure is None:
            self._warn(f"CUDA graph capture failed with the default attention kernel ({first_failure}); "
                       "captured with the memory-efficient kernel instead (recorded in sdpa_decode_backend)")
            return
        self.graph = None
        self.mode = "eager"
        self._warn(f"CUDA graph capture failed ({first_failure}; with the memory-efficient kernel: "
                   f"{second_failure}); decode runs eagerly with a static cache: these figures are NOT "
                   "graph-replay figures")

    def _try_capture(self, model) -> tuple[str | None, bool]:
        """Warm up and capture the step. Returns (None, True) on success, else (what went wrong, whether the
        process can go on using CUDA memory). Out of memory is raised, after the same clean-up."""
        b = self.buffers
        device = model.device
        stream_before = torch.cuda.current_stream(device)
        pool = torch.cuda.graph_pool_handle()  # our own pool, so a failed capture's memory can be released
        capturing = False
        forget_kernels("decode")  # the decode kernel recorded is the one of the attempt that succeeds
        try:
            side = torch.cuda.Stream(device=device)
            side.wait_stream(stream_before)
            # Warm-up on a side stream (as torch.cuda.graphs documents): lets cuBLAS/sdpa pick and
            # initialise their kernels and workspaces before capture. Each warm-up step starts from an
            # empty cache so it writes position 0 and never runs past max_len.
            with torch.cuda.stream(side):
                for _ in range(2):
                    b.cache.reset()
                    b.position.zero_()
                    self._step(model)
            stream_before.wait_stream(side)
            b.cache.reset()
            b.position.zero_()
            graph = torch.cuda.CUDAGraph()
            capturing = True
            with torch.cuda.graph(graph, pool=pool):
                self._step(model)
            b.cache.reset()
            self.graph = graph
            self.mode = "cuda-graph"
            return None, True
        except BaseException as exc:
            self.graph = None
            healthy = _recover_from_capture(device, pool, stream_before) if capturing else True
            if isinstance(exc, (torch.OutOfMemoryError, KeyboardInterrupt)):
                raise  # out of memory is a recorded outcome of the point, not a reason to change backends
            # A capture invalidated midway fails at its end with a generic message; the cause is the context.
            cause = exc.__context__ if exc.__context__ is not None and capturing else None
            text = f"{type(exc).__name__}: {exc}" + (f" (caused by {type(cause).__name__}: {cause})" if cause else "")
            return " ".join(text.split())[:400], healthy

    def _warn(self, message: str) -> None:
        self.note = message
        print(printable(f"perfkit: warning: static backend: {message}"), file=sys.stderr, flush=True)

    # ---- the phases ----------------------------------------------------------------------------

    def _step(self, model) -> None:
        """One decode step with fixed shapes: feed b.token at b.position, leave the next token in b.token."""
        b = self.buffers
        # Attend to every cached position up to and including the token's own (written by this step).
        allowed = (b.kv_index <= b.position).expand(b.batch, 1, 1, b.max_len)
        config = model.config
        if b.bool_mask:
            mask = allowed
            # For this step only (the model may be shared with other backends): each K/V head read once.
            config._attn_implementation = b.decode_attention
        else:
            mask = torch.zeros((), dtype=b.dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(b.dtype).min)
        try:
            logits = model(input_ids=b.token, position_ids=b.position, attention_mask=mask, **b.cache_kwargs).logits
        finally:
            config._attn_implementation = b.attn_implementation
        b.token.copy_(logits[:, -1].argmax(dim=-1, keepdim=True))
        b.position.add_(1)

    def _prefill(self, model, input_ids) -> torch.Tensor:
        # logits_to_keep=1: only the last position is projected onto the vocabulary (as hf-loop does).
        logits = model(input_ids=input_ids, logits_to_keep=1, **self.buffers.cache_kwargs).logits
        return logits[:, -1].argmax(dim=-1)

    def run(self, model, input_ids_host: torch.Tensor, output_len: int, clock) -> torch.Tensor:
        b = self.buffers
        batch, input_len = input_ids_host.shape
        if b is None or batch != b.batch or input_len + output_len > b.max_len:
            raise RuntimeError(f"static backend prepared for batch {b and b.batch} and {b and b.max_len} "
                               f"positions, asked for batch {batch} and {input_len + output_len}: call prepare()")
        with torch.inference_mode():
            # Each repeat is a fresh request: empty the cache before the clock starts (not timed), and
            # wait for it, so that the GPU starts the prompt idle, as every other backend's does: with
            # the zeroing still queued, the host would be ahead by its length when the clock starts.
            b.cache.reset()
            synchronize(model.device)
            tokens = torch.empty((batch, output_len), dtype=torch.long, device=model.device)
            clock.mark()
            input_ids = input_ids_host.to(model.device)
            token = self._prefill(model, input_ids)
            tokens[:, 0] = token
            clock.mark()
            if output_len > 1:
                self._decode(model, token, input_len, output_len, tokens, clock)
        return tokens

    def _decode(self, model, token, input_len, output_len, tokens, clock) -> None:
        b = self.buffers
        if not self.graph_ready:
            # The model's own masks and positions, over the static cache (sliding window exceeded).
            for i in range(1, output_len):
                logits = model(input_ids=token[:, None], **b.cache_kwargs).logits
                token = logits[:, -1].argmax(dim=-1)
                tokens[:, i] = token
                clock.mark()
            return
        b.token.copy_(token[:, None])
        b.position.fill_(input_len)
        for i in range(1, output_len):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step(model)
            tokens[:, i] = b.token[:, 0]
            clock.mark()
