"""Nothing a command prints can act on the terminal, and a bad --slo is refused before any work.

Labels, model and checkpoint names, device names and messages read from results files, SLO names given on
the command line or replayed from a run record, the names of damaged files and a lock holder's host name
come from outside: every command prints each character of them that is not printable (ESC [ ..., CR, BEL,
backspace, the bidi overrides, bytes that were not UTF-8) as its escape (perfkit.errors.printable), never as
the character. The hostile text is tests/hostile_text.py's TERMINAL_*.
"""

import json
import os

import pytest
from helpers import ENV, call_cli, fake_measuring, make_row, run_cli, study_rows, write_params, write_rows
from hostile_text import TERMINAL_LABEL, TERMINAL_WORD, terminal_safe

from perfkit.errors import printable


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    assert printable("plain label, naïve Ωμέγα 模型 🚀") == "plain label, naïve Ωμέγα 模型 🚀"
    assert printable("a\x1b[2Jb\rc\x07d\x08e\u202ef\u2066g\udcffh\ni") == \
        "a\\x1b[2Jb\\rc\\x07d\\x08e\\u202ef\\u2066g\\udcffh\\ni"
    shown = printable(TERMINAL_LABEL)
    assert terminal_safe(shown) and printable(shown) == shown


def _hostile_results(out, label: str = TERMINAL_LABEL, scale: float = 1.0) -> str:
    """A results directory whose label, model (a checkpoint folder's name), device name and error message
    hold TERMINAL_LABEL, with an SLO of that name in its newest sweep's run record and a damaged point file
    named after it."""
    rows = [make_row(label, TERMINAL_LABEL, 32, 8, b, [10.0 * b * scale] * 3, [50.0 * b * scale] * 3)
            for b in (1, 2, 4)]
    rows.append(make_row(label, TERMINAL_LABEL, 32, 8, 8, [], [], status="error", error=f"failed: {TERMINAL_LABEL}"))
    for row in rows:
        row["device_name"] = TERMINAL_LABEL  # the machine's, as with_provenance records it
    write_rows(out, rows)
    with open(os.path.join(out, "runs", "run-sweep.json"), "w") as f:
        json.dump({**ENV, "run_id": "run-sweep", "created_utc": "2099-01-01T00:00:00Z",
                   "sweep": {"slos": [{"name": TERMINAL_WORD, "ttft_ms_max": 100.0, "tpot_ms_max": 10.0}]}}, f)
    with open(os.path.join(out, "points", f"{TERMINAL_LABEL}.parquet"), "wb") as f:
        f.write(b"not parquet")
    return str(out)


def test_summary_prints_hostile_labels_names_and_messages_as_escapes(tmp_path):
    d = _hostile_results(tmp_path / "res")
    r = call_cli("summary", d, "--points")
    assert r.returncode == 0, r.stderr
    assert terminal_safe(r.stdout) and terminal_safe(r.stderr), (r.stdout, r.stderr)
    assert f"{d}: 4 points on {printable(TERMINAL_LABEL)}" in r.stdout  # the device, as its escapes
    assert printable(TERMINAL_LABEL) + " " + printable(TERMINAL_LABEL) in " ".join(r.stdout.split())  # label, model
    assert f"skipped {printable(os.path.join(d, 'points', TERMINAL_LABEL + '.parquet'))}" in r.stderr
    # the recorded SLO's name is not one (not printable): the defaults stand in for it
    assert "server (ttft ≤ 2000 ms" in r.stdout and TERMINAL_WORD not in r.stdout


def test_compare_prints_hostile_labels_names_and_messages_as_escapes(tmp_path):
    t = _hostile_results(tmp_path / "t", scale=0.5)
    b = _hostile_results(tmp_path / "b", label="plain")
    write_rows(tmp_path / "t", [{**make_row(TERMINAL_LABEL, TERMINAL_WORD, 64, 8, 1, [5.0] * 3, [20.0] * 3),
                                 "device_name": TERMINAL_LABEL}])
    r = call_cli("compare", t, b, "--points", "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    assert terminal_safe(r.stdout) and terminal_safe(r.stderr), (r.stdout, r.stderr)
    assert f"target   {printable(TERMINAL_LABEL)}: {printable(TERMINAL_LABEL)}, float32" in r.stdout
    assert "measured on the target only" in r.stdout


@pytest.mark.parametrize("command", ["summary", "compare"])
def test_an_slo_name_a_terminal_would_act_on_is_refused_in_one_line(tmp_path, command):
    d = write_rows(tmp_path / "res", study_rows("cpu", 1.0))
    sides = [d] if command == "summary" else [d, d + ":cpu"]
    r = call_cli(command, *sides, "--slo", f"{TERMINAL_WORD}:100:10")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and terminal_safe(r.stderr), r.stderr
    assert "holds a character that is not printable" in r.stderr


@pytest.mark.parametrize("command", ["summary", "compare"])
def test_an_slo_name_that_is_not_utf8_is_refused_before_any_work(tmp_path, command):
    """Bytes that are not UTF-8 on the command line reach Python as surrogate escapes, which no UTF-8
    terminal can print: refused in one line before the results are read, nothing printed or written."""
    d = write_rows(tmp_path / "res", study_rows("cpu", 1.0))
    sides = [d] if command == "summary" else [d, d + ":cpu"]
    csv_dir = tmp_path / "csv"
    r = run_cli(command, *sides, "--slo", "fa\udcffst:100:10", "--csv", str(csv_dir))  # argv gets the byte 0xff
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'fa\\udcffst' is not UTF-8 text" in lines[0], r.stderr
    assert not csv_dir.exists()


def test_a_lock_holders_host_name_is_shown_as_escapes(tmp_path, monkeypatch):
    import socket

    from perfkit.results import lock

    params, out = write_params(tmp_path / "p.yaml"), str(tmp_path / "out")
    monkeypatch.setattr(socket, "gethostname", lambda: TERMINAL_WORD)
    with lock(out):
        r = call_cli("sweep", params, "--out", out)
    assert r.returncode == 2 and "is in use by another sweep" in r.stderr
    assert terminal_safe(r.stderr) and f"on host {printable(TERMINAL_WORD)} since" in r.stderr, r.stderr


@pytest.mark.slow  # builds and saves a tiny model
def test_a_checkpoint_folders_name_is_shown_as_escapes(tmp_path, monkeypatch):
    import torch

    from perfkit.models import build_model

    ckpt = str(tmp_path / TERMINAL_LABEL)
    build_model("tiny-llama3-8b", torch.float32, "cpu", "sdpa", seed=0).save_pretrained(ckpt, safe_serialization=True)
    out = str(tmp_path / "out")
    r = call_cli("run", "--model", ckpt, "--input-len", "4", "--output-len", "2", "--warmup", "0", "--repeats", "1",
                 "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    # stderr: progress bars redraw their line with a carriage return; nothing else may reach it raw
    assert terminal_safe(r.stdout) and terminal_safe(r.stderr.replace("\r", "")), (r.stdout, r.stderr)
    assert f"building {printable(ckpt)} (float32)" in r.stderr and printable(ckpt) in r.stdout
    params = write_params(tmp_path / "p.yaml", models=[ckpt])
    fake_measuring(monkeypatch)
    for args in (("--dry-run",), ()):  # the plan, the progress bar's "building ..." and the outcome
        r = call_cli("sweep", params, "--out", str(tmp_path / "sweep"), *args)
        assert r.returncode == 0, r.stderr
        assert terminal_safe(r.stdout) and terminal_safe(r.stderr.replace("\r", "")), (r.stdout, r.stderr)
        assert printable(ckpt) in r.stdout
