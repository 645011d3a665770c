"""The package's import graph has no cycle and no import from a lower layer to a higher one.

The graph is read with `ast`, nothing is imported. It counts every `import` of a
`raydistill` module wherever it stands: at module level, inside a function (a lazy import
still couples the two modules: the lower one cannot be used, or tested, without the higher
one), and under `if TYPE_CHECKING:` too (an annotation that names a type of the module
that calls you is still a cycle in the design, the way the issue counted it).

LAYERS is the one table of the layering, top to bottom, following the data flow of
docs/DESIGN: config -> data -> stages (each in a window) -> ledger -> results -> report. A
module may import from its own layer (without a cycle) and from any layer below it.
A module is placed by its longest prefix in the table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "raydistill"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # what a person or another tool enters by: prints, parses argv, adapts transformers.Trainer
    ("entry", ("cli", "console", "console_log", "integrations")),
    # reads finished run and sweep directories
    ("report", ("report",)),
    # drives the stages: one run, one measured command, a sweep of trials
    ("orchestration", ("run", "measure", "search")),
    # the measured stages: torch code, and the tracking API for stages a user runs himself
    ("stages", ("distill", "tracking")),
    # Ray actors (samplers, ledger, windows); the data the stages read; pre-flight plans
    ("services", ("cluster", "data", "plan", "memory", "memory_estimate", "local_models",
                  "engine_choice")),
    # the ledger's rows turned into the results table, its seed metrics, Pareto sets
    ("results", ("results", "equal_quality", "pareto")),
    # the frozen experiment config and its strict loader
    ("config", ("config", "local_names", "strict")),
    # energy: sources, samples, integration, ledger logic, footprint (pure)
    ("energy", ("energy",)),
    # pure helpers every layer may use
    ("core", ("errors", "io", "intervals", "proportions", "units", "cache_memory",
              "architectures", "__init__")),
)


def module_names(root: Path) -> dict[str, Path]:
    """'pkg.sub.mod' -> file, for every .py file under `root` (a package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that `import name` loads from the package (a name inside it drops off)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, module: str, is_package: bool, top: str,
             modules: dict[str, Path]) -> Iterable[str | None]:
    if isinstance(node, ast.Import):
        return [_owner(a.name, modules) for a in node.names if a.name.split(".")[0] == top]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        full = ".".join(base + ([node.module] if node.module else []))
    else:
        full = node.module or ""
    if full.split(".")[0] != top:
        return []
    # `from pkg.sub import mod` imports the module pkg.sub.mod; `from pkg.mod import name` pkg.mod
    return [_owner(f"{full}.{a.name}" if f"{full}.{a.name}" in modules else full, modules)
            for a in node.names]


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}, within the package."""
    modules = module_names(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, module, path.name == "__init__.py", root.name,
                                   modules):
                if target and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer_of(module: str, layers=LAYERS) -> int:
    """Index of the module's layer (0 = top), by the longest prefix the table names."""
    parts = module.split(".")[1:] or ["__init__"]
    best, depth = None, 0
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            p = prefix.split(".")
            if parts[:len(p)] == p and len(p) > depth:
                best, depth = i, len(p)
    if best is None:
        raise ValueError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def upward_imports(graph: dict[str, dict[str, int]], layers=LAYERS) -> list[str]:
    """'a (layer) -> b (layer), line n' for every import of a higher layer's module."""
    out = []
    for module, edges in sorted(graph.items()):
        mine = layer_of(module, layers)
        for target, line in sorted(edges.items()):
            theirs = layer_of(target, layers)
            if theirs < mine:
                out.append(f"{module} ({layers[mine][0]}) -> {target} ({layers[theirs][0]}), "
                           f"line {line}")
    return out


def test_no_import_cycle():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles (break each by moving the shared part down):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_upward_import():
    found = upward_imports(import_graph(PACKAGE))
    assert not found, "imports from a lower layer to a higher one:\n" + "\n".join(found)


def test_every_module_has_a_layer():
    for module in import_graph(PACKAGE):
        layer_of(module)


# ---- the checker on a package made for it ---------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "fake" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "fake"


FAKE_LAYERS = (("top", ("app",)), ("middle", ("svc",)), ("bottom", ("core",)))


def test_checker_reports_a_cycle_and_an_upward_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "app.py": "from fake import svc\n",
        "svc/__init__.py": "",
        # a cycle through a function-level import and a relative one
        "svc/a.py": "def f():\n    from fake.svc.b import g\n    return g\n",
        "svc/b.py": "from . import a\n",
        # an upward import hidden in a function: core reaches up to the app
        "core.py": "import os\n\n\ndef h():\n    import fake.app\n    return fake.app\n",
    })
    graph = import_graph(root)
    assert graph["fake.svc.a"] == {"fake.svc.b": 2}
    assert cycles(graph) == [["fake.svc.a", "fake.svc.b"]]
    up = upward_imports(graph, (*FAKE_LAYERS, ("init", ("__init__",))))
    assert up == ["fake.core (bottom) -> fake.app (top), line 5"]


def test_checker_counts_type_checking_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from fake.b import B\n",
        "b.py": ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                 "    from fake.a import A\n"),
    })
    assert cycles(import_graph(root)) == [["fake.a", "fake.b"]]


def test_checker_accepts_a_clean_package(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "", "app.py": "from fake.core import x\nimport json\n",
        "svc.py": "from fake import core\n", "core.py": "x = 1\n",
    })
    graph = import_graph(root)
    assert cycles(graph) == []
    assert upward_imports(graph, (*FAKE_LAYERS, ("init", ("__init__",)))) == []


def test_a_module_outside_the_table_is_named():
    with pytest.raises(ValueError, match=r"fake\.unknown is in no layer"):
        layer_of("fake.unknown", FAKE_LAYERS)
