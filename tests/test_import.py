"""perfkit import: other tools' real result files (tests/fixtures/imports/<tool>/, each with a README saying how
it was made) as perfkit rows. Every figure is checked against a value computed here, independently, from the
raw file; the rows are read back through perfkit's own readers (which check them); hostile variants of the real
files are refused in one line, writing nothing."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
from helpers import ROOT, call_cli, make_row, modules_loaded_by, publish, write_rows

import perfkit
from perfkit.errors import UsageError
from perfkit.imports import FORMATS, ImportRefused, import_files
from perfkit.loads import compare_systems, loads_of
from perfkit.serving.point import percentile

FIX = os.path.join(ROOT, "tests", "fixtures", "imports")
LB = os.path.join(FIX, "llama-bench")
OB = os.path.join(FIX, "optimum-benchmark")
VB = os.path.join(FIX, "vllm-bench")
AP = os.path.join(FIX, "aiperf")
GL = os.path.join(FIX, "guidellm")


def _points(out):
    df = perfkit.load_results(str(out))
    assert df.attrs["skipped_files"] == []  # every imported row passes the read-time checks
    return df


def _levels(out, system=None):
    levels = loads_of(str(out), system)
    assert len(levels)
    return levels


def _close(a, b, rel=1e-9):
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)


def _files(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                  if not f.startswith(".") and ".perfkit-cache" not in d)


# ---- llama-bench ---------------------------------------------------------------------------------

def test_llama_bench_pp_is_a_prompt_pass_and_tg_an_untimed_e2e(tmp_path):
    src = os.path.join(LB, "pp32-tg8.json")
    raw = json.load(open(src))
    import_files("llama-bench", [src], system="lcpp", out_dir=str(tmp_path))
    df = _points(tmp_path)
    assert len(df) == 2 and set(df["source_tool"]) == {"llama-bench"}
    assert set(df["source_version"]) == {"0c1e57098 (build 11312)"} and set(df["source_command"]) == {"not recorded"}
    pp = df[df["output_len"] == 1].iloc[0]
    ms = [s / 1e6 for s in raw[0]["samples_ns"]]
    assert (pp["input_len"], pp["batch"]) == (32, 1)
    assert list(pp["ttft_ms_samples"]) == pytest.approx(ms) and list(pp["e2e_ms_samples"]) == pytest.approx(ms)
    assert _close(pp["prefill_tok_s"], 32 / (np.median(ms) / 1e3))
    assert math.isnan(pp["tpot_ms"]) and pd_isna(pp["untimed"])
    # llama-bench's own avg_ts is a mean of per-repeat rates: not what perfkit reports
    assert not _close(pp["prefill_tok_s"], raw[0]["avg_ts"], rel=1e-3)
    tg = df[df["input_len"] == 1].iloc[0]
    ms = [s / 1e6 for s in raw[1]["samples_ns"]]
    assert (tg["output_len"], tg["untimed"]) == (8, "ttft")
    assert list(tg["e2e_ms_samples"]) == pytest.approx(ms) and list(tg["ttft_ms_samples"]) == []
    assert _close(tg["output_tok_s"], 8 / (np.median(ms) / 1e3))
    for col in ("ttft_ms", "tpot_ms", "prefill_tok_s", "decode_tok_s"):
        assert math.isnan(tg[col]), col
    assert "not timed apart" in tg["source_note"]
    assert set(df["created_utc"]) == {"2026-12-02T14:17:13Z"}


def pd_isna(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def test_llama_bench_jsonl_reads_as_json_does(tmp_path):
    src = os.path.join(LB, "pp32-tg8.jsonl")
    lines = [json.loads(x) for x in open(src)]
    import_files("llama-bench", [src], system="lcpp", out_dir=str(tmp_path))
    df = _points(tmp_path)
    pp = df[df["output_len"] == 1].iloc[0]
    assert list(pp["ttft_ms_samples"]) == pytest.approx([s / 1e6 for s in lines[0]["samples_ns"]])


def test_llama_bench_settings_become_labels_and_depth_is_left_out(tmp_path):
    src = os.path.join(LB, "pg-batch-threads.json")
    raw = json.load(open(src))
    done = import_files("llama-bench", [src], system="lcpp", out_dir=str(tmp_path))
    assert done.systems == ["lcpp n_batch=16 n_threads=1", "lcpp n_batch=16 n_threads=2",
                            "lcpp n_batch=32 n_threads=1", "lcpp n_batch=32 n_threads=2"]
    df = _points(tmp_path)
    assert len(df) == len(raw) == 12
    # pp32+tg8: the prompt pass then 8 single-token passes: under perfkit's definitions O = 9, e2e only
    pg = df[(df["system"] == "lcpp n_batch=32 n_threads=1") & (df["output_len"] == 9)].iloc[0]
    rec = next(r for r in raw if r["n_batch"] == 32 and r["n_threads"] == 1 and r["n_prompt"] and r["n_gen"])
    assert pg["input_len"] == 32 and pg["untimed"] == "ttft"
    assert list(pg["e2e_ms_samples"]) == pytest.approx([s / 1e6 for s in rec["samples_ns"]])
    out = tmp_path / "depth"
    done = import_files("llama-bench", [os.path.join(LB, "depth.json")], system="lcpp", out_dir=str(out))
    assert len(done.points) == 2 and len(done.left_out) == 2
    assert all("n_depth" not in x and "KV cache" in x for x in done.left_out)


def test_summary_reads_untimed_rows_without_a_prompt_phase(tmp_path):
    import_files("llama-bench", [os.path.join(LB, "pp32-tg8.json")], system="lcpp", out_dir=str(tmp_path))
    tables = perfkit.summarize(perfkit.load_results(str(tmp_path)))
    assert list(tables["ttft"]["input_len"]) == [32]  # the tg row (I = 1, untimed) adds no ttft figure
    su = tables["single_user"].set_index("input_len")
    assert math.isnan(su.loc[1, "tpot_ms"]) and su.loc[1, "output_tok_s"] > 0
    r = call_cli("summary", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "imported from llama-bench 0c1e57098 (build 11312)" in r.stdout


# ---- optimum-benchmark -----------------------------------------------------------------------------

def _optimum_expected(path):
    doc = json.load(open(path))
    rep, cfg = doc["report"], doc["config"]
    prefill = rep["prefill"]["latency"]["values"]
    generate = rep["generate"]["latency"]["values"]
    o = cfg["scenario"]["generate_kwargs"]["max_new_tokens"]
    return cfg, rep, [p * 1e3 for p in prefill], [g * 1e3 for g in generate], o


def test_optimum_benchmark_points_follow_the_iterations(tmp_path):
    bs1 = os.path.join(OB, "cpu_pytorch_tiny_llama_bs1", "benchmark.json")
    bs2 = os.path.join(OB, "cpu_pytorch_tiny_llama_bs2", "benchmark_report.json")  # its config beside it
    done = import_files("optimum-benchmark", [bs1, bs2], system="ob", out_dir=str(tmp_path))
    assert done.systems == ["ob"]
    df = _points(tmp_path).set_index("batch")
    for b, path in ((1, bs1), (2, os.path.join(OB, "cpu_pytorch_tiny_llama_bs2", "benchmark.json"))):
        cfg, rep, ttft, e2e, o = _optimum_expected(path)
        row = df.loc[b]
        assert (row["input_len"], row["output_len"]) == (cfg["scenario"]["input_shapes"]["sequence_length"], o)
        assert list(row["ttft_ms_samples"]) == pytest.approx(ttft)
        assert list(row["e2e_ms_samples"]) == pytest.approx(e2e)
        tpot = np.median([(e - t) / (o - 1) for t, e in zip(ttft, e2e)])
        assert _close(row["tpot_ms"], tpot)
        # the tool's own decode throughput counts the batch over the decode mean: perfkit's is B / median TPOT
        assert _close(row["decode_tok_s"], b / (tpot / 1e3))
        assert _close(row["output_tok_s"], b * o / (np.median(e2e) / 1e3))
        # its 0.6.0 per_token values accumulate over the session: iteration k's steps end block k
        values, at = rep["per_token"]["latency"]["values"], 0
        for k, steps in enumerate(row["decode_step_ms_samples"]):
            size = o * (k + 1) - 1
            assert list(steps) == pytest.approx([v * 1e3 for v in values[at + size - (o - 1):at + size]])
            assert sum(steps) <= rep["decode"]["latency"]["values"][k] * 1e3 + 1e-3
            at += size
        assert row["peak_mem_bytes"] == int(max(rep[t]["memory"]["max_ram"] for t in ("prefill", "decode")) * 1e6)
        assert (row["warmup"], row["seed"], row["torch_version"]) == (2, 42, "2.13.0+cpu")
        assert row["source_version"] == "0.6.0" and row["device_name"] == "AMD EPYC"


# ---- vllm bench serve ------------------------------------------------------------------------------

def test_vllm_bench_closed_loop_and_poisson_rate(tmp_path):
    closed, poisson = os.path.join(VB, "closed-c2-n10.json"), os.path.join(VB, "poisson-r4-c2-n10.json")
    import_files("vllm-bench", [closed, poisson], system="vllm", out_dir=str(tmp_path))
    levels = _levels(tmp_path).set_index("load_kind")
    for kind, path, value in (("users", closed, 2.0), ("rate", poisson, 4.0)):
        raw = json.load(open(path))
        lv = levels.loc[kind]
        assert lv["load_value"] == value and lv["requests"] == 10 and lv["status"] == "ok"
        k = 3
        assert _close(lv["ttft_ms_samples"][k], raw["ttfts"][k] * 1e3)
        assert _close(lv["e2e_ms_samples"][k], raw["latencies"][k] * 1e3)
        assert _close(lv["tpot_ms_samples"][k], (raw["latencies"][k] - raw["ttfts"][k]) * 1e3 / 7)
        window = max(s + lat for s, lat in zip(raw["start_times"], raw["latencies"])) - min(raw["start_times"])
        assert _close(lv["window_s"], window) and _close(lv["output_tok_s"], 80 / window)
        assert not _close(lv["output_tok_s"], raw["output_throughput"], rel=1e-4)  # vLLM's is over its duration
        # one token a chunk here (7 gaps for O = 8): the gaps are per token
        assert _close(lv["itl_p50_ms"], percentile([g * 1e3 for gaps in raw["itls"] for g in gaps], 50))
        assert _close(lv["ttft_p99_ms"], percentile([t * 1e3 for t in raw["ttfts"]], 99))
        assert lv["backend"] == "served" and lv["source_command"] == "not recorded"
    assert "never held a request back" in levels.loc["rate", "source_note"]


def _in_flight_by_pairs(starts, ends, arrivals):
    """The definition, pair by pair: for each arrival, the other requests whose [start, end) holds it."""
    return max((sum(1 for j in range(len(starts)) if j != i and starts[j] <= t < ends[j])
                for i, t in enumerate(arrivals)), default=0)


def test_in_flight_at_arrival_counts_as_the_definition_does():
    from perfkit.imports.vllm_bench import _in_flight_at_arrival

    raw = json.load(open(os.path.join(VB, "poisson-r4-c2-n10.json")))
    starts = raw["start_times"]
    ends = [s + lat for s, lat in zip(starts, raw["latencies"])]
    arrivals = [s - q for s, q in zip(starts, raw["queue_times"])]
    assert _in_flight_at_arrival(starts, ends, arrivals) == _in_flight_by_pairs(starts, ends, arrivals) == 0
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 40, 300):  # on a coarse grid: arrivals on starts and ends, zero latencies and queues
        starts = rng.integers(0, 20, n).astype(float) / 10
        ends = (starts + rng.integers(0, 6, n) / 10).tolist()
        arrivals = (starts - rng.integers(0, 3, n) / 10 * (rng.random(n) < 0.5)).tolist()
        starts = starts.tolist()
        assert _in_flight_at_arrival(starts, ends, arrivals) == _in_flight_by_pairs(starts, ends, arrivals), n
    assert _in_flight_at_arrival([], [], []) == 0
    # 20,000 Poisson requests (the pairwise count in Python takes minutes): against the definition by blocks
    n = 20_000
    starts = np.cumsum(rng.exponential(1 / 40, n))
    ends = starts + rng.exponential(0.4, n)
    arrivals = starts - np.where(rng.random(n) < 0.3, 0.0, rng.exponential(0.02, n))
    most = 0
    for lo in range(0, n, 1000):
        t = arrivals[lo:lo + 1000, None]
        inside = (starts[None, :] <= t) & (t < ends[None, :])
        inside[np.arange(len(t)), np.arange(lo, lo + len(t))] = False
        most = max(most, int(inside.sum(axis=1).max()))
    assert most > 10
    assert _in_flight_at_arrival(starts.tolist(), ends.tolist(), arrivals.tolist()) == most

    class Counted(list):  # counts the reads of its items: a pairwise count reads each request's times n times
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

        def __iter__(self):
            return (self[i] for i in range(len(self)))

    k = 1000
    _in_flight_at_arrival(Counted(starts[:k].tolist()), Counted(ends[:k].tolist()), Counted(arrivals[:k].tolist()))
    assert Counted.reads <= 10 * 3 * k


# ---- AIPerf ---------------------------------------------------------------------------------------

def _aiperf_records(folder):
    out = [json.loads(x) for x in open(os.path.join(folder, "profile_export.jsonl"))]
    return [r for r in out if r["metadata"]["benchmark_phase"] == "profiling"], len(out)


def test_aiperf_profiling_phase_as_a_closed_loop(tmp_path):
    folder = os.path.join(AP, "c2-n10-asyncio")
    measured, total = _aiperf_records(folder)
    import_files("aiperf", [os.path.join(folder, "profile_export.jsonl")], system="aiperf", out_dir=str(tmp_path))
    lv = _levels(tmp_path).iloc[0]
    assert (lv["load_kind"], lv["load_value"], lv["requests"], lv["warmup_requests"]) == ("users", 2, 10, total - 10)
    by_start = sorted(measured, key=lambda r: r["metadata"]["request_start_ns"])
    m = by_start[4]["metrics"]
    assert _close(lv["ttft_ms_samples"][4], m["time_to_first_token"]["value"])
    assert _close(lv["e2e_ms_samples"][4], m["request_latency"]["value"])
    assert _close(lv["tpot_ms_samples"][4], (m["request_latency"]["value"] - m["time_to_first_token"]["value"]) / 7)
    start = min(r["metadata"]["request_start_ns"] for r in measured)
    end = max(r["metadata"]["request_start_ns"] - start + r["metrics"]["request_latency"]["value"] * 1e6
              for r in measured)
    assert _close(lv["window_s"], end / 1e9, rel=1e-9)
    agg = json.load(open(os.path.join(folder, "profile_export_aiperf.json")))
    assert lv["source_version"] == agg["aiperf_version"] and lv["source_command"].startswith("aiperf profile")
    # AIPerf's own inter_token_latency is not TPOT (it divides by O minus the first chunk's tokens): unused
    assert _close(lv["itl_p50_ms"], percentile([g for r in measured for g in r["metrics"]["inter_chunk_latency"]
                                                ["value"]], 50))


def test_aiperf_whole_streams_in_one_read_are_named(tmp_path):
    import_files("aiperf", [os.path.join(AP, "c2-n10")], system="aiperf", out_dir=str(tmp_path))
    lv = _levels(tmp_path).iloc[0]
    assert lv["tpot_p50_ms"] == 0.0 and "in one read" in lv["source_note"]


def test_aiperf_counts_only_requests_whose_every_gap_is_zero(tmp_path):
    # c2-n10: every gap of every request 0 ms; here one request gets one real gap (its latency with it)
    folder = _copy(tmp_path, os.path.join(AP, "c2-n10"))

    def one_real_gap(lines):
        m = _first_profiling(lines)["metrics"]
        m["inter_chunk_latency"]["value"][-1] = 2.0
        m["request_latency"]["value"] += 2.0

    _edit_jsonl(str(folder / "profile_export.jsonl"), one_real_gap)
    import_files("aiperf", [str(folder)], system="aiperf", out_dir=str(tmp_path / "out"))
    assert "9 of 10 requests had every chunk gap 0 ms" in _levels(tmp_path / "out").iloc[0]["source_note"]
    # c2-n10-asyncio: 5 requests have one 0 ms gap among real ones (two chunks in one read): none is counted
    import_files("aiperf", [os.path.join(AP, "c2-n10-asyncio")], system="aiperf", out_dir=str(tmp_path / "asyncio"))
    assert "in one read" not in _levels(tmp_path / "asyncio").iloc[0]["source_note"]


def test_aiperf_a_failed_profiling_request_imports_the_level_as_failed(tmp_path):
    for case, edit, words in (
            ("error", lambda r: r.update(error={"code": 500, "type": "InternalServerError",
                                                "message": "the  server\nfell over"}),
             "InternalServerError: the server fell over"),
            ("cancelled", lambda r: r["metadata"].update(was_cancelled=True), "cancelled")):
        (tmp_path / case).mkdir()
        folder = _copy(tmp_path / case, os.path.join(AP, "c2-n10-asyncio"))
        _edit_jsonl(str(folder / "profile_export.jsonl"), lambda ls, e=edit: e(_first_profiling(ls)))
        # AIPerf's aggregate counts 9 completed of 10
        _edit_json(str(folder / "profile_export_aiperf.json"), lambda d: d["completed_request_count"].update(avg=9.0))
        done = import_files("aiperf", [str(folder)], system="aiperf", out_dir=str(tmp_path / case / "out"))
        lv = _levels(tmp_path / case / "out").iloc[0]
        assert len(done.loads) == 1 and (lv["status"], lv["requests"]) == ("error", 0), case
        assert lv["error"].startswith("a profiling request failed in AIPerf (line "), lv["error"]
        assert words in lv["error"], lv["error"]
        assert "1 profiling requests failed" in lv["source_note"]
    # the aggregate that still counts 10 completed is refused
    (tmp_path / "count").mkdir()
    folder = _copy(tmp_path / "count", os.path.join(AP, "c2-n10-asyncio"))
    _edit_jsonl(str(folder / "profile_export.jsonl"), lambda ls: _first_profiling(ls).update(error={"type": "X"}))
    with pytest.raises(ImportRefused, match="completed_request_count.avg is 10 for 9 successful"):
        import_files("aiperf", [str(folder)], system="aiperf", out_dir=str(tmp_path / "count" / "out"))


# ---- GuideLLM -------------------------------------------------------------------------------------

def test_guidellm_benchmarks_as_levels_with_perfkit_tpot(tmp_path):
    src = os.path.join(GL, "benchmarks.json")
    raw = json.load(open(src))
    import_files("guidellm", [src], system="guidellm", out_dir=str(tmp_path))
    levels = _levels(tmp_path).set_index("load_value")
    assert sorted(levels.index) == [1.0, 2.0]
    for b in raw["benchmarks"]:
        lv = levels.loc[float(b["config"]["strategy"]["streams"])]
        reqs = sorted(b["requests"]["successful"], key=lambda r: r["info"]["timings"]["request_start"])
        t = reqs[2]["info"]["timings"]
        assert _close(lv["ttft_ms_samples"][2], (t["first_token_iteration"] - t["request_start"]) * 1e3, 1e-6)
        # e2e ends at the last token, not at request_end (which waits for the usage chunk)
        assert _close(lv["e2e_ms_samples"][2], (t["last_token_iteration"] - t["request_start"]) * 1e3, 1e-6)
        # perfkit's TPOT is GuideLLM's inter_token_latency_ms, never its time_per_output_token_ms
        assert _close(lv["tpot_ms_samples"][2], reqs[2]["inter_token_latency_ms"], 1e-6)
        assert not _close(lv["tpot_ms_samples"][2], reqs[2]["time_per_output_token_ms"], 1e-3)
        assert pd_isna(lv["itl_p50_ms"])  # no per-chunk times in the file
        window = max(r["info"]["timings"]["last_token_iteration"] for r in reqs) - \
            reqs[0]["info"]["timings"]["request_start"]
        assert _close(lv["window_s"], window, 1e-6)
        assert lv["source_version"] == "0.8.1"


def _guidellm_with(tmp_path, name, edit):
    """A copy of GuideLLM's real benchmarks.json, edited."""
    (tmp_path / name).mkdir()
    src = _copy(tmp_path / name, os.path.join(GL, "benchmarks.json"))
    _edit_json(str(src), edit)
    return str(src), str(tmp_path / name / "out")


