"""What every `droptune` command shares: its options, one-line errors, and the API client."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from droptune.client.api import Client, ClientError
from droptune.core.errors import DroptuneError
from droptune.core.escape import safe

T = TypeVar("T")

UrlOpt = Annotated[str, typer.Option("--url", envvar="DROPTUNE_URL", help="droptune API")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="overrides DROPTUNE_DATABASE_URL")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def fail(message: str) -> NoReturn:
    """End the command with one error line (the server's words escaped: they can repeat a
    name the user gave)."""
    typer.echo(f"error: {safe(message, lines=True)}", err=True)
    raise typer.Exit(1)


# What `pip install droptune` leaves out: a command that runs droptune's own processes checks
# that its extra is installed (the top-level modules each extra's code imports) before it starts.
EXTRAS: dict[str, tuple[str, ...]] = {
    "server": (
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "optuna",
        "optuna_dashboard",
        "pandas",
    ),
    "worker": ("torch", "sklearn", "sqlalchemy", "alembic", "optuna", "pandas"),
    # `db upgrade` and `token`: the database's modules only, which either extra brings
    "database": ("sqlalchemy", "alembic", "optuna"),
}


def need(*extras: str) -> None:
    """Fail in one line, naming the pip command, when an extra's modules are missing."""
    missing = [m for e in extras for m in EXTRAS[e] if importlib.util.find_spec(m) is None]
    if missing:
        which = ",".join("server" if e == "database" else e for e in extras)
        either = " (or 'droptune[worker]')" if "database" in extras else ""
        fail(
            f"this command needs droptune[{which}] ({', '.join(dict.fromkeys(missing))} not "
            f"installed): pip install 'droptune[{which}]'{either} (from a checkout: pip install "
            f"'.[{which}]')"
        )


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
