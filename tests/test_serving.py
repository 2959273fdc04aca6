"""The served-system client's reading of streams, its per-token definitions and its checks, on event
streams as vLLM 0.32 (CPU build) and `transformers serve` 5.17 wrote them for the tiny checkpoint
(perfkit.tiny_checkpoint); and served systems in params files. The live servers: test_served.py."""

from __future__ import annotations

import json

import pytest
from helpers import params_dict

from perfkit.errors import UsageError
from perfkit.params import parse_params
from perfkit.serving.client import RequestRecord, _Stream
from perfkit.serving.point import ServedPointError, check_request, completion_body, percentile
from perfkit.serving.prompts import text_of

# vLLM, completions, stream_options {include_usage, continuous_usage_stats}: a running usage in every chunk,
# then a usage-only chunk without choices, then [DONE].
VLLM_COMPLETIONS = [
    {"choices": [{"index": 0, "text": " w340", "finish_reason": None}],
     "usage": {"prompt_tokens": 6, "total_tokens": 7, "completion_tokens": 1}},
    {"choices": [{"index": 0, "text": " w94", "finish_reason": None}],
     "usage": {"prompt_tokens": 6, "total_tokens": 8, "completion_tokens": 2}},
    {"choices": [{"index": 0, "text": " w427", "finish_reason": "length"}],
     "usage": {"prompt_tokens": 6, "total_tokens": 9, "completion_tokens": 3}},
    {"choices": [], "usage": {"prompt_tokens": 6, "total_tokens": 9, "completion_tokens": 3}},
    "[DONE]",
]
# vLLM, chat: a role chunk with empty content first (no token), usage only at the end.
VLLM_CHAT = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": " w95"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": " w223"}, "finish_reason": "length"}]},
    {"choices": [], "usage": {"prompt_tokens": 4, "total_tokens": 6, "completion_tokens": 2}},
    "[DONE]",
]
# transformers serve, chat: a role-only chunk, then one token per chunk, usage in the last chunk *with* a
# choice (finish_reason, empty delta), and no [DONE].
HF_CHAT = [
    {"choices": [{"delta": {"role": "assistant"}, "index": 0}]},
    {"choices": [{"delta": {"content": "w250"}, "index": 0}]},
    {"choices": [{"delta": {"content": " w215"}, "index": 0}]},
    {"choices": [{"delta": {"content": " w32"}, "index": 0}]},
    {"choices": [{"delta": {}, "index": 0, "finish_reason": "length"}],
     "usage": {"completion_tokens": 3, "prompt_tokens": 4, "total_tokens": 7}},
]


def read(api, events, start_ns=1_000_000, step_ns=1_000_000) -> RequestRecord:
    r = RequestRecord(0, send_ns=0)
    s = _Stream(api, r, None)
    for n, e in enumerate(events):
        data = e if isinstance(e, str) else json.dumps(e)
        if not s.event(data, start_ns + n * step_ns):
            break
    r.http_status = 200
    return r


def test_running_usage_counts_tokens_per_chunk():
    r = read("completions", VLLM_COMPLETIONS)
    assert r.counts == "usage" and r.chunk_tokens == [1, 1, 1]
    assert (r.prompt_tokens, r.completion_tokens, r.finish_reason) == (6, 3, "length")
    assert r.events == 5  # the usage-only chunk and [DONE] are events, not tokens
    check_request(0, r, 6, 3)


@pytest.mark.parametrize("api,events,first_ns", [("chat", VLLM_CHAT, 2_000_000), ("chat", HF_CHAT, 2_000_000)])
def test_role_only_chunks_are_not_the_first_token(api, events, first_ns):
    r = read(api, events)
    assert r.counts == "chunks" and r.first_token_ns == first_ns
    assert r.completion_tokens == r.tokens_received()