def _gl_strategy(d, index, **strategy):
    d["benchmarks"][index]["config"]["strategy"] = strategy


def test_guidellm_throughput_and_constant_benchmarks_are_left_out_with_a_note(tmp_path):
    for kind, words in (("throughput", "every request issued at once"), ("constant", "evenly spaced arrivals")):
        src, out = _guidellm_with(tmp_path, kind, lambda d, k=kind: _gl_strategy(d, 1, type_=k, rate=4.0,
                                                                                 max_concurrency=2))
        done = import_files("guidellm", [src], system="guidellm", out_dir=out)
        assert len(done.loads) == 1 and list(_levels(out)["load_label"]) == ["1 user"]
        assert len(done.left_out) == 1 and done.left_out[0].startswith(f"{src}: benchmarks[1] ({kind}) left out: ")
        assert words in done.left_out[0]
        record = json.load(open(os.path.join(out, "runs", f"{done.run_id}.json")))
        assert record["import"]["left_out"] == done.left_out
    # a file of such benchmarks only holds nothing perfkit can import: refused, nothing written
    src, out = _guidellm_with(tmp_path, "none", lambda d: [_gl_strategy(d, i, type_="throughput") for i in (0, 1)])
    with pytest.raises(ImportRefused, match=r"holds nothing perfkit can import \(.*benchmarks\[0\] \(throughput\)"):
        import_files("guidellm", [src], system="guidellm", out_dir=out)
    assert not os.path.exists(out)


