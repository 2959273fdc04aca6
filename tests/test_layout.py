"""The architecture, checked: one command line, a core free of notebook machinery, params without torch,
no import cycles, and no module reaching into another's private names."""

import ast
import glob
import json
import os
import subprocess
import sys

from helpers import ROOT

CORE = os.path.join(ROOT, "perfkit")


def _package_files():
    """Every .py file of the package, subpackages included, relative to perfkit/ ("report/plots.py")."""
    out = []
    for folder, dirs, files in os.walk(CORE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [os.path.relpath(os.path.join(folder, f), CORE) for f in files if f.endswith(".py")]
    return sorted(out)


def _core_files():
    """The measuring core: every file of the package but the report package and the command line."""
    return [f for f in _package_files() if f != "cli.py" and not f.startswith("report" + os.sep)]


def _tree(path):
    return ast.parse(open(path, encoding="utf-8").read(), path)


def _walk(tree):
    """Every node at any depth (function-level imports are dependencies too), but those of `if TYPE_CHECKING:`
    bodies: imported for annotations only, never at run time."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _module_name(rel):
    """"report/plots.py" -> perfkit.report.plots; a package's __init__.py is the package."""
    parts = ["perfkit"] + rel[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(f): f for f in _package_files()}


def _imports(rel):
    """The modules a file of the package imports from, at run time (perfkit/`rel`)."""
    tree = _tree(os.path.join(CORE, rel))
    return {base for _, base, _, _ in _statements(tree, _module_name(rel), rel.endswith("__init__.py"))}


def _statements(tree, module="", is_package=False):
    """(node, module, [(name, bound as)], (name bound, to module) or None) of every import at run time,
    importlib's of a literal name included; a relative import is resolved against `module`. `import a.b` is
    (node, "a.b", [], ("a", "a")), `import a.b as c` (node, "a.b", [], ("c", "a.b")), `from a import b as c`
    (node, "a", [("b", "c")], None)."""
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.partition(".")[0]
                yield node, a.name, [], (a.asname, a.name) if a.asname else (root, root)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (module if is_package else module.rpartition(".")[0]).split(".")
                package = ".".join(package[:len(package) - node.level + 1])
                base = f"{package}.{base}" if base else package
            yield node, base, [(a.name, a.asname or a.name) for a in node.names], None
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            yield node, str(node.args[0].value), [], None  # importlib.import_module("perfkit.x")


def _import_graph():
    """{module: the perfkit modules it imports}: `from perfkit.x import y` depends on perfkit.x, and on
    perfkit.x.y where that is a module."""
    graph = {}
    for name, rel in MODULES.items():
        deps = set()
        for _, base, names, _ in _statements(_tree(os.path.join(CORE, rel)), name, rel.endswith("__init__.py")):
            deps.update(m for m in [base] + [f"{base}.{n}" for n, _ in names] if m in MODULES)
        deps.discard(name)  # a package's __init__ importing from itself
        graph[name] = deps
    return graph


def _cycles(graph):
    """One cycle [a, ..., a] per group of modules that import each other, through the group's first module."""
    reach = {v: _reachable(graph, v) for v in graph}
    groups = {frozenset(w for w in reach[v] if v in reach[w]) for v in graph if v in reach[v]}
    return sorted(_cycle_through(graph, min(g), g) for g in groups)


def _reachable(graph, start):
    seen, todo = set(), list(graph[start])
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo.extend(graph[v])
    return seen


def _cycle_through(graph, start, component):
    """The shortest way from `start` back to itself within `component`: [start, ..., start] (breadth first)."""
    came_from, frontier = {}, [start]
    while frontier:
        reached = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1] + [start]
                if w not in came_from:
                    came_from[w] = v
                    reached.append(w)
        frontier = reached


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _reaches_in(importer, dotted):
    """Whether `importer` takes a private name in `dotted` (perfkit.x._y, or perfkit.x._sub.z) from another
    module: a module's own names are its own, a package's private submodules its own and its submodules'."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        owner, name = ".".join(parts[:i]), parts[i]
        if _private(name):
            own = importer == owner or (".".join(parts[:i + 1]) in MODULES and importer.startswith(owner + "."))
            if not own:
                return True
        if ".".join(parts[:i + 1]) not in MODULES:
            return False  # past the module: the name's own attributes are not the module's
    return False


def _private_uses(tree, module="", is_package=False):
    """(line, perfkit.x._name) for each private name taken from another perfkit module: imported by name, or
    read as an attribute of a module (perfkit.x._name, alias._name where the alias names a perfkit module)."""
    found, aliases = [], {}
    for node, base, names, binding in _statements(tree, module, is_package):
        if base.partition(".")[0] != "perfkit":
            continue
        if binding:
            aliases[binding[0]] = binding[1]
        aliases.update((as_, f"{base}.{name}") for name, as_ in names if f"{base}.{name}" in MODULES)
        taken = [f"{base}.{name}" for name, _ in names] if names else [base]
        found += [(node.lineno, dotted) for dotted in taken if _reaches_in(module, dotted)]
    for node in _walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in aliases:
            owner = ".".join([aliases[value.id]] + chain)
            if owner in MODULES and _reaches_in(module, f"{owner}.{node.attr}"):
                found.append((node.lineno, f"{owner}.{node.attr}"))
    return sorted(set(found))


def _notebook_code(path):
    """The code cells of a notebook as one module (its imports hold for every later cell); IPython magics
    and shell lines left out."""
    cells = json.load(open(path, encoding="utf-8"))["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            lines += ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return ast.parse("\n".join(lines), path)


def test_only_the_cli_parses_arguments():
    """Domain modules hold no argparse: every flag lives in perfkit/cli.py."""
    offenders = [f for f in _core_files() if "argparse" in _imports(f)]
    assert offenders == []


def test_the_core_never_imports_the_report_package():
    """perfkit/report/ reads what the core writes; nothing in the core reaches into it (nor into plotting)."""
    banned = ("perfkit.report", "matplotlib", "seaborn", "papermill", "nbconvert", "nbformat", "IPython")
    offenders = {f: sorted(n for n in _imports(f) if n.startswith(banned))
                 for f in _core_files()}
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
    mains = [f for f in _package_files() if f not in ("__main__.py", "cli.py")
             and "__main__" in open(os.path.join(CORE, f), encoding="utf-8").read()]
    assert mains == []


def test_no_import_cycles_among_the_modules():
    """No module of perfkit imports (at any depth, lazily or not) one that imports it back: each layer
    stands on those below it. A package's __init__ importing its submodules is no cycle; a submodule
    importing the package's face (its __init__) back is."""
    cycles = [" -> ".join(c) for c in _cycles(_import_graph())]
    assert cycles == []


def test_no_private_name_is_taken_from_another_module():
    """A `_name` is its module's own: no other module, script, benchmark or notebook imports or reads one
    (what several need is public, under one name). Dunder names are no one's private."""
    files = [os.path.join(CORE, f) for f in _package_files()]
    for folder, pattern in (("scripts", "*.py"), ("benchmarks", "*.py"), ("notebooks", "*.ipynb")):
        files += sorted(glob.glob(os.path.join(ROOT, folder, pattern)))
    offences = []
    for path in files:
        rel = os.path.relpath(path, ROOT)
        if path.endswith(".ipynb"):
            uses = _private_uses(_notebook_code(path))
        elif path.startswith(CORE + os.sep):
            name = _module_name(os.path.relpath(path, CORE))
            uses = _private_uses(_tree(path), name, path.endswith("__init__.py"))
        else:
            uses = _private_uses(_tree(path))
        offences += [f"{rel}:{line}: {dotted}" for line, dotted in uses]
    assert offences == []
