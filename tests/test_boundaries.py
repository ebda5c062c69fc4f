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
    "worker/engine/data.py",
    "worker/engine/models.py",
    "worker/engine/optim.py",
    "worker/engine/stacked.py",
    "worker/engine/sizing.py",
    "worker/engine/scoring.py",
)
ENGINE_LIBRARIES = {"torch", "numpy", "sklearn"}
# Module by module, not the `worker` package: worker.loop or worker.batch would bring the
# database and the queue with them.
# storage.catalogue is plain data (stdlib only), shared with the spec: the one exception.
ENGINE_MODULES = {"droptune." + rel.removesuffix(".py").replace("/", ".") for rel in ENGINE} | {
    "droptune.core.catalogue"
}
OURS = ("storage", "service", "worker", "client")
CATALOGUE = ROOT / "storage" / "catalogue.py"


def imported_roots(path: Path) -> set[str]:
    """The top-level names a file imports; droptune's own packages by their name under
    `droptune.` (`droptune.worker.run.loop` is `worker`)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            roots.add(parts[1] if parts[0] == "droptune" and len(parts) > 1 else parts[0])
    return roots


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by full name: relative imports resolved, and
    `from pkg import name` read as `pkg.name` where that is a module of this repository."""
    package = ("droptune", *path.relative_to(ROOT).parent.parts)
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            for a in node.names:
                sub = f"{module}.{a.name}"
                modules.add(sub if is_ours(sub) else module)
    return modules


def is_ours(module: str) -> bool:
    where = ROOT.joinpath(*module.split("."))  # droptune/worker -> the worker folder (a link)
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def engine_may_import(module: str, stdlib: frozenset[str]) -> bool:
    root = module.split(".")[0]
    return module in ENGINE_MODULES or root in ENGINE_LIBRARIES or root in stdlib


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_the_contract(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    broken = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files
    }
    assert {f: b for f, b in broken.items() if b} == {}


@pytest.mark.parametrize("rel", ENGINE)
def test_engine_needs_only_torch_numpy_sklearn(rel: str) -> None:
    import sys

    extra = {
        m for m in imported_modules(ROOT / rel) if not engine_may_import(m, sys.stdlib_module_names)
    }
    assert extra == set(), f"{rel} imports {sorted(extra)}"


def test_the_catalogue_needs_only_the_standard_library() -> None:
    import sys

    extra = {
        m for m in imported_modules(CATALOGUE) if m.split(".")[0] not in sys.stdlib_module_names
    }
    assert extra == set(), f"core/catalogue.py imports {sorted(extra)}"


def test_everything_imports_droptune_s_packages_by_their_installed_name() -> None:
    """`import storage` would load a second copy of a module (other classes, other errors) next
    to `droptune.storage`, and clash with a user's own `storage` once installed."""
    files = [f for d in (*OURS, "tests", "bench") for f in sorted((ROOT / d).rglob("*.py"))]
    bare = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            hits = [n for n in names if n.split(".")[0] in OURS]
            if hits:
                bare[str(f.relative_to(ROOT))] = hits
    assert bare == {}