def test_guidellm_a_poisson_rate_capped_below_its_requests_is_left_out(tmp_path):
    for cap in (2, 9, 10, None):  # the benchmark holds 10 requests
        src, out = _guidellm_with(tmp_path, f"cap{cap}", lambda d, c=cap: _gl_strategy(
            d, 1, type_="poisson", rate=4.0, max_concurrency=c, worker_count=1, random_seed=42))
        done = import_files("guidellm", [src], system="guidellm", out_dir=out)
        levels = _levels(out).set_index("load_kind")
        if cap is not None and cap < 10:
            assert list(levels.index) == ["users"], cap  # the closed loop of 1 user only
            assert len(done.left_out) == 1, cap
            assert done.left_out[0].startswith(f"{src}: benchmarks[1] (poisson 4) left out: max_concurrency {cap} "
                                               "below its 10 requests"), done.left_out
        else:
            assert done.left_out == [] and levels.loc["rate", "load_value"] == 4.0, cap
            assert levels.loc["rate", "requests"] == 10
            assert ("max_concurrency 10, no fewer than its 10 requests" in levels.loc["rate", "source_note"]) == (
                cap == 10)


# ---- every format refuses what it is not ----------------------------------------------------------

def _copy(tmp_path, src):
    dst = tmp_path / "src" / os.path.basename(src)
    dst.parent.mkdir(exist_ok=True)
    if os.path.isdir(src):
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _edit_json(path, edit):
    data = json.load(open(path))
    edit(data)
    open(path, "w").write(json.dumps(data))


