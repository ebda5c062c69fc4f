"""What every `droptune` command shares: its options, one-line errors, and the API client."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from droptune.client.api import Client, ClientError
from droptune.core.errors import DroptuneError

T = TypeVar("T")

UrlOpt = Annotated[str, typer.Option("--url", envvar="DROPTUNE_URL", help="droptune API")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="overrides DROPTUNE_DATABASE_URL")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]

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


def fail(message: str) -> NoReturn:
    """End the command with one error line (the server's words escaped: they can repeat a
    name the user gave)."""
    typer.echo(f"error: {safe(message, lines=True)}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad settings (a database URL, a device) end as one line, not a traceback."""
    try:
        yield
    except ValidationError as exc:  # settings from DROPTUNE_* variables
        e = exc.errors()[0]
        name = "DROPTUNE_" + "_".join(str(p) for p in e["loc"]).upper()
        fail(f"{name}={e.get('input')!r}: {e['msg']}")
    except (DroptuneError, ValueError) as exc:
        fail(str(exc))


def client(url: str) -> Client:
    try:
        return Client(url, token=os.environ.get("DROPTUNE_TOKEN"))
    except ClientError as exc:  # --url / DROPTUNE_URL is not a URL
        fail(str(exc))


def ask(url: str, call: Callable[[Client], T]) -> T:
    """One request to the API; a refusal or an unreachable API ends the command in one line."""
    with client(url) as c:
        try:
            return call(c)
        except ClientError as exc:
            fail(str(exc))
