"""`droptune token create|list|revoke`: API tokens, managed against the database like
`droptune db upgrade` (whoever holds the database URL administers the service)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from droptune.client.cli.common import DbOpt, JsonOpt, fail, need, one_line_errors
from droptune.core.escape import safe

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

token_app = typer.Typer(
    no_args_is_help=True,
    help="API tokens (run where the database URL is at hand, like `droptune db upgrade`).",
)


@token_app.callback()
def _needs_database() -> None:
    """Every token command works on the database itself."""
    need("database")


def _engine(database_url: str | None) -> Engine:
    from droptune.core.settings import StorageSettings
    from droptune.storage.sql.db import create_engine
    from droptune.storage.sql.migrate import upgrade

    url = StorageSettings.from_flags(database_url=database_url).database_url
    upgrade(url)  # the tokens table may not exist yet on a new database
    return create_engine(url)


@token_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="the owner this token speaks for")],
    admin: Annotated[
        bool, typer.Option("--admin", help="may see and act on every owner's")
    ] = False,
    token_from_env: Annotated[
        str | None,
        typer.Option(
            help="store the token held in this environment variable instead of a new one "
            "(at least 32 characters; storing it again is a no-op)"
        ),
    ] = None,
    database_url: DbOpt = None,
) -> None:
    """Create a token for NAME and print it once: only its hash is stored."""
    from droptune.storage.access import tokens

    given = None
    if token_from_env is not None:
        given = os.environ.get(token_from_env)
        if not given:
            fail(f"{token_from_env} is not set")
    with one_line_errors():
        engine = _engine(database_url)
        try:
            value = tokens.create(engine, name, admin=admin, token=given)
        finally:
            engine.dispose()
    role = " (admin)" if admin else ""
    if given is not None:
        typer.echo(f"token from {token_from_env} stored for {safe(name)}{role}")
        return
    typer.echo(value)
    typer.echo(
        f"token for {safe(name)}{role}: shown once, keep it; clients send it as DROPTUNE_TOKEN",
        err=True,
    )


@token_app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="revoked tokens too")] = False,
    database_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tokens: id, owner, admin, the first characters, created, revoked."""
    import json

    from droptune.storage.access import tokens

    with one_line_errors():
        engine = _engine(database_url)
        try:
            rows = tokens.list_tokens(engine, include_revoked=all_)
            ever = bool(rows) or tokens.any_exist(engine)
        finally:
            engine.dispose()
    if as_json:
        out = [
            {
                "id": r.id,
                "owner": r.owner,
                "admin": r.admin,
                "prefix": r.prefix,
                "created_at": r.created_at.isoformat() + "Z",
                "revoked_at": r.revoked_at.isoformat() + "Z" if r.revoked_at else None,
            }
            for r in rows
        ]
        typer.echo(json.dumps(out, indent=2))
        return
    if not rows:
        typer.echo(
            "no tokens yet: the API is open on loopback (droptune token create --name NAME)"
            if not ever
            else "no live tokens: every request to the API is refused until one is created "
            "(droptune token create --name NAME)"
        )
        return
    width = max(5, *(len(safe(r.owner)) for r in rows))
    typer.echo(f"{'id':>4}  {'token':<11}  {'owner':<{width}}  {'role':<5}  created     state")
    for r in rows:
        state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "live"
        role = "admin" if r.admin else "user"
        shown = f"{r.prefix}…"
        line = (
            f"{r.id:>4}  {shown:<11}  {safe(r.owner):<{width}}  {role:<5}  "
            f"{r.created_at:%Y-%m-%d}  {state}"
        )
        typer.echo(line)


@token_app.command("revoke")
def revoke(
    which: Annotated[
        str, typer.Argument(help="an id, the shown prefix, the token, or owner:NAME for all")
    ],
    database_url: DbOpt = None,
) -> None:
    """Revoke tokens: refused by the API from the next request on."""
    from droptune.storage.access import tokens

    with one_line_errors():
        engine = _engine(database_url)
        try:
            gone = tokens.revoke(engine, which)
        finally:
            engine.dispose()
    for r in gone:
        typer.echo(f"revoked token {r.id} ({r.prefix}…) of {safe(r.owner)}")
