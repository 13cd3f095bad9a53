"""The shape of the code: the import graph of dvn/ and dvn_kernels/ has no cycle and points one
way (bench -> dvn -> dvn_kernels), deployment never imports training or results, and one
function renames files into place."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dvn", "dvn_kernels")


def _modules() -> dict[str, str]:
    """Module name -> file, for every .py file of the packages (a package is its __init__)."""
    out = {}
    for pkg in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, f)
    return out


def _imports(name: str, file: str, modules: dict[str, str]) -> set[str]:
    """Every module ``name`` imports anywhere in its file (top level, functions, TYPE_CHECKING
    blocks), relative imports resolved: ``from X import Y`` is X.Y when that is a module,
    else X."""
    is_pkg = os.path.basename(file) == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    with open(file, encoding="utf-8") as f:
        tree = ast.parse(f.read(), file)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                assert node.level <= len(parts), \
                    f"{file}:{node.lineno}: relative import beyond the top-level package"
                base = ".".join(parts[:len(parts) - node.level + 1])
                assert base in modules, f"{file}:{node.lineno}: no module {base}"
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in modules else base)
    return out


def graph() -> dict[str, set[str]]:
    modules = _modules()
    edges = {}
    for name, file in modules.items():
        found = set()
        for target in _imports(name, file, modules):
            # ``import a.b.c`` also names a.b.c's closest known module
            while target and target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                found.add(target)
            elif target.split(".")[0] == "bench":
                found.add(target)
        edges[name] = found
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as a list of modules, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m in edges and m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_graph_sees_lazy_and_type_checking_imports():
    edges = graph()
    assert "dvn.model.backbones" in edges["dvn.checkpoint"]
    assert "dvn.deploy.shared" in edges["dvn.deploy.deployment"]
    # a lazy import inside a function counts (dvn.cli imports the trainer in one)
    assert "dvn.training.trainer" in edges["dvn.cli"]


def test_no_import_cycle():
    cycle = _cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_imports_point_one_way():
    for name, targets in graph().items():
        for t in targets:
            top, mine = t.split(".")[0], name.split(".")[0]
            assert top != "bench", f"{name} imports {t}: dvn and dvn_kernels never import bench"
            if mine == "dvn_kernels":
                assert top != "dvn", f"{name} imports {t}: dvn_kernels never imports dvn"


def test_deployment_never_imports_training_or_results():
    for name, targets in graph().items():
        if name.startswith(("dvn.deploy", "dvn.serve")):
            bad = sorted(t for t in targets if t.startswith(("dvn.training", "dvn.results")))
            assert not bad, f"{name} imports {bad}: deployment depends on the model layer, " \
                            "the checkpoint format, runs and data only"


def _renames(path: str) -> list[int]:
    """Lines of ``path`` whose code (not strings or comments) calls os.replace / os.rename or
    makes a temporary file to rename."""
    import io
    import tokenize
    with open(path, encoding="utf-8") as f:
        names = [t for t in tokenize.generate_tokens(io.StringIO(f.read()).readline)
                 if t.type in (tokenize.NAME, tokenize.OP)]
    lines = []
    for i, t in enumerate(names):
        if t.string in ("mkstemp", "NamedTemporaryFile"):
            lines.append(t.start[0])
        elif (t.string in ("replace", "rename") and i >= 2 and names[i - 1].string == "."
              and names[i - 2].string == "os"):
            lines.append(t.start[0])
    return lines


def test_one_atomic_rename():
    """os.replace (and temporary files to rename) appear in dvn_kernels/files.py only."""
    found = []
    for top in ("dvn", "dvn_kernels", "bench", "scripts"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)
                if not f.endswith(".py") or rel == os.path.join("dvn_kernels", "files.py"):
                    continue
                found += [f"{rel}:{line}" for line in _renames(path)]
    assert not found, "files written without dvn_kernels.files.atomic_write: " + ", ".join(found)


def test_deployment_loads_without_training_or_results():
    """What Python actually loads for dvn infer / profile / serve (package __init__s too)."""
    import subprocess
    import sys
    code = ("import sys, dvn.deploy, dvn.deploy.commands, dvn.deploy.runs, dvn.deploy.onnx, "
            "dvn.serve, dvn.serve.command, dvn.serve.service, dvn.serve.inputs; "
            "print(sorted(m for m in sys.modules if m.startswith(('dvn.training', "
            "'dvn.results', 'bench'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
