"""The package's import graph, read from the source (ast): no module imports another that imports
it back, directly or around a loop (imports inside functions and under TYPE_CHECKING count: a
loop postponed is still a loop); no module takes an underscore name from another (a private name
is the module's own business: what others use is public); the figures draw without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO

PACKAGE = REPO / "heimer_mlflow"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path):
    """(imported module, name or None, line) for every import of this package in ``path``: a
    ``from X import name`` names the submodule X.name when there is one, else X."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "heimer_mlflow":
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            if base.split(".")[0] != "heimer_mlflow":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule, None, node.lineno) if submodule in MODULES else (base, alias.name, node.lineno)


def _graph() -> dict[str, set[str]]:
    return {module: {target for target, _, _ in _imports(module, path) if target in MODULES and target != module}
            for module, path in MODULES.items()}  # fmt: skip


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_the_imports_it_judges():
    """Guards the two tests below against passing on an empty graph."""
    graph = _graph()
    assert "heimer_mlflow.cohort.table" in graph["heimer_mlflow.layouts"]
    assert "heimer_mlflow.figures.plan" in graph["heimer_mlflow.figures"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("folder", ["heimer_mlflow", "tests", "benchmarks"])
def test_no_underscore_names_taken_from_another_module(folder):
    taken = []
    for path in sorted((REPO / folder).rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for target, name, line in _imports(module, path):
            # `_` is gettext's marker for text to translate (heimer_mlflow.i18n), public by convention
            if name and name.startswith("_") and not name.startswith("__") and name != "_" and target != module:
                taken.append(f"{path.relative_to(REPO)}:{line} takes {name} from {target}")
    assert taken == []


def _reach_ins(path: Path):
    """``module._name`` where ``module`` is a module of this package bound by an import."""
    tree = ast.parse(path.read_text(), str(path))
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound.update({(a.asname or a.name): a.name for a in node.names if a.name.startswith("heimer_mlflow")})
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("heimer_mlflow") and not node.level:
            bound.update({(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in MODULES})  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                yield f"{path.relative_to(REPO)}:{node.lineno} reads {bound[node.value.id]}.{node.attr}"


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_tests_read_no_private_names_of_a_module(folder):
    assert [found for path in sorted((REPO / folder).rglob("*.py")) for found in _reach_ins(path)] == []


def test_the_figures_draw_without_torch():
    """figures (the brain maps' head mask included) import no torch: a report can be re-rendered
    on a host without it."""
    code = "import sys, heimer_mlflow.figures, heimer_mlflow.cohort.preprocessing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_the_old_module_paths_are_the_moved_modules():
    """Demo models pickled before the demo package existed name their class heimer_mlflow.nets.DemoCNN:
    unpickling looks it up by that path, in a fresh interpreter."""
    code = ("import io, pickle, sys\n"
            "found = pickle.Unpickler(io.BytesIO()).find_class('heimer_mlflow.nets', 'DemoCNN')\n"
            "import heimer_mlflow.demo.nets, heimer_mlflow.synthetic, heimer_mlflow.training\n"
            "assert found is heimer_mlflow.demo.nets.DemoCNN\n"
            "assert sys.modules['heimer_mlflow.synthetic'] is sys.modules['heimer_mlflow.demo.synthetic']\n"
            "assert heimer_mlflow.training is sys.modules['heimer_mlflow.demo.training']\n"
            "print('ok')")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "ok", out.stderr


def _deferred_imports(path: Path):
    """(line, imported module) for every import inside a function of ``path``, and the modules the
    file imports at its top."""
    tree = ast.parse(path.read_text(), str(path))
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            top.add(node.module)
    inner = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    inner += [(node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    inner.append((node.lineno, node.module))
    return sorted(set(inner)), top


def test_an_import_inside_a_function_defers_something():
    """An import goes inside a function only to put off loading a library until it is needed
    (matplotlib, WeasyPrint, nilearn, FastAPI, ...): never for the standard library, which costs
    nothing, and never for a library the module already imports at its top."""
    pointless = []
    for module, path in MODULES.items():
        inner, top = _deferred_imports(path)
        for line, name in inner:
            root = name.split(".")[0]
            if root in sys.stdlib_module_names or name in top:
                pointless.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert pointless == []
