"""docs/architecture.md lists every module of the product packages (a new module is documented
where whoever carries the code on will look)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "datafiles", "storage", "service", "worker", "client")


def test_every_module_is_in_the_architecture_page() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = [
        p.relative_to(ROOT).as_posix()
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p.name != "__init__.py" and "versions" not in p.parts
    ]
    assert len(modules) > 80
    missing = [m for m in modules if f"`{m}`" not in page]
    assert missing == [], f"docs/architecture.md does not name {missing}"
