"""Names people give things (a study, a data set, a target column, a token's owner): text that
every backend stores alike and every terminal shows as written.

PostgreSQL refuses a NUL in text (the API answered 500 or 503), SQLite stores it; a control
character (ESC, BEL, a C1 code) stored in a name later drives the terminal of whoever lists it.
So names refuse both, on every backend, with a message that says which field and which character.

The fields checked: a study's `name` (StudySpec), an upload's `name` and `target` form fields
(service/routes/datasets.py), and a token's `owner` (storage/access/tokens.py calls `check_text`
too).
"""

from __future__ import annotations

import re

# C0 controls, DEL and the C1 controls: what a terminal may act on instead of showing.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates ("\ud800" is valid JSON): no UTF-8 encoding exists, so no database takes them.
SURROGATE = re.compile(r"[\ud800-\udfff]")


def text_problem(value: str, allow: str = "") -> str | None:
    """Why `value` is no acceptable name (None when it is): a NUL, a control character outside
    `allow` (e.g. "\\t" for a field that takes tabs), or a lone surrogate."""
    if "\x00" in value and "\x00" not in allow:
        return "must not contain a NUL character (\\x00)"
    for match in CONTROL.finditer(value):
        if match.group() not in allow:
            code = ord(match.group())
            return f"must not contain control characters (found \\x{code:02x} at {match.start()})"
    surrogate = SURROGATE.search(value)
    if surrogate is not None:
        return f"must be valid Unicode text (a lone surrogate at {surrogate.start()})"
    return None


def check_text(value: str, field: str, allow: str = "") -> str:
    """`value` unchanged when it is fit to store and show; else ValueError("`field`: why").

    The message starts with the field's name, so a caller that is no pydantic model (a form
    field, a token's owner) can hand it to `Invalid(str(exc), field=field)` as it is."""
    problem = text_problem(value, allow)
    if problem is not None:
        raise ValueError(f"{field}: {problem}")
    return value


def printable(value: str, replacement: str = "") -> str:
    """`value` with control characters and lone surrogates replaced: for names droptune derives
    rather than is given (an upload's file name), where refusing would blame the wrong thing."""
    return SURROGATE.sub(replacement, CONTROL.sub(replacement, value))
