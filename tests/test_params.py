import os

import pytest
import yaml
from helpers import ROOT, call_cli, params_dict, write_params

from perfkit.errors import UsageError
from perfkit.params import load_params


def test_shipped_params_files_are_valid(tmp_path):
    smoke = load_params(os.path.join(ROOT, "params", "smoke.yaml"))
    assert smoke.models == ("tiny-llama3-8b", "tiny-llama2-13b", "tiny-mistral-7b")
    assert all(s.device == "cpu" for s in smoke.systems)
    study = load_params(os.path.join(ROOT, "params", "study.yaml"))
    assert study.models == ("llama3-8b", "llama2-13b", "mistral-7b")
    assert study.input_lens == (128, 512, 1024, 2048) and study.output_lens == (128, 512, 1024)
    assert study.batch_sizes == tuple(2 ** k for k in range(9))
    assert study.systems[0].device == "cuda" and study.systems[0].dtype == "bfloat16"
    check = load_params(os.path.join(ROOT, "params", "gpu-check.yaml"))
    assert "llama2-13b" in check.models
    oom = load_params(os.path.join(ROOT, "params", "gpu-check-oom.yaml"))
    assert oom.models == ("llama2-13b",) and max(oom.batch_sizes) == 96 and oom.min_gain is None
    import glob

    from helpers import load_shipped

    for path in glob.glob(os.path.join(ROOT, "params", "*.yaml")):  # every shipped file loads
        assert load_shipped(path, tmp_path).systems, path


def test_defaults_and_normalisation(tmp_path):
    d = params_dict(grid={"input_lens": [32, 8], "output_lens": [4], "batch_sizes": [4, 1, 2]})
    del d["warmup"], d["repeats"], d["seed"], d["search"], d["name"]
    d["systems"] = [{"label": "x", "dtype": "bf16"}]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(d))
    p = load_params(path)
    assert (p.name, p.warmup, p.repeats, p.seed, p.min_gain, p.patience) == ("mine", 1, 3, 0, 0.03, 1)
    assert p.input_lens == (8, 32) and p.batch_sizes == (1, 2, 4)  # the search climbs in ascending order
    assert p.systems[0].dtype == "bfloat16" and p.systems[0].backend == "hf-loop"


BAD = [
    # (change to the params, the key named, a word of the message)
    (lambda d: d["search"].update(patience=0), "search.patience", "too small"),
    (lambda d: d["search"].update(patience="2"), "search.patience", "not an integer"),
    (lambda d: d["grid"].update(input_len=[8]), "grid.input_len", "did you mean 'input_lens'"),
    (lambda d: d.update(repeat=3), "repeat", "unknown key"),
    (lambda d: d.update(repeats="3"), "repeats", "not an integer"),
    (lambda d: d.update(warmup=True), "warmup", "not an integer"),
    (lambda d: d["grid"].update(batch_sizes=[]), "grid.batch_sizes", "empty"),
    (lambda d: d["grid"].update(input_lens=[16, 0]), "grid.input_lens[1]", "too small"),
    (lambda d: d["grid"].update(output_lens=[-4]), "grid.output_lens[0]", "too small"),
    (lambda d: d["grid"].update(output_lens=4), "grid.output_lens", "not a list"),
    (lambda d: d.update(models=["tiny-llama9"]), "models[0]", "unknown model"),
    (lambda d: d["systems"][0].update(backend="vllm"), "systems[0].backend", "hf-loop"),
    (lambda d: d["systems"][0].update(dtype="int3"), "systems[0].dtype", "float32"),
    (lambda d: d["systems"][0].update(device="tpu"), "systems[0].device", "cpu or cuda"),
    (lambda d: d["systems"].append(dict(d["systems"][0])), "systems[1].label", "used twice"),
    (lambda d: d["grid"].update(input_lens=[4000], output_lens=[200]), "grid", "context of 4096"),
    (lambda d: d.update(search={"min_gain": 3}), "search.min_gain", "fraction"),
    (lambda d: d.pop("grid"), "grid", "missing"),
    (lambda d: d.update(seed=2**70), "seed", "too large"),
    (lambda d: (d["systems"][0].update(backend="static"), d["grid"].update(output_lens=[2, 4]),
                d.update(derive_output_lens=True)), "derive_output_lens", "static backend"),
]


@pytest.mark.parametrize("change, key, words", BAD)
def test_each_problem_names_file_key_and_expectation(tmp_path, change, key, words):
    d = params_dict()
    change(d)
    path = str(tmp_path / "bad.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(d, f)
    with pytest.raises(UsageError) as err:
        load_params(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert words in msg and "expected" in msg and "\n" not in msg


def test_beyond_context_can_be_skipped(tmp_path):
    path = write_params(tmp_path / "p.yaml", grid={"input_lens": [16, 4000], "output_lens": [4, 200],
                                                   "batch_sizes": [1]}, beyond_context="skip")
    p = load_params(path)
    assert p.output_lens_for("tiny-llama2-13b", 4000) == (4,)
    assert p.output_lens_for("tiny-llama2-13b", 16) == (4, 200)


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.yaml: no such file, expected a params YAML file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a, b\ngrid: {")
    with pytest.raises(UsageError, match=r"bad\.yaml: not valid YAML at line \d+ .*expected a YAML mapping"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match=r"list\.yaml: \(top level\): is a list, expected a mapping"):
        load_params(listy)


def test_cli_bad_params_is_one_line_exit_2_and_writes_nothing(tmp_path):
    d = params_dict()
    d["grid"]["input_len"] = d["grid"].pop("input_lens")
    path = str(tmp_path / "typo.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(d, f)
    out = tmp_path / "out"
    r = call_cli("sweep", path, "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "grid.input_len" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = call_cli("sweep", str(tmp_path / "missing.yaml"), "--out", str(out))
    assert r.returncode == 2 and "missing.yaml: no such file" in r.stderr and not out.exists()
