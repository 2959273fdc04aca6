"""The `static` backend computes what `hf-loop` and transformers' `generate` compute, with its own timing contract."""

import dataclasses
import json

import pytest
import torch
from helpers import run_cli

from perfkit.backends import BACKENDS, get_backend
from perfkit.measure import measure_point, synthetic_prompt
from perfkit.rows import to_row
from perfkit.timing import CpuClock
from perfkit.workload import Point, System

B, I, O = 2, 24, 10


def _generate(backend_name, model, prompt, output_len, prepare=True):
    backend = get_backend(backend_name)
    if prepare:
        backend.prepare(model, prompt.shape[0], prompt.shape[1], output_len)
    clock = CpuClock(output_len + 1)
    with torch.inference_mode():
        tokens = backend.run(model, prompt, output_len, clock)
    assert len(clock.seconds()) == output_len + 1, f"{backend_name} broke the clock contract"
    return backend, tokens


def test_static_is_registered():
    assert "static" in BACKENDS
    assert get_backend("static").name == "static"


@pytest.mark.parametrize("name", ["tiny-llama3-8b", "tiny-llama2-13b", "tiny-mistral-7b"])
def test_static_tokens_equal_hf_loop_and_generate(tiny_models, name):
    model = tiny_models[name]
    prompt = synthetic_prompt(B, I, model.config.vocab_size, seed=3)
    _, loop = _generate("hf-loop", model, prompt, O)
    _, gen = _generate("hf-generate", model, prompt, O)
    backend, static = _generate("static", model, prompt, O)
    assert static.shape == (B, O)
    assert torch.equal(loop, gen), "reference backends disagree: the test prompt is degenerate"
    assert torch.equal(static, loop)
    assert backend.graph_ready and backend.mode == "eager"  # the CPU runs the fixed-shape step without graphs
    # A second request on the same prepared backend starts from an empty cache: same tokens.
    with torch.inference_mode():
        again = backend.run(model, prompt, O, CpuClock(O + 1))
    assert torch.equal(again, static)


def test_static_eager_attention_matches(tiny_models):
    from perfkit.models import build_model

    model = build_model("tiny-llama2-13b", torch.float32, "cpu", attn_implementation="eager")
    prompt = synthetic_prompt(B, I, model.config.vocab_size, seed=4)
    _, loop = _generate("hf-loop", model, prompt, O)
    _, static = _generate("static", model, prompt, O)
    assert torch.equal(static, loop)


@pytest.mark.parametrize("window,graph_ready", [(16, False), (I + O, True)])
def test_static_mistral_sliding_window(window, graph_ready):
    """A window shorter than I + O (the cache rolls) and one that just holds the sequence."""
    from transformers import AutoModelForCausalLM

    from perfkit.models import REGISTRY

    spec = dataclasses.replace(REGISTRY["tiny-mistral-7b"], sliding_window=window)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(spec.config(), dtype=torch.float32).eval()
    prompt = synthetic_prompt(B, I, model.config.vocab_size, seed=5)
    _, loop = _generate("hf-loop", model, prompt, O)
    _, gen = _generate("hf-generate", model, prompt, O)
    backend, static = _generate("static", model, prompt, O)
    assert backend.graph_ready is graph_ready
    assert torch.equal(loop, gen)
    assert torch.equal(static, loop)
    if window == 16:
        # The window must matter for this test to mean anything: without it the tokens differ.
        wide = dataclasses.replace(spec, sliding_window=4096)
        torch.manual_seed(0)
        unwindowed = AutoModelForCausalLM.from_config(wide.config(), dtype=torch.float32).eval()
        _, other = _generate("hf-loop", unwindowed, prompt, O)
        assert not torch.equal(other, loop)


def _pin_sliding_counters(backend):
    """A replay sees Python-side cache state as it was at capture (on an empty cache): counter 0."""
    for layer in backend.buffers.cache.layers:
        if hasattr(layer, "cumulative_length_int"):
            layer.cumulative_length_int = 0


def _addresses(backend) -> dict:
    """Where every tensor the captured step reads or writes lives: a CUDA graph keeps these addresses."""
    b = backend.buffers
    where = {name: getattr(b, name).data_ptr() for name in ("token", "position", "kv_index")}
    for i, layer in enumerate(b.cache.layers):
        for name in ("keys", "values", "cumulative_length"):
            where[f"cache layer {i} {name}"] = getattr(layer, name).data_ptr()
    return where


