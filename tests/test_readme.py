"""The README's shell blocks: the command lines that are cheap and need no GPU are run exactly as written
(with .venv/bin first on PATH, in a copy of the repository whose results/ the test fills with a tiny sweep
first); every other command line in them must match ALLOWED below, which says why it is not run here."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from helpers import CPU, ROOT, write_params

README = os.path.join(ROOT, "README.md")

# Command lines run as written (matched against the line as `normalise` spells it).
RUN = [
    r"^perfkit( --help)?$",
    r"^perfkit \S+ --help$",
    r"^perfkit (models|env)\b",
    r"^perfkit sweep\b.* --dry-run\b",  # lists the points, measures nothing (also for a GPU params file)
    r"^perfkit (summary|compare)\b",    # on results/ made first by a tiny sweep
]

# Every other command line: (pattern, why it is not run by this test). The first match counts.
ALLOWED = [
    (r"^make test(-fast)?\b", "the test suite itself: run from a test it would recurse"),
    (r"^make demo\b", "measures two systems and runs four notebooks, about 2 minutes on 2 cores; "
                      "tests/test_browser.py checks the pages it leaves in reports/, and CI runs it on its own"),
    (r"^make (setup|clean-venv)\b", "builds or deletes the .venv these tests run in"),
    (r"^make lab\b", "starts a JupyterLab server, which does not exit"),
    (r"^make (sweep|report|compare|reports)\b|^perfkit publish\b",
     "runs notebooks with papermill, tens of seconds each: tests/test_notebooks.py runs `perfkit publish` on "
     "tiny inputs"),
    (r"gpu-check\.sh", "needs CUDA: one GPU for about 10 minutes (its --cpu-trial rehearsal takes minutes)"),
    (r"--device cuda|--device=cuda", "needs CUDA"),
    (r"^perfkit sweep\b", "measures every point of its params file: minutes on a CPU, hours on a GPU for the "
                          "study (the --dry-run lines are run)"),
    (r"^perfkit run\b", "builds and measures a model, seconds even for a tiny one: tests/test_cli.py runs one"),
    (r"^perfkit import\b", "reads another tool's result files, which the README's paths only stand for: "
                           "tests/test_import.py imports the real ones (tests/fixtures/imports/)"),
    (r"^perfkit probe\b", "times the device for its --budget-s: tests/test_probe.py runs one with a short budget"),
    (r"^python3? benchmarks/", "a benchmark: interleaved repeats for minutes"),
]

# A line that sets up the shell for the lines after it in its block: run before each of them.
SETUP = r"^(\.|source) \S*bin/activate$"

SYNOPSIS = ("a synopsis with placeholders (UPPERCASE words such as PARAMS or RESULTS_DIR, [optional] parts, "
            "a|b choices), not a command line")


def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```sh (or bash, shell) fenced blocks."""
    return re.findall(r"^```(?:sh|bash|shell)[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S)


def command_lines(block: str) -> list[str]:
    """One entry per command: backslash continuations joined, blank and comment-only lines dropped."""
    lines, pending = [], ""
    for raw in block.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    if pending.strip():
        lines.append(pending.strip())
    return lines


def words(line: str) -> list[str]:
    """The command's words without its comment and without leading NAME=value assignments."""
    try:
        w = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote: the line is then classified on its plain words
        w = line.split(" #")[0].split()
    while w and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w[0]):
        w = w[1:]
    return w


def normalise(line: str) -> str:
    """`python -m perfkit`, `.venv/bin/perfkit` and the like spelled `perfkit`; the words joined by spaces."""
    w = words(line)
    if w and re.search(r"(^|/)python3?$", w[0]) and w[1:3] == ["-m", "perfkit"]:
        w = ["perfkit"] + w[3:]
    elif w and re.search(r"(^|/)perfkit$", w[0]):
        w = ["perfkit"] + w[1:]
    return " ".join(w)


def is_synopsis(line: str) -> bool:
    return any("[" in x or "|" in x or re.match(r"^[A-Z][A-Z0-9_]*(:\S*)?$", x) for x in words(line)[1:])


def classify(line: str) -> tuple[str, str | None]:
    """("setup", None), ("run", None), ("allowed", reason) or ("unknown", None)."""
    if re.search(SETUP, " ".join(words(line))):
        return "setup", None
    if is_synopsis(line):
        return "allowed", SYNOPSIS
    command = normalise(line)
    if any(re.search(p, command) for p in RUN):
        return "run", None
    for pattern, reason in ALLOWED:
        if re.search(pattern, command):
            return "allowed", reason
    return "unknown", None


