"""The package contract: service and worker never import each other; storage imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "storage": {"service", "worker", "client"},
    "service": {"worker", "client"},
    "worker": {"service", "client"},
}
# The engine runs on bare GPU boxes for bench/: torch, numpy and scikit-learn only.
ENGINE = (
    "worker/data.py",
    "worker/models.py",
    "worker/optim.py",
    "worker/engine.py",
    "worker/sizing.py",
)
ENGINE_ALLOWED = {"torch", "numpy", "sklearn", "worker", "__future__"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_the_contract(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    broken = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files
    }
    assert {f: b for f, b in broken.items() if b} == {}


def test_engine_needs_only_torch_numpy_sklearn() -> None:
    import sys

    stdlib = set(sys.stdlib_module_names)
    for rel in ENGINE:
        extra = imported_roots(ROOT / rel) - ENGINE_ALLOWED - stdlib
        assert extra == set(), f"{rel} imports {sorted(extra)}"
