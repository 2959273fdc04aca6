"""Careless or hostile input to a params file or a flag is refused in one line, at once, before any work:
keys given twice, numbers that are not finite, counts beyond any sensible sweep, alias bombs, grids too
large to be meant (unless asked for), and a dry run that answers at once for any grid."""

import os
import time

import pytest
import yaml
from helpers import call_cli, params_dict, write_params
from hostile_yaml import BASE, HOSTILE

from perfkit.errors import UsageError, shown
from perfkit.params import DEFAULT_MAX_POINTS, load_params


def _write(tmp_path, text, name="h.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _one_line(message: str) -> str:
    lines = message.strip().splitlines()
    assert len(lines) == 1, message[:2000]
    assert "Traceback" not in message
    return lines[0]


# ---- every hostile file, every reader ----------------------------------------------------------------

@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_file_is_refused_at_once_in_one_short_line(tmp_path, name):
    text, fragment = HOSTILE[name]
    path = _write(tmp_path, text)
    t = time.perf_counter()
    with pytest.raises(UsageError) as err:
        load_params(path)
    seconds = time.perf_counter() - t
    message = _one_line(str(err.value))
    assert message.startswith(f"{path}: ") and fragment in message, message
    assert len(message) < len(path) + 400, message
    assert seconds < 1.0, f"{name}: {seconds:.2f} s"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_file_is_refused_by_a_dry_run_and_a_sweep(tmp_path, name):
    text, fragment = HOSTILE[name]
    path = _write(tmp_path, text)
    out = tmp_path / "out"
    for extra in (["--dry-run"], []):
        r = call_cli("sweep", path, "--out", out, "--no-progress", *extra)
        assert r.returncode == 2 and fragment in _one_line(r.stderr), r.stderr[:2000]
    assert not out.exists()


def test_the_shipped_params_files_pass_every_new_rule(tmp_path):
    import glob

    from helpers import ROOT

    from perfkit.params import parse_params, read_yaml
    from perfkit.tiny_checkpoint import write_checkpoint

    for path in glob.glob(os.path.join(ROOT, "params", "*.yaml")):
        data = read_yaml(path)
        # serve-demo.yaml names the checkpoint `make serve-demo` writes under build/ first: one written here
        for i, model in enumerate(data["models"]):
            if model.startswith("build/"):
                data["models"][i] = write_checkpoint(str(tmp_path / os.path.basename(model)))
        p = parse_params(data, source=path)
        assert p.point_count() <= (p.max_points or DEFAULT_MAX_POINTS), path


# ---- keys given twice ----------------------------------------------------------------------------------

def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    path = _write(tmp_path, BASE + "seed: 1\nrepeats: 5\n")
    with pytest.raises(UsageError, match=r"repeats: given twice in one mapping \(lines 7 and 9\), expected each key"):
        load_params(path)


def test_merge_keys_may_still_override_what_they_merge(tmp_path):
    text = BASE.replace("systems:\n  - {label: cpu, backend: hf-loop, dtype: float32, device: cpu, "
                        "attn_implementation: sdpa}\n",
                        "systems:\n  - &cpu {label: a, dtype: float32}\n  - {<<: *cpu, label: b}\n")
    p = load_params(_write(tmp_path, text))
    assert [s.label for s in p.systems] == ["a", "b"]


# ---- bounds: the edge is accepted, one past it refused ---------------------------------------------------

def test_the_bounds_themselves_are_accepted(tmp_path):
    d = params_dict(warmup=100, repeats=1000, search={"min_gain": 0.0, "patience": 100}, max_minutes=1e6,
                    grid={"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 1 << 20]})
    p = load_params(write_params(tmp_path / "edge.yaml", **{k: v for k, v in d.items()}))
    assert (p.warmup, p.repeats, p.patience, p.batch_sizes[-1]) == (100, 1000, 100, 1 << 20)


@pytest.mark.parametrize("change, key", [
    (dict(warmup=-1), "warmup"), (dict(repeats=0), "repeats"), (dict(search={"patience": 0}), "search.patience"),
    (dict(max_points=0), "max_points"), (dict(max_minutes=0), "max_minutes"),
    (dict(search={"min_gain": float("nan")}), "search.min_gain"), (dict(max_minutes=float("inf")), "max_minutes"),
])
def test_one_past_a_bound_below_is_refused_too(tmp_path, change, key):
    with pytest.raises(UsageError, match=rf": {key}: "):
        load_params(write_params(tmp_path / "low.yaml", **change))


def test_shown_is_bounded_for_anything():
    import sys

    deep = []
    for _ in range(50):
        deep = [deep] * 9
    assert len(shown(deep)) <= 60 and len(shown("x" * 10**6)) <= 60 and len(shown({i: i for i in range(10**5)})) <= 60
    assert shown(float("nan")) == "nan" and shown("a\nb") == "'a\\nb'" and shown(3) == "3"
    limit = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(5000)
        big = 10**4500
    finally:
        sys.set_int_max_str_digits(limit)
    assert shown(big) == "<a int>"  # past the digit limit repr raises; shown does not


# ---- grid size -------------------------------------------------------------------------------------------

def _grid_of(n_inputs, n_outputs, batches):
    return {"input_lens": list(range(1, n_inputs + 1)), "output_lens": list(range(1, n_outputs + 1)),
            "batch_sizes": list(range(1, batches + 1))}


def test_a_large_grid_is_refused_unless_asked_for(tmp_path):
    grid = _grid_of(100, 10, 6)  # 6,000 points: past the default cap
    path = write_params(tmp_path / "big.yaml", grid=grid)
    with pytest.raises(UsageError) as err:
        load_params(path)
    message = str(err.value)
    assert "grid: 6,000 points" in message and "max_points 5,000" in message
    assert "max_points: 6000" in message and "--yes" in message
    assert load_params(path, yes=True).point_count() == 6000
    assert load_params(write_params(tmp_path / "allowed.yaml", grid=grid, max_points=6000)).max_points == 6000
    r = call_cli("sweep", path, "--dry-run", "--out", tmp_path / "out")
    assert r.returncode == 2 and "--yes" in _one_line(r.stderr)
    r = call_cli("sweep", path, "--dry-run", "--yes", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "to measure: 1,000; up to 5,000 more" in r.stdout and not (tmp_path / "out").exists()


def test_point_count_follows_the_beyond_context_rule(tmp_path):
    # tiny-llama2-13b's context is 4096: I = 4000 keeps only O = 8 of (8, 200)
    p = load_params(write_params(tmp_path / "ctx.yaml", beyond_context="skip",
                                 grid={"input_lens": [16, 4000], "output_lens": [8, 200], "batch_sizes": [1, 2]}))
    assert p.point_count() == (2 + 1) * 2


def test_a_larger_grid_than_the_file_allows_is_refused_in_the_library_too(tmp_path):
    from perfkit.sweep import plan, run_sweep

    path = write_params(tmp_path / "small-cap.yaml", max_points=2)  # the grid has 3 points
    for call in (lambda: plan(path, out_dir=str(tmp_path / "o")), lambda: run_sweep(path, out_dir=str(tmp_path / "o"))):
        with pytest.raises(UsageError, match="3 points .* exceed max_points 2"):
            call()
    assert not (tmp_path / "o").exists()


def test_a_grid_past_the_largest_any_file_may_have_is_refused_even_with_yes(tmp_path):
    # 100 input lengths x 100 output lengths x 11 batch sizes = 110,000 points: more than MAX_POINTS
    from perfkit.params import MAX_POINTS
    from perfkit.sweep import plan, run_sweep

    path = write_params(tmp_path / "huge.yaml", models=["tiny-mistral-7b"], grid=_grid_of(100, 100, 11))
    for call in (lambda: plan(path, out_dir=str(tmp_path / "out"), yes=True),
                 lambda: run_sweep(path, out_dir=str(tmp_path / "out"), yes=True, progress=False)):
        with pytest.raises(UsageError, match=f"110,000 points .* more than one sweep can take, expected at most "
                                             f"{MAX_POINTS:,}"):
            call()
    r = call_cli("sweep", path, "--dry-run", "--yes", "--out", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "more than one sweep can take" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_dry_run_of_the_largest_grid_lists_and_counts_every_point(tmp_path):
    # 100 x 100 x 10 = 100,000 points, MAX_POINTS itself: enumerated, listed in part, counted in full
    path = write_params(tmp_path / "big.yaml", models=["tiny-mistral-7b"], grid=_grid_of(100, 100, 10))
    r = call_cli("sweep", path, "--dry-run", "--yes", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) < 520
    assert "... and 99,500 more points" in r.stdout
    assert "pass 1: 0 done, 10,000 to measure" in r.stdout
    assert "up to 90,000 more if the batch searches keep gaining" in r.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragment", [
    (["run", "--model", "m" * 100_000, "--input-len", "8", "--output-len", "2"], "unknown model 'mmmm"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "--seed", "9" * 30],
     "at most 19 digits"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "9" * 5000, "--output-len", "2"], "expected an integer"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "--dtype", "d" * 10**5],
     "unknown dtype 'dddd"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "--backend", "b" * 10**5],
     "unknown backend 'bbbb"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "--device", "x" * 10**5],
     "unknown device 'xxxx"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "--repeats", "1001"],
     "--repeats from 1 to 1000"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "--batch", "2000000"],
     "--batch must be at most 1,048,576"),
    (["run", "--model", "tiny-llama3-8b", "--input-len", "8", "--output-len", "2", "u" * 10**5],
     "unrecognized arguments"),
    (["sweep", "params/smoke.yaml", "--system", "s" * 10**5, "--dry-run"], "no system labelled 'ssss"),
    (["sweep", "params/smoke.yaml", "--max-minutes", "nan"], "expected a positive number of minutes"),
])
def test_flag_values_are_shown_bounded(tmp_path, args, fragment):
    r = call_cli(*args)
    line = _one_line(r.stderr)
    assert r.returncode == 2 and fragment in line and len(line) < 400, line[:1000]


def test_every_params_value_is_checked_before_it_is_formatted(tmp_path):
    # The bomb behind every top-level key, in one go: each refused at once with a short message.
    for key in ("name", "models", "systems", "grid", "warmup", "repeats", "seed", "search", "derive_output_lens",
                "beyond_context", "max_minutes", "max_points", "slos"):
        d = params_dict()
        d[key] = "BOMB"
        text = yaml.safe_dump(d).replace("BOMB", HOSTILE["alias bomb in seed"][0].split("seed: ", 1)[1].strip())
        path = _write(tmp_path, text, f"{key}.yaml")
        t = time.perf_counter()
        with pytest.raises(UsageError) as err:
            load_params(path)
        assert time.perf_counter() - t < 1.0 and len(str(err.value)) < len(path) + 400, (key, str(err.value)[:500])


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_params_path_that_is_no_regular_file_is_refused_without_reading_it(tmp_path):
    # /dev/zero would be read for ever; a FIFO would block the open until a writer came
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        with pytest.raises(UsageError, match="is not a regular file"):
            load_params(path)
