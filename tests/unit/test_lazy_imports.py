"""Every `from raydistill.x import name` in the package names something x defines.

A lazy import (inside a function, run in a Ray worker) is not checked by importing the package:
when cluster/windows.py was split, `worker_devices` moved to cluster/devices.py and the student
loop's `from raydistill.cluster.windows import StageWindow, worker_devices` failed only inside
the Ray Train worker, at the first student of every run. Read with `ast`, nothing imported.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "raydistill"


def _source(module: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _defined(module: str) -> frozenset[str]:
    """Names bound at a module's top level (or under its top-level if/try blocks)."""
    path = _source(module)
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
    return frozenset(names)


def _imports() -> list[tuple[str, int, str, str]]:
    """(file, line, module, name) of every `from raydistill... import name`, at any depth."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "raydistill":
                found += [(str(path.relative_to(PACKAGE.parent)), node.lineno, node.module,
                           a.name) for a in node.names]
    return found


def test_every_imported_name_is_defined_where_it_is_imported_from():
    imports = _imports()
    assert len(imports) > 100  # the walk found the package's imports
    missing = []
    for file, line, module, name in imports:
        if name == "*" or _source(f"{module}.{name}") is not None:  # a submodule
            continue
        if _source(module) is None:
            missing.append(f"{file}:{line}: no module {module}")
        elif name not in _defined(module):
            missing.append(f"{file}:{line}: {module} defines no {name}")
    assert missing == []
