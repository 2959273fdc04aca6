"""The architecture, checked: one command line, a core free of notebook machinery, params without torch."""

import ast
import os
import subprocess
import sys

from helpers import ROOT

CORE = os.path.join(ROOT, "perfkit")


def _core_modules():
    return sorted(f for f in os.listdir(CORE) if f.endswith(".py"))


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_cli_parses_arguments():
    """Domain modules hold no argparse: every flag lives in perfkit/cli.py."""
    offenders = [f for f in _core_modules() if f != "cli.py" and "argparse" in _imports(os.path.join(CORE, f))]
    assert offenders == []


def test_the_core_never_imports_the_report_package():
    """perfkit/report/ reads what the core writes; nothing in the core reaches into it (nor into plotting)."""
    banned = ("perfkit.report", "matplotlib", "seaborn", "papermill", "nbconvert", "nbformat", "IPython")
    offenders = {f: sorted(n for n in _imports(os.path.join(CORE, f)) if n.startswith(banned))
                 for f in _core_modules() if f != "cli.py"}
    assert {f: n for f, n in offenders.items() if n} == {}
    # the CLI imports the report package only inside `perfkit publish`
    cli_top = ast.parse(open(os.path.join(CORE, "cli.py"), encoding="utf-8").read()).body
    top_level = {getattr(n, "module", None) for n in cli_top if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("perfkit.report") for m in top_level)


def test_a_params_file_is_parsed_and_planned_without_torch():
    code = ("import sys\n"
            "from perfkit.params import load_params\n"
            "from perfkit.workload import Point, System\n"
            "p = load_params('params/study.yaml')\n"
            "print(len(p.models), 'torch' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "False", "False"]


def test_one_entry_point():
    """`perfkit` is the command; no module of the package carries a second `__main__` command line."""
    mains = [f for f in _core_modules() + [os.path.join("report", f) for f in os.listdir(os.path.join(CORE, "report"))]
             if f.endswith(".py") and f not in ("__main__.py", "cli.py")
             and "__main__" in open(os.path.join(CORE, f), encoding="utf-8").read()]
    assert mains == []
