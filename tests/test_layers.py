"""The package's layers (its docstring) are what the imports do: no module imports from a layer above its own
or beside it."""

from __future__ import annotations

import ast
from pathlib import Path

import cryopose

LAYERS = [{"errors", "progress"}, {"geometry"}, {"physics"}, {"io"}, {"models", "report", "simulation"},
          {"methods"}, {"train", "evaluate"}, {"jobs"}, {"cli"}, {"__main__"}]
ROOT = Path(cryopose.__file__).parent


def _layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _imports(path: Path) -> set[str]:
    """The top-level cryopose parts (``physics``, ``io``, ...) a module imports."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-node.level]) + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "cryopose":
                base = node.module.split(".")[1:]
            else:
                continue
            names = [base[0]] if base else [alias.name for alias in node.names]
            out.update(name for name in names if name != "__version__")
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cryopose."))
    return out


def _edges() -> set[tuple[str, str]]:
    edges = set()
    for path in ROOT.rglob("*.py"):
        part = path.relative_to(ROOT).with_suffix("").parts[0]
        if part != "__init__":
            edges.update((part, target) for target in _imports(path) if target != part)
    return edges


def test_every_import_points_down_a_layer():
    wrong = sorted((a, b) for a, b in _edges() if _layer(b) >= _layer(a))
    assert not wrong, f"imports against the layers: {wrong}"


def test_methods_import_neither_training_nor_evaluation():
    assert not {b for a, b in _edges() if a == "methods"} & {"train", "evaluate", "jobs", "cli"}


def test_the_check_sees_imports():
    """The check cannot pass by seeing nothing: the jobs import the methods, the methods the physics."""
    edges = _edges()
    assert {("jobs", "methods"), ("methods", "physics"), ("io", "physics"), ("cli", "errors")} <= edges