def _edit_jsonl(path, edit):
    lines = [json.loads(x) for x in open(path)]
    edit(lines)
    open(path, "w").write("".join(json.dumps(x) + "\n" for x in lines))


def _truncate(path):
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])


def _first_profiling(lines):
    return next(r for r in lines if r["metadata"]["benchmark_phase"] == "profiling")


def _set(d, path, value):
    *head, last = path
    for k in head:
        d = d[k]
    d[last] = value


def _ob_report(d):
    return d["report"]


def _gl_errored(d, info):
    """GuideLLM's first benchmark with one errored request (its record's `info` replaced), counted in its totals."""
    b = d["benchmarks"][0]
    b["requests"]["errored"] = [dict(b["requests"]["successful"][0], info=info)]
    b["metrics"]["request_totals"]["errored"] += 1


HOSTILE = {
    # format: (the real file or folder, the file in it to corrupt, [(case, edit, words the message holds)])
    "llama-bench": (os.path.join(LB, "pp32-tg8.json"), None, [
        ("truncated", _truncate, "not valid JSON"),
        ("negative", lambda p: _edit_json(p, lambda d: _set(d, [0, "samples_ns", 1], -5)), "samples_ns[1]"),
        ("NaN", lambda p: _edit_json(p, lambda d: _set(d, [1, "samples_ns", 0], float("nan"))), "samples_ns[0]"),
        ("string", lambda p: _edit_json(p, lambda d: _set(d, [0, "n_prompt"], "32")), "n_prompt"),
        ("missing", lambda p: _edit_json(p, lambda d: d[0].pop("samples_ns")), "samples_ns is missing"),
        ("mean", lambda p: _edit_json(p, lambda d: _set(d, [0, "avg_ns"], 1)), "avg_ns"),
        ("markdown", lambda p: shutil.copy(os.path.join(LB, "pp32-tg8.md"), p), "markdown"),
        ("other tool", lambda p: shutil.copy(os.path.join(VB, "closed-c2-n10.json"), p), "samples_ns is missing"),
    ]),
    "optimum-benchmark": (os.path.join(OB, "cpu_pytorch_tiny_llama_bs1", "benchmark.json"), None, [
        ("truncated", _truncate, "not valid JSON"),
        ("negative", lambda p: _edit_json(p, lambda d: _set(d, ["report", "prefill", "latency", "values", 0], -1.0)),
         "prefill.latency.values[0]"),
        ("sum", lambda p: _edit_json(p, lambda d: _set(d, ["report", "generate", "latency", "values", 1], 9.0)),
         "prefill + decode"),
        ("count", lambda p: _edit_json(p, lambda d: d["report"]["decode"]["latency"]["values"].pop()), "values"),
        ("lengths", lambda p: _edit_json(p, lambda d: _set(d, ["config", "scenario", "generate_kwargs",
                                                               "min_new_tokens"], 1)), "min_new_tokens"),
        ("per_token", lambda p: _edit_json(p, lambda d: d["report"].pop("per_token")), "per_token"),
        ("unit", lambda p: _edit_json(p, lambda d: _set(d, ["report", "prefill", "latency", "unit"], "ms")), "unit"),
        ("other tool", lambda p: shutil.copy(os.path.join(GL, "benchmarks.json"), p), "report is missing"),
        ("launcher list", lambda p: _edit_json(p, lambda d: _set(d, ["config", "launcher"], ["process"])),
         "config.launcher is a JSON array"),
        ("launcher string", lambda p: _edit_json(p, lambda d: _set(d, ["config", "launcher"], "process")),
         "config.launcher is a JSON string"),
    ]),
    "vllm-bench": (os.path.join(VB, "closed-c2-n10.json"), None, [
        ("truncated", _truncate, "not valid JSON"),
        ("NaN", lambda p: _edit_json(p, lambda d: _set(d, ["ttfts", 2], float("nan"))), "ttfts[2]"),
        ("negative", lambda p: _edit_json(p, lambda d: _set(d, ["latencies", 0], -0.01)), "latencies[0]"),
        ("count", lambda p: _edit_json(p, lambda d: _set(d, ["completed"], 9)), "completed"),
        ("length", lambda p: _edit_json(p, lambda d: d["ttfts"].pop()), "ttfts holds 9"),
        ("tokens", lambda p: _edit_json(p, lambda d: _set(d, ["total_output_tokens"], 81)), "total_output_tokens"),
        ("gaps", lambda p: _edit_json(p, lambda d: _set(d, ["itls", 1, 0], 1.0)), "itls[1]"),
        ("string", lambda p: _edit_json(p, lambda d: _set(d, ["start_times", 0], "now")), "start_times[0]"),
        ("missing", lambda p: _edit_json(p, lambda d: d.pop("itls")), "--save-detailed"),
        ("other tool", lambda p: shutil.copy(os.path.join(GL, "benchmarks.json"), p), "missing"),
    ]),
    "aiperf": (os.path.join(AP, "c2-n10-asyncio"), "profile_export.jsonl", [
        ("truncated", _truncate, "not valid JSON"),
        ("negative", lambda p: _edit_jsonl(p, lambda ls: _set(_first_profiling(ls), ["metrics", "request_latency",
                                                                                     "value"], -3.0)),
         "request_latency.value"),
        ("NaN", lambda p: _edit_jsonl(p, lambda ls: _set(_first_profiling(ls), ["metrics", "time_to_first_token",
                                                                                "value"], float("nan"))),
         "time_to_first_token.value"),
        ("unit", lambda p: _edit_jsonl(p, lambda ls: _set(_first_profiling(ls), ["metrics", "request_latency",
                                                                                 "unit"], "s")), "unit"),
        ("missing", lambda p: _edit_jsonl(p, lambda ls: _first_profiling(ls).pop("metadata")), "metadata is missing"),
        ("count", lambda p: _edit_jsonl(p, lambda ls: ls.remove(_first_profiling(ls))), "request_count"),
        ("lengths", lambda p: _edit_jsonl(p, lambda ls: _set(_first_profiling(ls), ["metrics",
                                                                                    "usage_completion_tokens",
                                                                                    "value"], 7)), "lengths"),
        ("other tool", lambda p: shutil.copy(os.path.join(VB, "closed-c2-n10.json"), p), "metadata is missing"),
    ]),
    "guidellm": (os.path.join(GL, "benchmarks.json"), None, [
        ("truncated", _truncate, "not valid JSON"),
        ("NaN", lambda p: _edit_json(p, lambda d: _set(d["benchmarks"][0]["requests"]["successful"][0]["info"]
                                                       ["timings"], ["request_start"], float("nan"))),
         "request_start"),
        ("order", lambda p: _edit_json(p, lambda d: _set(d["benchmarks"][1]["requests"]["successful"][3]["info"]
                                                         ["timings"], ["first_token_iteration"], 1.0)),
         "first_token_iteration"),
        ("count", lambda p: _edit_json(p, lambda d: d["benchmarks"][0]["requests"]["successful"].pop()),
         "request_totals.successful"),
        ("string", lambda p: _edit_json(p, lambda d: _set(d["benchmarks"][0]["requests"]["successful"][1],
                                                          ["output_tokens"], "8")), "output_tokens"),
        ("missing", lambda p: _edit_json(p, lambda d: d.pop("benchmarks")), "benchmarks is missing"),
        ("other tool", lambda p: shutil.copy(os.path.join(OB, "cpu_pytorch_tiny_llama_bs1", "benchmark.json"), p),
         "metadata is missing"),
        ("warnings number", lambda p: _edit_json(p, lambda d: _set(d["benchmarks"][0], ["warnings"], 5)),
         "benchmarks[0].warnings is a JSON number"),
        ("errored info list", lambda p: _edit_json(p, lambda d: _gl_errored(d, ["boom"])),
         "benchmarks[0].requests.errored[0].info is a JSON array"),
        ("errored info string", lambda p: _edit_json(p, lambda d: _gl_errored(d, "boom")),
         "benchmarks[0].requests.errored[0].info is a JSON string"),
        ("max_concurrency string", lambda p: _edit_json(p, lambda d: _set(d["benchmarks"][1]["config"], ["strategy"], {
            "type_": "poisson", "rate": 4.0, "max_concurrency": "2"})), "strategy.max_concurrency"),
    ]),
}
CASES = [(fmt, case, edit, words) for fmt, (_, _, cases) in HOSTILE.items() for case, edit, words in cases]