def test_usage_in_a_final_chunk_with_choices_is_a_total_not_tokens():
    """transformers serve's last chunk carries usage and a choice: its 3 are the total, not 3 more tokens."""
    r = read("chat", HF_CHAT)
    assert r.chunk_tokens == [1, 1, 1] and r.completion_tokens == 3 and r.prompt_tokens == 4
    check_request(0, r, 4, 3)


def test_itl_is_per_token_not_per_chunk():
    """A chunk of 3 tokens 6 ms after the previous one: three ITLs of 2 ms, not one of 6."""
    r = RequestRecord(0, send_ns=0, chunk_ns=[10_000_000, 12_000_000, 18_000_000], chunk_tokens=[2, 1, 3])
    assert r.itl_ms() == pytest.approx([0.0, 2.0, 2.0, 2.0, 2.0])
    assert len(r.itl_ms()) == r.tokens_received() - 1
    assert sum(r.itl_ms()) == pytest.approx((r.last_token_ns - r.first_token_ns) / 1e6)
    assert r.token_arrivals_ns() == [10_000_000] * 2 + [12_000_000] + [18_000_000] * 3


def test_an_error_event_mid_stream_fails_the_request():
    r = read("completions", [VLLM_COMPLETIONS[0], {"error": {"message": "EngineCore encountered an issue"}}])
    with pytest.raises(ServedPointError, match="request 0: EngineCore encountered an issue"):
        check_request(0, r, 6, 3)


@pytest.mark.parametrize("finish,tokens,expected", [
    ("stop", 1, "request 0 stopped (stop) after 1 of 3 tokens: this server needs exact lengths forced"),
    ("length", 2, "request 0 stopped (length) after 2 of 3 tokens: a length cap below max_tokens"),
])
def test_short_answers_say_what_to_set(finish, tokens, expected):
    events = [dict(e) for e in VLLM_COMPLETIONS[:tokens]]
    events[-1] = {**events[-1], "choices": [{**events[-1]["choices"][0], "finish_reason": finish}]}
    r = read("completions", events)
    with pytest.raises(ServedPointError) as exc:
        check_request(0, r, 6, 3)
    assert str(exc.value).startswith(expected)


def test_prompt_length_and_missing_usage_are_refused():
    r = read("completions", VLLM_COMPLETIONS)
    with pytest.raises(ServedPointError, match="the server counted 6 prompt tokens, 7 sent"):
        check_request(0, r, 7, 3)
    no_usage = read("chat", VLLM_CHAT[:3])
    with pytest.raises(ServedPointError, match="reported no prompt token count"):
        check_request(0, no_usage, 4, 2)


def test_chunk_counts_that_disagree_with_usage_are_refused():
    """Two tokens in one chunk without a running usage: the server says 3, the chunks show 2."""
    events = [VLLM_CHAT[0], VLLM_CHAT[1], {"choices": [{"index": 0, "delta": {"content": " w1 w2"},
                                                      "finish_reason": "length"}]},
              {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}]
    r = read("chat", events)
    with pytest.raises(ServedPointError, match="its chunks carry 2 tokens by count"):
        check_request(0, r, 4, 3)


def test_body_sets_exact_lengths_and_takes_extra_fields():
    from perfkit.serving.endpoint import Endpoint

    e = Endpoint(base_url="http://127.0.0.1:1/v1", extra_body=json.dumps({"ignore_eos": True}))
    body = completion_body(e, "m", [1, 2, 3], 8, continuous_usage=True)
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 8 and body["stream"] is True
    assert body["ignore_eos"] is True and body["temperature"] == 0.0
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    chat = completion_body(Endpoint(api="chat", base_url="http://h/v1"), "m", "w1 w2", 4, continuous_usage=False)
    assert chat["messages"] == [{"role": "user", "content": "w1 w2"}] and "prompt" not in chat


