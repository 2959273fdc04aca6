"""Files that are no regular files, and folders a walk could follow for ever or count twice.

Every file perfkit reads that someone else may have put there (run and probe records, point files,
comparisons.yaml, a checkpoint's files, notebooks) is opened as a regular file of bounded size: a FIFO, a
link to /dev/zero, a directory or a link loop in its place is named in one line and never read. Every walk
below a results root enters each directory once: a link loop ends, and a results directory reachable
twice (a link to it, a linked points/ folder, a linked point file) is read and counted once. The readers
that could wait for ever run in a subprocess with a timeout and an address-space limit (_guarded)."""

import json
import os
import resource
import subprocess
import sys

import pytest
from helpers import ROOT, call_cli, study_rows, write_rows
from hostile_files import SPECIAL, aliases, link_loops, write_every_special_file

import perfkit.report.publish as publish
from perfkit.results import load_results, load_runs

GUARD_S = 90  # far beyond what each command takes (a few seconds): past it, a read is waiting for ever


def _guarded(*args, timeout: float = GUARD_S) -> subprocess.CompletedProcess:
    """`python ARGS` that can neither hang the suite (a FIFO's open waits for ever) nor exhaust the machine (a
    read of /dev/zero stops at 4 GiB of address space, with a MemoryError)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    try:
        return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args} did not end within {timeout} s: a read that waits for ever")


def _remove(path) -> None:
    """Whatever a SPECIAL maker put at `path`, gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _warned(stderr: str, path: str, fragment: str) -> int:
    return sum(line.startswith(f"perfkit: warning: skipped {path}: ") and fragment in line
               for line in stderr.splitlines())


def test_every_reader_names_a_file_that_is_no_regular_file_and_reads_none(tmp_path):
    t = write_rows(tmp_path / "t", study_rows("cpu", 1.0))
    bad = write_every_special_file(t)
    r = _guarded("-m", "perfkit", "summary", t)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for path, fragment in bad:
        assert _warned(r.stderr, path, fragment) == 1, (path, fragment, r.stderr[-3000:])
    assert r.stdout.startswith(f"{t}: 6 points on ")


def test_a_comparisons_file_that_is_no_regular_file_is_refused_before_any_report(tmp_path):
    results = write_rows(tmp_path / "root" / "a", study_rows("cpu", 1.0))
    code = ("import sys, perfkit.report.publish as p\n"
            "def ran(*a, **k): raise AssertionError('a report was rendered')\n"
            "p._publish = ran\n"
            "from perfkit.errors import UsageError\n"
            "try:\n"
            "    p.publish_all(sys.argv[1], sys.argv[2])\n"
            "except UsageError as exc:\n"
            "    print(exc)\n")
    spec = os.path.join(os.path.dirname(results), "comparisons.yaml")
    for kind, make in SPECIAL.items():
        _remove(spec)
        fragment = make(spec)
        r = _guarded("-c", code, os.path.dirname(results), tmp_path / "reports")
        assert r.returncode == 0 and r.stdout.startswith(f"{spec}: ") and fragment in r.stdout, (kind, r)
        assert not os.path.exists(tmp_path / "reports"), kind


def test_a_walk_below_a_results_root_ends_at_link_loops(tmp_path):
    """Two links back up the tree: a walk that follows links without remembering where it has been would
    visit 2**40 paths. summary, load_runs and publish all's search for results directories each end."""
    root = tmp_path / "root"
    write_rows(root / "a", study_rows("cpu", 1.0))
    write_rows(root / "deeper" / "b", study_rows("gpu", 0.5))
    link_loops(root)
    r = _guarded("-m", "perfkit", "summary", root)
    assert r.returncode == 0 and r.stdout.startswith(f"{root}: 12 points on "), r.stderr[-2000:]
    code = ("import sys, json, perfkit.report.publish as p\n"
            "from perfkit.results import load_runs\n"
            "made = []\n"
            "p._publish = lambda notebook, name, reports, parameters, **kw: made.append(name) or name\n"
            "p.publish_all(sys.argv[1], sys.argv[2])\n"
            "print(json.dumps([made, sorted(r['run_id'] for r in load_runs(sys.argv[1]))]))\n")
    r = _guarded("-c", code, root, tmp_path / "reports")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == [["report-a-cpu", "report-b-gpu"], ["run-cpu", "run-gpu"]]


@pytest.mark.slow  # imports transformers in a subprocess: seconds
def test_a_checkpoint_file_that_is_no_regular_file_is_refused_before_it_is_opened(tmp_path):
    from perfkit.registry import REGISTRY

    ckpt = tmp_path / "ckpt"
    REGISTRY["tiny-llama3-8b"].config().save_pretrained(ckpt)
    code = ("import sys\n"
            "from perfkit.errors import UsageError\n"
            "from perfkit.models import resolve_model\n"
            "try:\n"
            "    resolve_model(sys.argv[1])\n"
            "except UsageError as exc:\n"
            "    print(exc)\n")
    weights = ckpt / "model.safetensors"
    for kind, make in SPECIAL.items():
        _remove(weights)
        fragment = make(str(weights))
        r = _guarded("-c", code, ckpt)
        assert r.returncode == 0 and f"checkpoint file {str(weights)!r}: " in r.stdout and fragment in r.stdout, \
            (kind, r)


# ---- one results directory reachable several ways is counted once ---------------------------------

@pytest.fixture
def aliased(tmp_path):
    """A results root holding a (6 points of cpu) and b (6 of gpu), with a reachable three more ways."""
    root = tmp_path / "root"
    a = write_rows(root / "a", study_rows("cpu", 1.0))
    write_rows(root / "b", study_rows("gpu", 0.5))
    aliases(root, a)
    return root


def test_a_results_directory_reachable_twice_is_counted_once(aliased):
    from perfkit.report.tables import headline

    df = load_results(aliased)
    assert len(df) == 12 and df.attrs["skipped_files"] == []
    assert sorted(r["run_id"] for r in load_runs(aliased)) == ["run-cpu", "run-gpu"]
    r = call_cli("summary", aliased)
    assert r.returncode == 0 and r.stdout.startswith(f"{aliased}: 12 points on "), r.stdout[:300]
    assert ": 6 points, " in headline(df) and ": 12 points" not in headline(df)

    from perfkit.results import find_files

    # each file under its own name, none under an alias
    assert all(os.sep + "a" + os.sep in f or os.sep + "b" + os.sep in f
               for f in find_files(str(aliased), ".parquet", "points"))


def test_publish_all_renders_each_results_directory_once(aliased, tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(publish, "_publish", lambda notebook, name, reports, parameters, **kw:
                        made.append((name, parameters["results_dir"])) or name)
    publish.publish_all(str(aliased), str(tmp_path / "reports"))
    assert [name for name, _ in made] == ["report-a-cpu", "report-b-gpu"]
    assert [os.path.basename(d) for _, d in made] == ["a", "b"]