def _generate_traced_step(model, prompt, output_len, step):
    """Run `static` as on CUDA, with torch.compile's tracer standing in for the graph capture.

    The CPU cannot capture a CUDA graph, but dynamo's tracer asks of a function much of what a capture
    asks: fullgraph=True makes any host round trip (.item(), a branch on a tensor's value) an error
    instead of a graph break, and error_on_recompile makes it an error for the step to read a Python
    value that differs from when it was traced, which a replayed graph would not see differ. What dynamo
    forgives and a graph does not, checked by hand: a step must not rebind a tensor the graph captured
    (every address stays as it was at capture). The trace happens where StaticBackend._capture captures:
    on an emptied cache at position 0, then the cache is emptied again and the point runs.
    """
    backend = get_backend("static")
    backend.prepare(model, prompt.shape[0], prompt.shape[1], output_len)
    b = backend.buffers
    captured_at = _addresses(backend)
    traced = torch.compile(step, backend="eager", fullgraph=True)

    def replay(model):
        _pin_sliding_counters(backend)
        traced(backend, model)
        moved = [k for k, v in _addresses(backend).items() if v != captured_at[k]]
        assert not moved, f"the decode step moved {', '.join(moved)}: a captured graph would use the old memory"

    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
            b.cache.reset()
            b.position.zero_()
            replay(model)  # the "capture"
            b.cache.reset()
            backend._step = replay  # every decode step of the point is now a "replay"
            tokens = backend.run(model, prompt, output_len, CpuClock(output_len + 1))
    finally:
        torch._dynamo.reset()
    return backend, tokens


@pytest.mark.slow  # torch.compile traces: seconds
@pytest.mark.parametrize("name", ["tiny-llama3-8b", "tiny-llama2-13b", "tiny-mistral-7b"])
def test_decode_step_is_capturable_and_replays_correctly(tiny_models, name):
    """What a CUDA graph needs of the decode step, checked on the CPU: traced whole at capture, never
    retraced, nothing it captured moved, and its replays generate hf-loop's tokens (the CUDA path itself
    is test_static_cuda_graph_matches_hf_loop_first_tokens)."""
    from perfkit.static_backend import StaticBackend

    model = tiny_models[name]
    prompt = synthetic_prompt(B, I, model.config.vocab_size, seed=7)
    _, loop = _generate("hf-loop", model, prompt, O)
    backend, static = _generate_traced_step(model, prompt, O, StaticBackend._step)
    assert backend.graph_ready
    assert torch.equal(static, loop)


def _reads_a_python_position(self, model):
    from perfkit.static_backend import StaticBackend

    self.python_position = getattr(self, "python_position", -1) + 1
    self.buffers.position.fill_(self.python_position)
    StaticBackend._step(self, model)


def _rebinds_the_token(self, model):
    b = self.buffers
    logits = model(input_ids=b.token, position_ids=b.position, **b.cache_kwargs).logits
    b.token = logits[:, -1].argmax(dim=-1, keepdim=True)  # a new tensor, not a copy into the captured one
    b.position.add_(1)


@pytest.mark.slow  # torch.compile traces: seconds
@pytest.mark.parametrize("wrong_step,caught_by,message", [
    (_reads_a_python_position, torch._dynamo.exc.RecompileError, "python_position"),
    (_rebinds_the_token, AssertionError, "the decode step moved token"),
])
def test_capture_check_catches_steps_a_graph_could_not_replay(tiny_models, wrong_step, caught_by, message):
    """The check above can fail: a step that reads a Python counter, or one that replaces a tensor the
    graph captured instead of writing into it, is caught."""
    model = tiny_models["tiny-llama3-8b"]
    prompt = synthetic_prompt(B, I, model.config.vocab_size, seed=7)
    with pytest.raises(caught_by, match=message):
        _generate_traced_step(model, prompt, O, wrong_step)


def test_static_output_len_one(tiny_models):
    model = tiny_models["tiny-llama3-8b"]
    prompt = synthetic_prompt(1, 8, model.config.vocab_size, seed=6)
    _, loop = _generate("hf-loop", model, prompt, 1)
    _, static = _generate("static", model, prompt, 1)
    assert torch.equal(static, loop)