def readme_blocks() -> list[list[str]]:
    with open(README, encoding="utf-8") as f:
        return [command_lines(block) for block in shell_blocks(f.read())]


def readme_commands() -> list[str]:
    return [line for block in readme_blocks() for line in block]


def test_the_classifier_on_a_made_up_readme():
    text = "\n".join([
        "```sh",
        ". .venv/bin/activate       # or prefix each command with .venv/bin/",
        "perfkit models --json        # the registry",
        "python -m perfkit sweep params/smoke.yaml \\",
        "    --dry-run",
        "                 # a comment continuing the one above",
        ".venv/bin/perfkit compare results/a:x results/b:y --csv out",
        "OMP_NUM_THREADS=1 make demo",
        "perfkit compare TARGET[:LABEL] BASELINE[:LABEL] [--csv DIR]",
        "perfkit run --model tiny-llama3-8b --input-len 8 --output-len 4 --device cuda",
        "perfkit sweep params/smoke.yaml",
        "rm -rf results",
        "```",
        "```",
        "perfkit models  # not a shell block: no language",
        "```",
    ])
    lines = [line for block in shell_blocks(text) for line in command_lines(block)]
    assert [classify(line)[0] for line in lines] == ["setup", "run", "run", "run", "allowed", "allowed", "allowed",
                                                     "allowed", "unknown"]
    assert lines[2] == "python -m perfkit sweep params/smoke.yaml      --dry-run"
    assert classify(lines[5])[1] == SYNOPSIS and classify(lines[6])[1] == "needs CUDA"
    assert "--dry-run lines are run" in classify(lines[7])[1]


def test_every_readme_command_is_run_or_allowed_with_a_reason():
    lines = readme_commands()
    assert lines, "README.md has no ```sh block with a command line"
    unknown = [line for line in lines if classify(line)[0] == "unknown"]
    assert not unknown, ("README.md command lines that this test neither runs nor allows (add a RUN pattern, or "
                         "an ALLOWED pattern with the reason it is not run): " + "; ".join(map(repr, unknown)))


def _results_dirs(lines):
    """{results/NAME: system labels it needs} for every results directory the lines name."""
    dirs = {}
    for line in lines:
        for w in words(line):
            m = re.match(r"^(results/[^:\s]+?)/?(?::([\w.+-]+))?$", w)
            if m:
                dirs.setdefault(m.group(1), set()).update([m.group(2)] if m.group(2) else [])
    return {d: labels or {os.path.basename(d)} for d, labels in dirs.items()}


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    # Each line to run, after the set-up lines before it in its block (`. .venv/bin/activate`).
    runs = []
    for block in readme_blocks():
        setup = []
        for line in block:
            kind = classify(line)[0]
            if kind == "setup":
                setup.append(line)
            elif kind == "run":
                runs.append((line, "\n".join(setup + [line])))
    lines = [line for line, _ in runs]
    if not lines:
        pytest.skip("README.md's shell blocks hold no command line cheap enough to run here")
    # A copy of the repository whose results/ and reports/ are the test's own: everything else is linked.
    repo = tmp_path / "repo"
    repo.mkdir()
    for entry in os.listdir(ROOT):
        if entry not in ("results", "reports"):
            os.symlink(os.path.join(ROOT, entry), repo / entry)
    (repo / "results").mkdir()
    (repo / "reports").mkdir()
    # The results they read, made first by a tiny sweep: one system per label named, two points each.
    from perfkit.sweep import run_sweep

    for rel, labels in sorted(_results_dirs(lines).items()):
        params = write_params(tmp_path / (os.path.basename(rel) + ".yaml"), name=os.path.basename(rel),
                              systems=[dict(CPU, label=label) for label in sorted(labels)],
                              grid={"input_lens": [8], "output_lens": [2], "batch_sizes": [1, 2]}, warmup=0)
        run_sweep(params, out_dir=str(repo / rel), progress=False)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    failed = []
    for line, script in runs:
        r = subprocess.run(["bash", "-e", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            failed.append(f"{line!r} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    assert not failed, "README.md command lines that fail:\n" + "\n".join(failed)