@pytest.mark.parametrize("fmt,case,edit,words", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_hostile_file_is_refused_in_one_line_writing_nothing(tmp_path, fmt, case, edit, words):
    src, inner, _ = HOSTILE[fmt]
    given = _copy(tmp_path, src)
    target = given / inner if inner else given
    edit(str(target))
    out = tmp_path / "out"
    r = call_cli("import", fmt, given, "--system", "x", "--out", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perfkit: error: "), r.stderr
    assert os.path.basename(str(target)) in lines[0] or os.path.basename(str(given)) in lines[0]
    assert words in lines[0], lines[0]
    assert "expected" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_every_format_has_hostile_cases():
    assert set(HOSTILE) == set(FORMATS)


def test_the_command_line_refuses_bad_arguments_in_one_line(tmp_path):
    for args, words in ((("import", "vllm", os.path.join(VB, "closed-c2-n10.json")), "vllm-bench"),
                        (("import", "aiperf", tmp_path / "nothing.jsonl"), "no such file"),
                        (("import", "guidellm", os.path.join(GL, "benchmarks.json"), "--system", ""), "--system")):
        r = call_cli(*args, *(("--system", "x") if "--system" not in args else ()), "--out", tmp_path / "out")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert words in r.stderr
    assert not (tmp_path / "out").exists()


# ---- writing: idempotent, all or nothing, one definition per label --------------------------------

def test_importing_twice_rewrites_the_same_keys(tmp_path):
    paths = [os.path.join(LB, "pp32-tg8.json")]
    first = import_files("llama-bench", paths, system="lcpp", out_dir=str(tmp_path))
    files = _files(str(tmp_path))
    second = import_files("llama-bench", paths, system="lcpp", out_dir=str(tmp_path))
    assert _files(str(tmp_path)) == files and first.run_id == second.run_id and sorted(first.points) == sorted(
        second.points)
    import_files("vllm-bench", [os.path.join(VB, "closed-c2-n10.json")], system="v", out_dir=str(tmp_path))
    before = _files(str(tmp_path))
    r = call_cli("import", "vllm-bench", os.path.join(VB, "closed-c2-n10.json"), "--system", "v", "--out", tmp_path)
    assert r.returncode == 0 and "imported 1 load levels" in r.stdout
    assert _files(str(tmp_path)) == before and len(_levels(tmp_path, "v")) == 1


def test_the_run_record_names_and_hashes_every_file_read(tmp_path):
    import hashlib

    def sha(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    for fmt, src, main, companion in (
            ("aiperf", os.path.join(AP, "c2-n10-asyncio"), "profile_export.jsonl", "profile_export_aiperf.json"),
            ("optimum-benchmark", os.path.join(OB, "cpu_pytorch_tiny_llama_bs2"), "benchmark_report.json",
             "benchmark_config.json")):
        (tmp_path / fmt).mkdir()
        folder = _copy(tmp_path / fmt, src)
        given = str(folder) if fmt == "aiperf" else str(folder / main)
        first = import_files(fmt, [given], system="x", out_dir=str(tmp_path / fmt / "one"))
        record = json.load(open(os.path.join(tmp_path / fmt / "one", "runs", f"{first.run_id}.json")))
        assert record["import"]["files"] == [{"path": str(folder / n), "sha256": sha(folder / n)}
                                             for n in sorted((main, companion))], fmt
        rows = _levels(tmp_path / fmt / "one") if fmt == "aiperf" else _points(tmp_path / fmt / "one")
        assert set(rows["source_file"]) == {str(folder / main)}  # the main file
        # the companion rewritten (same content, other bytes): another file read, another run id
        with open(folder / companion) as f:
            data = json.load(f)
        open(folder / companion, "w").write(json.dumps(data, indent=1))
        second = import_files(fmt, [given], system="x", out_dir=str(tmp_path / fmt / "two"))
        assert second.run_id != first.run_id, fmt


def test_optimum_benchmark_without_a_launcher_imports(tmp_path):
    src = _copy(tmp_path, os.path.join(OB, "cpu_pytorch_tiny_llama_bs1", "benchmark.json"))
    _edit_json(str(src), lambda d: _set(d, ["config", "launcher"], None))
    import_files("optimum-benchmark", [str(src)], system="ob", out_dir=str(tmp_path / "out"))
    assert json.loads(_points(tmp_path / "out").iloc[0]["source_settings"])["launcher"] == {}


def test_a_write_that_fails_midway_leaves_nothing_half_imported(tmp_path, monkeypatch):
    import perfkit.results as results
    from perfkit.errors import WriteError

    out = str(tmp_path / "out")
    import_files("llama-bench", [os.path.join(LB, "pp32-tg8.json")], system="lcpp", out_dir=out)
    before = {f: open(os.path.join(out, f), "rb").read() for f in _files(out)}
    real, calls = results.write_point, []

    def failing(out_dir, row):
        calls.append(row["point_key"])
        if len(calls) == 3:
            raise WriteError(os.path.join(out_dir, "points", "x.parquet"), OSError(28, "No space left on device"))
        return real(out_dir, row)

    monkeypatch.setattr(results, "write_point", failing)
    with pytest.raises(WriteError):  # pp32-tg8.json's two points again, then pg-batch-threads' first fails
        import_files("llama-bench", [os.path.join(LB, "pp32-tg8.json"), os.path.join(LB, "pg-batch-threads.json")],
                     system="lcpp", out_dir=out)
    assert len(calls) == 3
    assert {f: open(os.path.join(out, f), "rb").read() for f in _files(out)} == before


def test_a_label_means_one_thing(tmp_path):
    out = str(tmp_path)
    write_rows(out, [make_row("measured", "tiny-x", 32, 8, 1, [5.0] * 3, [40.0] * 3)])
    with pytest.raises(UsageError, match="holds rows perfkit measured"):
        import_files("optimum-benchmark", [os.path.join(OB, "cpu_pytorch_tiny_llama_bs1", "benchmark.json")],
                     system="measured", out_dir=out)
    import_files("llama-bench", [os.path.join(LB, "pp32-tg8.json")], system="lcpp", out_dir=out)
    other = _copy(tmp_path, os.path.join(LB, "pp32-tg8.json"))
    _edit_json(str(other), lambda d: [r.update(n_threads=1) for r in d])
    with pytest.raises(UsageError, match="other settings"):  # another thread count under the same label
        import_files("llama-bench", [str(other)], system="lcpp", out_dir=out)
    with pytest.raises(ImportRefused, match="same workload and system"):
        import_files("llama-bench", [os.path.join(LB, "pp32-tg8.json"), os.path.join(LB, "depth.json")],
                     system="l2", out_dir=out)


def test_a_tampered_untimed_row_is_refused_when_read(tmp_path):
    from perfkit.results import read_point

    import_files("llama-bench", [os.path.join(LB, "pp32-tg8.json")], system="lcpp", out_dir=str(tmp_path))
    df = _points(tmp_path)
    row = df[df["untimed"] == "ttft"].iloc[0].to_dict()
    for col, value, words in (("ttft_ms", 1.0, "figures that need a ttft"), ("e2e_ms", 9.0, "e2e_ms"),
                              ("untimed", "e2e", "untimed 'e2e'"), ("source_tool", None, "imported from another")):
        bad = dict(row, **{col: value})
        from perfkit.results import write_point

        path = write_point(str(tmp_path / "bad"), bad)
        with pytest.raises(Exception, match=words):
            read_point(path)


def test_old_results_still_read_whole():
    df = perfkit.load_results(os.path.join(ROOT, "results", "cpu-full-size"))
    assert len(df) and df.attrs["skipped_files"] == []
    assert df["source_tool"].isna().all() and df["untimed"].isna().all()


def test_the_importers_need_no_torch_notebooks_or_plotting():
    loaded = modules_loaded_by(", ".join(["perfkit.imports", *FORMATS.values()]),
                               ("torch", "matplotlib", "nbformat", "papermill", "IPython", "seaborn"))
    assert loaded == []


# ---- imported rows in comparisons -------------------------------------------------------------------

def _measured_baseline(out):
    """perfkit rows (made as perfkit makes them) on optimum-benchmark's workloads: I 32, O 8, B 1 and 2."""
    write_rows(out, [make_row("perfkit-hf", "tiny-ob", 32, 8, b, [4.0 * b, 4.5 * b, 5.0 * b],
                              [30.0 * b, 31.0 * b, 33.0 * b]) for b in (1, 2)])


def test_imported_points_compare_with_measured_ones_and_say_which_tool(tmp_path):
    out = str(tmp_path)
    _measured_baseline(out)
    paths = [os.path.join(OB, f"cpu_pytorch_tiny_llama_bs{b}", "benchmark.json") for b in (1, 2)]
    import_files("optimum-benchmark", paths, system="optimum", out_dir=out, model="tiny-ob")
    c = compare_systems(out, out, "optimum", "perfkit-hf", n_boot=200)
    assert not c.loads_only and len(c.points) and set(c.study["metric"]) >= {"ttft_ms", "tpot_ms"}
    by = c.systems.set_index("side")["measured by"]
    assert by["target"] == "optimum-benchmark 0.6.0, imported" and by["baseline"] == "perfkit"
    r = call_cli("compare", f"{out}:optimum", f"{out}:perfkit-hf", "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    assert "measured by optimum-benchmark 0.6.0" in r.stdout and "measured by perfkit" in r.stdout


def test_imported_levels_compare_level_by_level(tmp_path):
    out = str(tmp_path)
    model = "/work/fixtures-work/tiny-served"
    import_files("vllm-bench", [os.path.join(VB, "closed-c2-n10.json")], system="vllm-bench", out_dir=out)
    import_files("guidellm", [os.path.join(GL, "benchmarks.json")], system="guidellm", out_dir=out, model=model)
    c = compare_systems(out, out, "guidellm", "vllm-bench", n_boot=200)
    assert c.loads_only and c.points.empty and set(c.loads["load_label"]) == {"2 users"}
    assert set(c.loads["metric"]) == {"ttft_ms", "tpot_ms", "e2e_ms", "output_tok_s"}
    r = call_cli("compare", f"{out}:guidellm", f"{out}:vllm-bench", "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    assert "measured by guidellm 0.8.1" in r.stdout and "load levels only" in r.stdout
    r = call_cli("summary", out, "--system", "guidellm")
    assert r.returncode == 0 and "imported from guidellm 0.8.1" in r.stdout and "2 users" in r.stdout
    import_files("aiperf", [os.path.join(AP, "c2-n10-asyncio")], system="aiperf", out_dir=out, model="other")
    with pytest.raises(UsageError, match="share no load level"):  # another model name: no workload in common
        compare_systems(out, out, "aiperf", "vllm-bench", n_boot=200)


@pytest.mark.slow
def test_a_comparison_report_names_the_tool_of_each_side(tmp_path):
    out = str(tmp_path / "res")
    _measured_baseline(out)
    paths = [os.path.join(OB, f"cpu_pytorch_tiny_llama_bs{b}", "benchmark.json") for b in (1, 2)]
    import_files("optimum-benchmark", paths, system="optimum", out_dir=out, model="tiny-ob")
    import_files("vllm-bench", [os.path.join(VB, "closed-c2-n10.json")], system="vllm-bench", out_dir=out)
    import_files("aiperf", [os.path.join(AP, "c2-n10-asyncio")], system="aiperf", out_dir=out)
    reports = str(tmp_path / "reports")
    for target, baseline, words in (("optimum", "perfkit-hf", "optimum-benchmark 0.6.0, imported"),
                                    ("aiperf", "vllm-bench", "aiperf 0.13.0, imported")):
        r = publish("compare", f"{out}:{target}", f"{out}:{baseline}", "--reports", reports)
        assert r.returncode == 0, r.stderr
        page = open(r.stdout.strip().splitlines()[-1]).read()
        assert words in page and "measured by" in page and "Traceback" not in page


def test_a_report_of_a_system_with_load_levels_only_is_refused_in_one_line(tmp_path):
    """An imported serving benchmark has levels and no batch point: its own report (built on points) is
    refused before any notebook runs, naming what does show it."""
    from perfkit.report.publish import publish_report

    import_files("aiperf", [os.path.join(AP, "c2-n10", "profile_export.jsonl")], system="aiperf",
                 out_dir=str(tmp_path / "out"))
    with pytest.raises(UsageError, match=r"system 'aiperf' has load levels only.*perfkit summary .* --system aiperf"):
        publish_report(str(tmp_path / "out"), "aiperf", reports_dir=str(tmp_path / "reports"))
    assert not os.path.exists(tmp_path / "reports")