def test_text_prompts_have_exactly_the_asked_token_count(tmp_path):
    from tokenizers import Tokenizer

    from perfkit.tiny_checkpoint import write_tokenizer

    write_tokenizer(str(tmp_path))
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ids = [0, 1, 2, 5, 9, 300, 2, 7] * 20  # special ids among them: replaced, never sent as text
    for n in (1, 7, 64, 150):
        text = text_of(tok, ids, n)
        assert len(tok.encode(text, add_special_tokens=False).ids) == n
        assert "<s>" not in text and "</s>" not in text


def test_percentile_is_linear():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0 and percentile([], 50) is None


# ---- served systems in params files ----------------------------------------------------------------

def served(**endpoint):
    return {"label": "srv", "endpoint": {"base_url": "http://127.0.0.1:8000/v1", **endpoint}}


def test_a_served_system_in_a_params_file():
    p = parse_params(params_dict(systems=[served(extra_body={"ignore_eos": True}, api_key_env="MY_KEY")]))
    (s,) = p.systems
    assert s.served and s.backend == "served" and s.endpoint.extra() == {"ignore_eos": True}
    assert s.endpoint.api_key_env == "MY_KEY" and s.endpoint.prompt_mode() == "token_ids"


@pytest.mark.parametrize("endpoint,message", [
    ({"base_url": None}, "sets neither base_url nor launch"),
    ({"launch": "vllm serve {model}"}, "sets both base_url and launch"),
    ({"base_url": "ftp://x/v1"}, "is not an http:// or https:// URL"),
    ({"api": "responses"}, "unknown value 'responses'"),
    ({"api": "chat", "prompt": "token_ids"}, "token_ids with api chat"),
    ({"extra_body": {"max_tokens": 3}}, "extra_body.max_tokens: is set by perfkit"),
    ({"extra_body": [1]}, "is not a mapping"),
    ({"api_key_env": "sk-123 secret"}, "is not a variable name"),
    ({"env": {"A": "1"}}, "env: is set without launch"),
    ({"ready_timeout_s": 0}, "ready_timeout_s: 0 is out of range"),
    ({"colour": "red"}, "endpoint.colour: unknown key"),
])
def test_bad_endpoints_are_refused_in_one_line(endpoint, message):
    spec = served(**endpoint)
    spec["endpoint"] = {k: v for k, v in spec["endpoint"].items() if v is not None}
    with pytest.raises(UsageError) as exc:
        parse_params(params_dict(systems=[spec]))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_served_systems_refuse_device_derived_lengths_and_huge_concurrency():
    with pytest.raises(UsageError, match="is set for a served system"):
        parse_params(params_dict(systems=[{**served(), "device": "cuda"}]))
    with pytest.raises(UsageError, match="false for a sweep with served systems"):
        parse_params(params_dict(systems=[served()], derive_output_lens=True,
                                 grid={"input_lens": [8], "output_lens": [4, 8], "batch_sizes": [1]}))
    with pytest.raises(UsageError, match="concurrent requests for served system"):
        parse_params(params_dict(systems=[served()], grid={"input_lens": [8], "output_lens": [4],
                                                           "batch_sizes": [1, 100_000]}))


def test_the_endpoint_defines_the_points_key_but_not_a_launched_port():
    from perfkit.rows import point_fields, point_key

    a, b = (parse_params(params_dict(systems=[served(extra_body=x)])).systems[0]
            for x in ({"ignore_eos": True}, {"min_tokens": 8}))
    keys = {point_key(point_fields(s, "tiny-llama3-8b", 8, 4, 1, 1, 3, 0)) for s in (a, b)}
    assert len(keys) == 2
    in_process = parse_params(params_dict()).systems[0]
    assert "endpoint" not in point_fields(in_process, "tiny-llama3-8b", 8, 4, 1, 1, 3, 0)
    other_url = parse_params(params_dict(systems=[{"label": "srv", "endpoint": {
        "base_url": "http://10.0.0.1:9000/v1", "extra_body": {"ignore_eos": True}}}])).systems[0]
    assert point_key(point_fields(other_url, "tiny-llama3-8b", 8, 4, 1, 1, 3, 0)) in keys