def test_static_refuses_unprepared_or_mismatched(tiny_models):
    model = tiny_models["tiny-llama3-8b"]
    prompt = synthetic_prompt(B, I, model.config.vocab_size)
    with pytest.raises(RuntimeError, match="prepare"):
        _generate("static", model, prompt, O, prepare=False)
    backend = get_backend("static")
    backend.prepare(model, B, I, O)
    with pytest.raises(RuntimeError, match="prepare"):
        with torch.inference_mode():
            backend.run(model, prompt, O + 5, CpuClock(O + 6))  # more positions than the cache holds


def test_measure_point_static_reports_setup(tiny_models):
    model = tiny_models["tiny-mistral-7b"]
    system = System("fast", "static", "float32", "cpu")
    m = measure_point(model, system, Point("tiny-mistral-7b", 16, 6, 2), warmup=1, repeats=2)
    row = to_row(m)
    assert row["backend"] == "static" and row["status"] == "ok"
    assert row["setup_ms"] > 0  # the cache allocation is set-up time, reported on its own
    assert len(row["decode_step_ms_samples"]) == 2 and all(len(s) == 5 for s in row["decode_step_ms_samples"])
    assert row["generated_tokens"] == 12
    reference = measure_point(model, System("ref", "hf-loop", "float32", "cpu"), Point("tiny-mistral-7b", 16, 6, 2),
                              warmup=0, repeats=1)
    assert torch.equal(m.tokens, reference.tokens)


