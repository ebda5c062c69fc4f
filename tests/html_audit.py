"""Hostile strings for the fields a user fills in, and two checks that none of them became markup
where droptune's output reaches a browser: a static one (Python's HTML parser lists every
element and attribute) and a live one (headless Chromium loads the page and we look
for what the payloads' scripts would have written).

Each payload's script writes MARK into the page title. MARK is spelled in pieces inside the
payloads (`'PW'+'NED'`), so the word itself appears in a page only if a script ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

MARK = "PWNED"
RUN = "document.title='PW'+'NED'"
PAYLOADS = [
    f"<img src=x onerror={RUN}>",
    f"<script>{RUN}</script>",
    f'"><svg onload="{RUN}">',
    f'\'><img src=x onerror="{RUN}">',
    f"</script><script>{RUN}</script>",
    f"</title></style><script>{RUN}</script>",
    f"javascript:{RUN}",
    f'<a href="javascript:{RUN}">click</a>',
    f"[x](javascript:{RUN})",
    f'![x](x" onerror="{RUN})',
    f"<javascript:{RUN}>",
    f"<!--<script>{RUN}</script>-->",
    f'<iframe srcdoc="<script>{RUN}</script>"></iframe>',
    f"\u2028<details open ontoggle={RUN}>\u2029",
]
# Attributes whose value the browser follows as an address.
URL_ATTRS = {"href", "src", "xlink:href", "action", "formaction", "srcdoc", "data", "poster"}


def hostile(i: int) -> str:
    """A payload for the i-th field (one of each kind over a few fields; all kinds in each test
    where a field takes several)."""
    return PAYLOADS[i % len(PAYLOADS)]


def every_payload() -> str:
    return " ".join(PAYLOADS)


class Audit(HTMLParser):
    """Every element (with its attributes) of a page, and the text of its scripts and styles,
    as Python's parser reads it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.raw: list[tuple[str, str]] = []  # (script|style, its text)
        self._open = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))
        self._open = tag

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        if self._open in ("script", "style"):
            self.raw.append((self._open, data))

    def handle_endtag(self, tag: str) -> None:
        self._open = ""


def problems(page: str, allowed_tags: set[str]) -> list[str]:
    """What in `page` a hostile string could have made: an element outside `allowed_tags`, an
    event handler, a `javascript:` (or any non-local) address, or a payload's words
    in an attribute, a style or a script. Empty when the page is clean."""
    audit = Audit()
    audit.feed(page)
    audit.close()
    found = [f"element <{tag}>" for tag, _ in audit.elements if tag not in allowed_tags]
    for tag, attrs in audit.elements:
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                found.append(f"handler {name}= on <{tag}>")
            if name in URL_ATTRS and not value.startswith("#"):
                found.append(f"address {name}={value!r} on <{tag}>")
            if "PW'+'NED" in value or "javascript:" in value.lower():
                found.append(f"payload in {name}= on <{tag}>")
    found += [f"payload in <{tag}>" for tag, text in audit.raw if "NED" in text]
    found += [f"<{tag}> in the page" for tag, _ in audit.elements if tag in ("script", "iframe")]
    return found


def chromium() -> str:
    """The Chromium binary; skips the test without one, but fails it under CI, which must
    have one (the browser is the check that the escaping holds where it matters)."""
    for name in ("chromium", "chromium-browser"):
        if (path := shutil.which(name)) is not None:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium (or chromium-browser) is needed on PATH for the browser XSS tests")
    pytest.skip("no chromium or chromium-browser on PATH: the browser XSS check did not run")


def browser_dom(file: Path, tmp_path: Path) -> str:
    """The DOM of `file` after headless Chromium loaded it and ran whatever scripts it would
    (virtual time lets a failed image's onerror and timers fire before the dump)."""
    out = subprocess.run(
        [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            file.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0 and out.stdout, out.stderr[-2000:]
    return out.stdout