def _level(system, tpot, e2e, bound=False, kind="users"):
    return {"system": system, "model": "m", "input_len": 8, "output_len": 4, "load_kind": kind, "load_value": 4.0,
            "load_label": "4 users", "status": "ok", "output_tok_s": 100.0, "client_bound": bound,
            "ttft_ms_samples": [5.0, 6.0, 7.0], "tpot_ms_samples": tpot, "e2e_ms_samples": e2e}


def test_load_comparisons_leave_out_zero_medians_and_client_bound_levels():
    import pandas as pd

    from perfkit.loads import compare_loads

    t = pd.DataFrame([_level("t", [0.0, 0.0, 1.0], [10.0, 11.0, 12.0])])
    b = pd.DataFrame([_level("b", [2.0, 2.0, 2.5], [20.0, 21.0, 22.0])])
    out = compare_loads(t, b, n_boot=200).set_index("metric")
    assert out.loc["tpot_ms", "verdict"] == "no ratio (a median of 0 ms)"
    assert out.loc["ttft_ms", "ratio"] == 1.0 and out.loc["e2e_ms", "verdict"] == "target better"
    bound = pd.DataFrame([_level("t", [1.0, 1.0, 1.0], [10.0, 11.0, 12.0], bound=True)])
    assert compare_loads(bound, b, n_boot=200).empty


def _window_level(system, e2e_ms, window_s, kind="users", source_tool=None, value=4.0):
    """A level whose window throughput follows from its e2e samples and window: O = 4 tokens per request."""
    row = _level(system, [1.0] * len(e2e_ms), e2e_ms, kind=kind)
    row.update({"load_value": value, "window_s": window_s, "source_tool": source_tool,
                "output_tok_s": 4 * len(e2e_ms) / window_s})
    return row


def test_a_closed_loop_throughput_interval_centres_on_its_ratio_whatever_each_side_held():
    """Little's law with each side's own requests in flight: the interval holds the ratio even where a side
    held fewer than its users (its warm-up and drain), and perfkit's own rows are never refused for it."""
    import numpy as np
    import pandas as pd

    from perfkit.loads import compare_loads

    rng = np.random.default_rng(1)
    t_e2e, b_e2e = list(100 + rng.normal(0, 2, 200)), list(100 + rng.normal(0, 2, 200))
    # 200 requests of ~100 ms at 4 users would take 5 s; the target's window is longer: it held ~3.1 of 4
    t = pd.DataFrame([_window_level("t", t_e2e, 6.5)])
    b = pd.DataFrame([_window_level("b", b_e2e, 5.0)])
    row = compare_loads(t, b, n_boot=500).set_index("metric").loc["output_tok_s"]
    assert row["ratio_lo"] <= row["ratio"] <= row["ratio_hi"], row
    assert row["verdict"] == "target worse"
    # the same levels imported from another tool: the side that held ~3.1 of 4 gets no interval, with why
    t_imported = pd.DataFrame([_window_level("t", t_e2e, 6.5, source_tool="aiperf")])
    row = compare_loads(t_imported, b, n_boot=500).set_index("metric").loc["output_tok_s"]
    assert np.isnan(row["ratio_lo"]) and "the target held 3.1 of 4 users" in row["verdict"]
    # a rate level offers its throughput: never an interval, whoever measured it
    t_rate = pd.DataFrame([_window_level("t", t_e2e, 6.5, kind="rate", source_tool="aiperf", value=30.0)])
    b_rate = pd.DataFrame([_window_level("b", b_e2e, 5.0, kind="rate", value=30.0)])
    row = compare_loads(t_rate, b_rate, n_boot=500).set_index("metric").loc["output_tok_s"]
    assert row["verdict"] == "no interval (offered rate)"