@pytest.mark.slow
def test_cli_run_static(tmp_path):
    r = run_cli("run", "--model", "tiny-llama2-13b", "--input-len", "16", "--output-len", "4", "--batch", "2",
                "--backend", "static", "--device", "cpu", "--repeats", "2", "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["backend"] == "static" and row["generated_tokens"] == 8
    assert row["energy_j"] is None  # no energy counter on a CPU


@pytest.mark.gpu
def test_static_cuda_graph_matches_hf_loop_first_tokens():
    from perfkit.models import build_model

    model = build_model("tiny-llama3-8b", torch.float32, "cuda")
    prompt = synthetic_prompt(B, I, model.config.vocab_size, seed=3)
    loop_b = get_backend("hf-loop")
    static_b = get_backend("static")
    static_b.prepare(model, B, I, O)
    assert static_b.mode == "cuda-graph", static_b.note
    from perfkit.timing import CudaClock

    with torch.inference_mode():
        loop = loop_b.run(model, prompt, O, CudaClock(O + 1)).cpu()
        static = static_b.run(model, prompt, O, CudaClock(O + 1)).cpu()
        again = static_b.run(model, prompt, O, CudaClock(O + 1)).cpu()
    assert torch.equal(static, loop)
    assert torch.equal(again, static)


@pytest.mark.parametrize("function", ["grouped_decode_sdpa", "gqa_decode_sdpa"])
def test_decode_attention_equals_transformers_sdpa(function):
    """One query position: reading each K/V head once gives transformers' sdpa result (which repeats K/V),
    in both layouts the static step may choose (row-grouped query, or SDPA's enable_gqa)."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from perfkit import static_backend

    grouped_decode_sdpa = getattr(static_backend, function)

    torch.manual_seed(0)
    batch, heads, kv_heads, length, d = 3, 8, 2, 11, 16
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    q = torch.randn(batch, heads, 1, d)
    k, v = torch.randn(batch, kv_heads, length, d), torch.randn(batch, kv_heads, length, d)
    mask = (torch.arange(length) <= 6).view(1, 1, 1, length).expand(batch, 1, 1, length)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=d ** -0.5)
    got, _ = grouped_decode_sdpa(module, q, k, v, mask, scaling=d ** -0.5)
    assert got.shape == want.shape == (batch, 1, heads, d)
    torch.testing.assert_close(got, want)
    # a query head must meet its own K/V head: swapping K/V heads changes the answer
    swapped, _ = grouped_decode_sdpa(module, q, k.flip(1), v.flip(1), mask, scaling=d ** -0.5)
    assert not torch.allclose(swapped, want)


@pytest.mark.parametrize("name,groups", [("tiny-llama3-8b", 4), ("tiny-mistral-7b", 4), ("tiny-llama2-13b", 1)])
def test_static_decode_copies_no_kv_heads_and_leaves_the_model_as_it_was(tiny_models, monkeypatch, name, groups):
    import transformers.integrations.sdpa_attention as sdpa

    model = tiny_models[name]
    assert model.config.num_attention_heads // model.config.num_key_value_heads == groups
    copies = []
    real_repeat_kv = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda h, n: copies.append(n) or real_repeat_kv(h, n))
    prompt = synthetic_prompt(B, I, model.config.vocab_size, seed=2)
    _generate("static", model, prompt, O)
    assert copies == []  # neither prefill (mask-free, causal) nor any decode step expanded K/V
    assert model.config._attn_implementation == "sdpa"  # hf-loop, sharing the model, still gets sdpa


def test_decode_attention_choice_needs_a_fused_kernel(tiny_models):
    """On a CPU (and for models without grouped K/V) the step keeps the row-grouped layout, which every
    SDPA kernel accepts with a mask; enable_gqa is chosen only where the selector names a fused kernel."""
    from perfkit.static_backend import GROUPED_DECODE_SDPA, choose_decode_attention

    for name in ("tiny-llama3-8b", "tiny-llama2-13b"):
        config = tiny_models[name].config
        assert choose_decode_attention(config, 2, 64, torch.float32, "cpu") == GROUPED_DECODE_SDPA


def test_failed_capture_is_retried_with_the_efficient_kernel_before_eager(tiny_models, monkeypatch, capsys):
    """The capture path's control flow, on a CPU: the first capture fails, the retry runs under
    sdpa_kernel(EFFICIENT_ATTENTION) with the row-grouped layout; if that fails too, decode is eager (in the
    row-grouped layout, which every kernel takes) and says so; a capture that left the allocator unusable
    is not retried."""
    from perfkit.static_backend import GQA_DECODE_SDPA, GROUPED_DECODE_SDPA, StaticBackend

    model = tiny_models["tiny-llama3-8b"]
    backend = StaticBackend()
    backend.prepare(model, 1, 8, 4)  # CPU: no capture attempted, buffers allocated
    attempts = []

    def fake_try(results):
        def attempt(_model):
            attempts.append((backend.buffers.decode_attention,
                             torch._C._get_mem_efficient_sdp_enabled(), torch._C._get_flash_sdp_enabled()))
            outcome = results.pop(0)
            if outcome[0] is None:
                backend.graph, backend.mode = "a graph", "cuda-graph"
            return outcome
        return attempt

    def run(results):
        attempts.clear()
        backend.mode, backend.graph = "eager", None
        backend.buffers.decode_attention = GQA_DECODE_SDPA
        monkeypatch.setattr(backend, "_try_capture", fake_try(results))
        backend._capture(model)
        return capsys.readouterr().err

    err = run([("RuntimeError: cudnn says no", True), (None, True)])
    assert backend.mode == "cuda-graph"
    assert attempts[0] == (GQA_DECODE_SDPA, True, True)
    assert attempts[1] == (GROUPED_DECODE_SDPA, True, False)  # only the efficient kernel allowed
    assert backend.buffers.decode_attention == GROUPED_DECODE_SDPA  # what the graph holds
    assert "memory-efficient" in err

    err = run([("RuntimeError: one", True), ("RuntimeError: two", True)])
    assert (backend.mode, backend.graph) == ("eager", None)
    assert backend.buffers.decode_attention == GROUPED_DECODE_SDPA
    assert "NOT graph-replay figures" in err and "one" in err and "two" in err

    err = run([("RuntimeError: capture invalidated", False)])
    assert len(attempts) == 1 and backend.mode == "eager"  # no retry on a broken allocator
    assert "not tried" in err and "NOT graph-replay figures" in err


@pytest.mark.parametrize("backend_name", ["hf-loop", "static", "hf-generate"])
def test_rows_record_the_attention_kernel_of_each_phase(tiny_models, backend_name):
    """The kernel SDPA picked is read during set-up and warm-up and kept in the row (on a CPU: PyTorch's
    CPU flash kernel), and the model's attention function is left as it was."""
    model = tiny_models["tiny-llama3-8b"]
    m = measure_point(model, System(backend=backend_name), Point("tiny-llama3-8b", 16, 4, 2), warmup=1, repeats=1)
    row = to_row(m)
    assert row["sdpa_prefill_backend"] in ("flash", "math")
    assert row["sdpa_decode_backend"] in ("flash", "math")
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    assert model.config._attn_implementation == "sdpa"
