"""Service levels on the command line: `perfkit summary/compare --slo`, pareto.csv and slo.csv, params' slos."""

import csv
import json
import os

import pytest
from helpers import call_cli, study_rows, write_rows

# study_rows: ttft = 10·B·scale ms, tpot = (5 + B)·scale ms, O = 8, batches 1, 2, 4. At scale 1 ("slow"):
# B=1 ttft 10 tpot 6, B=2 ttft 20 tpot 7, B=4 ttft 40 tpot 9; output tok/s = 8B / e2e: 153.8, 231.9, 310.7.
TIGHT = "tight:25:6.5"  # the slow side meets it at B=1 only; the fast side (scale 0.5) at every batch


@pytest.fixture
def sides(tmp_path):
    return (write_rows(tmp_path / "fast", study_rows("fast", 0.5)),
            write_rows(tmp_path / "slow", study_rows("slow", 1.0)))


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_prints_and_writes_the_bounded_max_and_the_frontier(sides, tmp_path):
    out = tmp_path / "csv"
    r = call_cli("summary", sides[1], "--slo", TIGHT, "--slo", "never:1:1", "--csv", str(out))
    assert r.returncode == 0, r.stderr
    assert "tight (ttft ≤ 25 ms, tpot ≤ 6.5 ms)" in r.stdout and "none meets it" in r.stdout
    slo = _csv(out / "slo.csv")
    assert list(slo[0]) == ["system", "model", "input_len", "output_len", "slo", "ttft_ms_max", "tpot_ms_max",
                            "batch", "output_tok_s"]
    tight = [row for row in slo if row["slo"] == "tight"]
    assert len(tight) == 2 and all(row["batch"] == "1" for row in tight)
    assert float(tight[0]["output_tok_s"]) == pytest.approx(8 / 52 * 1000)
    assert all(row["batch"] == "" for row in slo if row["slo"] == "never")  # empty where none meets it
    pareto = _csv(out / "pareto.csv")
    assert list(pareto[0]) == ["system", "model", "input_len", "output_len", "batch", "interactivity_tok_s",
                               "output_tok_s"]
    # every batch trades interactivity for throughput here, so all three are on each model's frontier
    assert sorted(int(row["batch"]) for row in pareto if row["model"] == "tiny-llama2-13b") == [1, 2, 4]
    llama = sorted((float(row["interactivity_tok_s"]) for row in pareto if row["model"] == "tiny-llama2-13b"),
                   reverse=True)
    assert llama == pytest.approx([1000 / 6, 1000 / 7, 1000 / 9])


def test_summary_defaults_to_the_slos_the_sweep_recorded(sides):
    with open(os.path.join(sides[1], "runs", "run-slow.json")) as f:
        run = json.load(f)
    run["sweep"] = {"slos": [{"name": "recorded", "ttft_ms_max": 25.0, "tpot_ms_max": 6.5}]}
    with open(os.path.join(sides[1], "runs", "run-slow.json"), "w") as f:
        json.dump(run, f)
    r = call_cli("summary", sides[1])
    assert r.returncode == 0, r.stderr
    assert "recorded (ttft ≤ 25 ms" in r.stdout and "server" not in r.stdout
    r = call_cli("summary", sides[1], "--slo", "other:100:100")  # the command line replaces them
    assert "other (ttft" in r.stdout and "recorded" not in r.stdout


def test_compare_prints_the_bounded_max_ratio_and_writes_it(sides, tmp_path):
    out = tmp_path / "csv"
    r = call_cli("compare", sides[0], sides[1], "--slo", TIGHT, "--n-boot", "200", "--csv", str(out))
    assert r.returncode == 0, r.stderr
    assert "at a service level" in r.stdout and "at equal interactivity" in r.stdout
    rows = _csv(out / "slo.csv")
    assert {row["slo"] for row in rows} == {"tight"}
    first = rows[0]
    # baseline's best within the bound (B=1, 153.8 tok/s) over the target's (B=4: 32 / 51.5 ms)
    assert float(first["ratio"]) == pytest.approx((8 / 52) / (32 / 51.5))
    assert (first["target_batch"], first["baseline_batch"], first["verdict"]) == ("4", "1", "target better")
    assert _csv(out / "frontier.csv")


@pytest.mark.parametrize("bad", ["tight", "tight:25", "a:b:c", "x:-1:5", "x:nan:5", "x y:1:1"])
def test_a_bad_slo_is_one_line_and_exit_2(sides, bad):
    r = call_cli("summary", sides[1], "--slo", bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "NAME:TTFT_MS:TPOT_MS" in r.stderr


def test_params_file_slos_are_validated_and_kept(tmp_path):
    from helpers import write_params

    from perfkit.errors import UsageError
    from perfkit.params import load_params

    p = load_params(write_params(tmp_path / "p.yaml", slos=[{"name": "chat", "ttft_ms": 300, "tpot_ms": 40}]))
    assert [(s.name, s.ttft_ms_max, s.tpot_ms_max) for s in p.slos] == [("chat", 300.0, 40.0)]
    assert p.as_dict()["slos"] == ({"name": "chat", "ttft_ms_max": 300.0, "tpot_ms_max": 40.0},)
    with pytest.raises(UsageError, match="slos"):
        load_params(write_params(tmp_path / "q.yaml", slos=[{"name": "chat", "ttft_ms": -1, "tpot_ms": 40}]))
