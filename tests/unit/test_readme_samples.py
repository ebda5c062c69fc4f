"""The README's samples of what droptune prints match what it prints (issue 22: they had
drifted). The polling scripts' output is checked where they run (tests/e2e/test_polling.py)."""

from __future__ import annotations

import re
from pathlib import Path

from droptune.client import launch

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def block(marker: str) -> str:
    found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", README, re.S)
    assert found, f"README has no block after <!-- {marker} -->"
    return found.group(1)


def test_the_up_banner_sample_is_what_up_prints() -> None:
    printed = launch._banner("sqlite:///./droptune.db", "http://127.0.0.1:8000", ["cpu"], True)
    assert block("up-banner") == printed + "\n"
