"""`pip install droptune` is the client alone; the server and the worker are extras, and the
commands that need them check the modules each extra brings (client/cli/common.py EXTRAS)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from droptune.client.cli.common import EXTRAS

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn", "optuna_dashboard": "optuna-dashboard"}


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_base_install_is_the_client_alone() -> None:
    base = names(PYPROJECT["project"]["dependencies"])
    assert base == {"pydantic", "httpx", "httpx-sse", "typer", "rich", "pyyaml"}


def test_each_extra_installs_what_its_commands_check_for() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        # "database" (db upgrade, token) is what either extra brings
        for pip_extra in ("server", "worker") if extra == "database" else (extra,):
            have = names(extras[pip_extra])
            assert {DIST.get(m, m) for m in modules} <= have, (extra, pip_extra)
    assert "torch" in names(extras["worker"]) and "torch" not in names(extras["server"])
    assert "droptune[server,worker]" in extras["dev"]  # make test installs everything
