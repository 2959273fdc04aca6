"""Served systems against real servers started by the suite: vLLM's CPU build and `transformers serve`.

Each test sweeps (or runs) a tiny checkpoint through perfkit's endpoint mode and checks what a user relies
on: every ok row holds exactly I prompt and O output tokens per request, the in-process definitions hold,
faults become failed points with the server's message, resume measures only what is missing, and the API
key is never written anywhere.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import ROOT, publish, run_cli
from servers import HF_LAUNCH, KEY_ENV, all_text_under, hf_system, need_hf, rows_of, vllm_system

pytestmark = pytest.mark.slow


def write(path, **params) -> str:
    base = {"warmup": 1, "repeats": 2, "search": {"min_gain": None}}
    base.update(params)
    with open(path, "w") as f:
        yaml.safe_dump(base, f)
    return str(path)


def check_exact(row: dict) -> None:
    """Every request of every repeat: I prompt tokens (the server's count), O output tokens, each placed."""
    repeats = json.loads(row["requests_json"])
    assert len(repeats) == row["repeats"]
    for requests in repeats:
        assert len(requests) == row["batch"]
        for r in requests:
            assert r["error"] is None and r["http_status"] == 200
            assert r["prompt_tokens"] == row["input_len"]
            assert r["completion_tokens"] == row["output_len"] == sum(r["chunk_tokens"])
            assert r["send_ms"] >= 0 and r["chunk_ms"][0] >= r["send_ms"]
            assert r["chunk_ms"] == sorted(r["chunk_ms"])


def test_vllm_sweep_exact_rows_and_no_key_anywhere(vllm_server, tmp_path, capfd):
    """A served sweep on vLLM (token-id prompts over the completions API, chat with text prompts): every
    request exact, figures by the in-process definitions, the search over concurrency, provenance from the
    server, and the API key in no file and no output."""
    model = vllm_server.model
    params = write(tmp_path / "p.yaml", name="served", models=[model],
                   systems=[vllm_system(vllm_server.base_url),
                            vllm_system(vllm_server.base_url, label="vllm-chat", api="chat")],
                   grid={"input_lens": [24], "output_lens": [6], "batch_sizes": [1, 4]})
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows), [row["error"] for row in rows]
    for row in rows:
        check_exact(row)
        assert row["backend"] == "served" and row["server_version"] and model in row["server_models"]
        assert row["prompt_mode"] == ("text" if row["system"] == "vllm-chat" else "token_ids")
        assert 0 < row["ttft_ms"] <= row["e2e_ms"]
        assert len(row["decode_step_ms_samples"][0]) == row["output_len"] - 1
        # the repeat's e2e is the last token of all: no request's last chunk came later
        for sample, requests in zip(row["e2e_ms_samples"], json.loads(row["requests_json"])):
            assert max(rq["chunk_ms"][-1] for rq in requests) == pytest.approx(sample, abs=1e-6)
    assert {row["search_stop"] for row in rows if row["batch"] == 4} == {"grid_end"}
    summary = run_cli("summary", str(out))
    assert summary.returncode == 0 and "vllm-chat" in summary.stdout
    captured = capfd.readouterr()
    text = all_text_under(out) + r.stdout + r.stderr + summary.stdout + captured.out + captured.err
    assert vllm_server.key not in text


