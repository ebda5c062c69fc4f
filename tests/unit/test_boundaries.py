"""What import-linter's contracts (pyproject.toml, run by `make test`) cannot say: droptune's
packages are imported by their installed name, and the catalogue and the memory arithmetic the
engine shares need only the standard library. The layers themselves are the contracts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("core", "datafiles", "storage", "service", "worker", "client")
SHARED = (ROOT / "core" / "catalogue.py", ROOT / "core" / "memory.py")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_what_the_engine_shares_with_core_needs_only_the_standard_library(path: Path) -> None:
    extra = {m for m in imported_modules(path) if m.split(".")[0] not in sys.stdlib_module_names}
    assert extra == set(), f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_everything_imports_droptune_s_packages_by_their_installed_name() -> None:
    """`import storage` would load a second copy of a module (other classes, other errors) next
    to `droptune.storage`, and clash with a user's own `storage` once installed."""
    files = [f for d in (*OURS, "tests", "bench") for f in sorted((ROOT / d).rglob("*.py"))]
    bare = {}
    for f in files:
        hits = [m for m in imported_modules(f) if m.split(".")[0] in OURS]
        if hits:
            bare[str(f.relative_to(ROOT))] = hits
    assert bare == {}


def test_the_import_contracts_hold() -> None:
    """The contracts in pyproject.toml (layers; the engine on torch, numpy and scikit-learn;
    the client on core; core free of the database, the web and torch; routes without SQL)."""
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "KEPT" in done.stdout
