"""Text a user gave, made safe to print on a terminal (the CLI, and the answer's lines)."""

from __future__ import annotations

import re

# What a terminal acts on instead of showing: C0 controls (ESC starts an escape sequence), DEL,
# C1 controls (\x9b is a one-byte CSI), the line and paragraph separators, the bidirectional
# overrides and isolates (they reorder what follows: "Trojan source"), and lone surrogates.
_BEYOND_C0 = r"\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(rf"[\x00-\x1f{_BEYOND_C0}]")
_UNSAFE_IN_LINES = re.compile(rf"[\x00-\x08\x0b-\x1f{_BEYOND_C0}]")  # keeps \t and \n
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe(text: object, *, lines: bool = False) -> str:
    """`text` as the terminal should show it: every control character, escape sequence and
    reordering mark spelled out as Python writes it (`\\x1b[31m`, `\\u202e`), so a name a user
    gave (a study's, a data set's, a column's) prints as written and never drives the terminal.
    `lines=True` keeps newlines and tabs (a message droptune laid out over lines)."""
    return (_UNSAFE_IN_LINES if lines else _UNSAFE).sub(_escape, str(text))


def masked_url(url: str) -> str:
    """A database URL with its password hidden, for lines that land in logs: the part between
    the user's `:` and the last `@` of the authority (a password may hold `/`, `#`, `?` or `@`,
    which a URL parser reads otherwise), and a `password=` query parameter."""
    scheme, sep, rest = url.partition("://")
    if sep:
        at = rest.rfind("@")
        user, colon, _ = rest[:at].partition(":") if at > 0 else ("", "", "")
        if colon:
            rest = f"{user}:***@{rest[at + 1 :]}"
        url = f"{scheme}://{rest}"
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)