def test_run_endpoint_and_wrong_key(vllm_server, tmp_path, monkeypatch):
    """`perfkit run --endpoint` measures one point; a wrong key is the server's 401, said in one line, the
    key never echoed."""
    r = run_cli("run", "--model", vllm_server.model, "--input-len", "16", "--output-len", "4", "--batch", "2",
                "--endpoint", vllm_server.base_url, "--api-key-env", KEY_ENV, "--extra-body", '{"ignore_eos": true}',
                "--repeats", "2", "--system", "vllm", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["status"] == "ok" and row["batch"] == 2 and row["endpoint_api"] == "completions"
    wrong = "pk-wrong-" + "0" * 16
    monkeypatch.setenv(KEY_ENV, wrong)
    r = subprocess.run([sys.executable, "-m", "perfkit", "run", "--model", vllm_server.model, "--input-len", "8",
                        "--output-len", "4", "--endpoint", vllm_server.base_url, "--api-key-env", KEY_ENV],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2
    assert "HTTP 401" in r.stderr and wrong not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_vllm_stop_and_wrong_model_fail_points_with_the_servers_reason(vllm_server, tmp_path):
    """A stop that ends answers early (every token id a stop token) and a model the server does not serve:
    failed points whose error says what happened; nothing counted."""
    model = vllm_server.model
    params = write(tmp_path / "p.yaml", models=[model],
                   systems=[vllm_system(vllm_server.base_url, label="stops",
                                        extra_body={"ignore_eos": True, "stop_token_ids": list(range(512))}),
                            vllm_system(vllm_server.base_url, label="nobody", served_model="no-such-model")],
                   grid={"input_lens": [8], "output_lens": [4], "batch_sizes": [1]})
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress")
    assert r.returncode == 1, r.stderr  # failed points: the sweep says so in its exit status
    errors = {row["system"]: row["error"] for row in rows_of(out)}
    assert all(row["status"] == "error" for row in rows_of(out))
    assert "stopped (stop) after" in errors["stops"] and "of 4 tokens" in errors["stops"]
    assert "HTTP 404" in errors["nobody"] and "no-such-model" in errors["nobody"]


def test_unreachable_server_is_refused_before_any_work(tmp_path, served_checkpoints):
    from perfkit.serving.server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    params = write(tmp_path / "p.yaml", models=[served_checkpoints["exact"]],
                   systems=[{"label": "gone", "endpoint": {"base_url": url}}],
                   grid={"input_lens": [8], "output_lens": [4], "batch_sizes": [1]})
    r = run_cli("sweep", params, "--out", str(tmp_path / "out"), "--no-progress")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not ready" in lines[0] and "ConnectionRefusedError" in lines[0]
    assert not os.path.exists(tmp_path / "out" / "points")


def _pid_wrapper(tmp_path, pid_file) -> str:
    """A launch command that writes the server's pid, then becomes the server (exec: the same process)."""
    return f"sh -c 'echo $$ > {pid_file}; exec {HF_LAUNCH}'"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_dead(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_transformers_serve_launched_sigkill_resume_and_short_answers(served_checkpoints, tmp_path):
    """perfkit starts `transformers serve` itself (log kept, stopped after), is SIGKILLed mid-sweep (the
    server dies with it), and the same command measures only what is missing. The EOS checkpoint on the
    same server kind, which cannot be told to ignore EOS, is refused as a short answer."""
    need_hf()
    pid_file = tmp_path / "server.pid"
    system = hf_system(label="hf")
    system["endpoint"]["launch"] = _pid_wrapper(tmp_path, pid_file)
    params = write(tmp_path / "p.yaml", models=[served_checkpoints["exact"]], systems=[system],
                   grid={"input_lens": [8], "output_lens": [4], "batch_sizes": [1, 2, 3]}, repeats=3)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", "sweep", params, "--out", str(out), "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not glob.glob(os.path.join(out, "points", "*.parquet")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before its first point"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = len(rows_of(out))
    assert 1 <= done < 3
    server_pid = int(pid_file.read_text())
    assert _wait_dead(server_pid), "the server outlived the sweep that started it"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"measured {3 - done} points, {done} already done" in r.stdout
    rows = rows_of(out)
    assert len(rows) == 3 and all(row["status"] == "ok" for row in rows)
    for row in rows:
        check_exact(row)
    assert glob.glob(os.path.join(out, "servers", "hf-*.log"))
    assert _wait_dead(int(pid_file.read_text()))

    eos = write(tmp_path / "eos.yaml", models=[served_checkpoints["eos"]], systems=[hf_system(label="hf-eos")],
                grid={"input_lens": [8], "output_lens": [4], "batch_sizes": [1]})
    r = run_cli("sweep", eos, "--out", str(tmp_path / "eos-out"), "--no-progress")
    assert r.returncode == 1
    (row,) = rows_of(tmp_path / "eos-out")
    assert row["status"] == "error"
    assert "exactness check before the first timed request" in row["error"]
    # (transformers serve counts the EOS it stopped at as the one completion token)
    assert re.search(r"stopped \(stop\) after [01] of 4 tokens", row["error"]) and "ignore_eos" in row["error"]


def test_server_death_mid_sweep_fails_the_rest_with_its_exit(served_checkpoints, tmp_path):
    """The server perfkit started dies between points: the next points fail saying it exited (with its
    log's last lines), the finished ones stay."""
    need_hf()
    pid_file = tmp_path / "server.pid"
    system = hf_system(label="dies")
    system["endpoint"]["launch"] = _pid_wrapper(tmp_path, pid_file)
    params = write(tmp_path / "p.yaml", models=[served_checkpoints["exact"]], systems=[system],
                   grid={"input_lens": [8], "output_lens": [96], "batch_sizes": [1, 2, 3, 4]}, repeats=5)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", "sweep", params, "--out", str(out), "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not glob.glob(os.path.join(out, "points", "*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr
    rows = rows_of(out)
    assert len(rows) == 4
    ok = [row for row in rows if row["status"] == "ok"]
    failed = [row for row in rows if row["status"] == "error"]
    assert ok and failed
    assert any("the server exited" in row["error"] for row in failed), [row["error"] for row in failed]


def test_comparison_of_two_servers_renders(vllm_server, served_checkpoints, tmp_path):
    """vLLM (target) against `transformers serve` (baseline) on the same grid: compare gives ratios and
    verdicts, and the comparison report renders as an in-process one does."""
    need_hf()
    params = write(tmp_path / "p.yaml", name="two-servers", models=[vllm_server.model],
                   systems=[vllm_system(vllm_server.base_url), hf_system(label="hf-serve"), {"label": "local"}],
                   grid={"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2]}, repeats=3)
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("compare", f"{out}:vllm", f"{out}:hf-serve")
    assert r.returncode == 0, r.stderr
    assert "ttft" in r.stdout and ("better" in r.stdout or "worse" in r.stdout or "within noise" in r.stdout)
    reports = tmp_path / "reports"
    r = publish("compare", f"{out}:vllm", f"{out}:hf-serve", "--reports", str(reports))
    assert r.returncode == 0, r.stderr
    html = glob.glob(os.path.join(reports, "**", "*.html"), recursive=True)
    page = "\n".join(open(p).read() for p in html)
    assert "vllm" in page and "hf-serve" in page and "Served systems" in page and "on both sides alike" in page
    # a served system against the same checkpoint in perfkit's own loop: compared directly, and said so
    r = run_cli("compare", f"{out}:vllm", f"{out}:local")
    assert r.returncode == 0, r.stderr
    assert "served over the completions API" in r.stdout and "backend hf-loop" in r.stdout


def test_steady_load_closed_loop_and_poisson_and_their_comparison(vllm_server, tmp_path):
    """Load levels on vLLM: N users in a closed loop and a Poisson rate, warm-up requests left out, every
    measured request exact; summary tables them with the SLO view, compare sets two systems level by level."""
    import pyarrow.parquet as pq

    params = write(tmp_path / "p.yaml", name="loads", models=[vllm_server.model],
                   systems=[vllm_system(vllm_server.base_url), vllm_system(vllm_server.base_url, label="vllm-chat",
                                                                           api="chat")],
                   grid={"input_lens": [16], "output_lens": [6], "batch_sizes": [1]},
                   loads={"users": [1, 4], "rates": [30], "requests": 12, "warmup_requests": 3})
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "load levels measured: 6" in r.stdout
    levels = [pq.read_table(p).to_pylist()[0] for p in glob.glob(os.path.join(out, "loads", "*.parquet"))]
    assert len(levels) == 6 and all(lv["status"] == "ok" for lv in levels), [lv["error"] for lv in levels]
    for lv in levels:
        sent = json.loads(lv["requests_json"])
        assert len(sent) == 15 and lv["requests"] == 12 and len(lv["e2e_ms_samples"]) == 12
        measured = sent[3:]
        assert all(rq["prompt_tokens"] == 16 and rq["completion_tokens"] == 6 for rq in measured)
        # the window runs from the first measured send to the last measured token
        window_ms = max(rq["chunk_ms"][-1] for rq in measured) - min(rq["send_ms"] for rq in measured)
        assert lv["window_s"] * 1e3 == pytest.approx(window_ms, rel=1e-6)
        assert lv["output_tok_s"] == pytest.approx(12 * 6 / lv["window_s"])
    again = run_cli("sweep", params, "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "load levels measured" not in again.stdout  # resumed: nothing left
    summary = run_cli("summary", str(out))
    assert summary.returncode == 0 and "--- loads:" in summary.stdout and "4 users" in summary.stdout
    assert "30 req/s" in summary.stdout and "--- loads within slo" in summary.stdout
    c = run_cli("compare", f"{out}:vllm", f"{out}:vllm-chat")
    assert c.returncode == 0, c.stderr
    tail = c.stdout.split("under steady load")[1]
    # every level is set side by side, or named as left out where the client fell behind on a side
    # Every level is set side by side, or named as left out where the client fell behind on a side (on a
    # 2-core machine shared with the server that depends on the moment: both outcomes are checked).
    table, _, left_out = tail.partition("left out, client-bound on a side")
    bound = {lv["load_label"] for lv in levels if lv["client_bound"]}
    for label in ("1 user", "4 users", "30 req/s"):
        assert label in (left_out if label in bound else table)
    if bound != {"1 user", "4 users", "30 req/s"}:
        assert "output_tok_s" in table
    if "30 req/s" not in bound:
        assert "no interval (offered rate)" in table
    reports = tmp_path / "reports"
    r = publish("compare", f"{out}:vllm", f"{out}:vllm-chat", "--reports", str(reports))
    assert r.returncode == 0, r.stderr
    (page,) = (open(p).read() for p in glob.glob(os.path.join(reports, "compare-*.html")))
    section = page.split("Under steady load")[1]
    assert "no load levels on both sides" not in section  # both sides' levels found and set side by side


def test_interleaved_sweep_of_two_servers_and_an_in_process_loop(vllm_server, served_checkpoints, tmp_path):
    """vLLM, `transformers serve` and perfkit's own loop on one checkpoint, their repeats alternating point by
    point (A B C C B A ...): every served request is still exact, and compare pairs the repeats."""
    need_hf()
    params = write(tmp_path / "p.yaml", name="interleaved", models=[vllm_server.model], interleave=True,
                   systems=[vllm_system(vllm_server.base_url), hf_system(label="hf-serve"), {"label": "local"}],
                   grid={"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2]}, repeats=2)
    out = tmp_path / "out"
    r = run_cli("sweep", params, "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    assert len(rows) == 6 and {row["status"] for row in rows} == {"ok"}
    for row in rows:
        assert row["repeat_order"] == "interleaved"
        if row["backend"] == "served":
            check_exact(row)
    for batch in (1, 2):
        slots = {row["system"]: row["repeat_slots"] for row in rows if row["batch"] == batch}
        assert slots == {"vllm": [0, 5], "hf-serve": [1, 4], "local": [2, 3]}
        assert len({row["interleave_id"] for row in rows if row["batch"] == batch}) == 1
    r = run_cli("compare", f"{out}:local", f"{out}:vllm")
    assert r.returncode == 0, r.stderr
    # a served point whose client fell behind (a loaded machine) takes no part; every other one is paired
    from perfkit.compare import PAIRED, compare

    c = compare(str(out), str(out), "local", "vllm")
    bound = {row["batch"] for row in rows if row["system"] == "vllm" and row["client_bound"]}
    assert set(c.points["batch"]) == {1, 2} - bound
    assert set(c.points["bootstrap"]) <= {PAIRED}
    if not bound:
        assert "Every interval resamples pairs of repeats measured side by side" in r.stdout
