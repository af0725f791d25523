"""The package's shape: the kernels import nothing from the quantizers (no import cycle), and no
module imports another module's private names."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("pipeline", "stages")


def modules():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            yield path, ast.parse(path.read_text())


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    base = module_name(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def test_kernels_import_nothing_from_the_quantizers():
    bad = []
    for path, tree in modules():
        if not module_name(path).startswith("pipeline.kernels"):
            continue
        for node in ast.walk(tree):
            names = ([imported(path, node)] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith("pipeline.quantizers")]
    assert not bad, bad


def test_no_module_imports_another_modules_private_names():
    bad = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and imported(path, node).startswith(PACKAGES):
                target = imported(path, node)
                bad += [f"{path.relative_to(REPO)}: {target}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad
