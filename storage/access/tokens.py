"""API tokens: created and revoked against the database (`droptune token ...`), checked by the API.

A token is `dt_` + 32 random bytes (urlsafe base64): guessing is hopeless, so one unsalted
SHA-256 is enough to store it by (no slow hash: the API hashes the token of every request). Only
the hash and the first characters (`prefix`, to tell tokens apart in a listing) are stored; the
token itself is printed once, at creation. Tokens are revoked, never deleted: once any token has
existed the API needs one on every route but /healthz (see service/middleware/auth.py).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from droptune.core.errors import Invalid, NotFound
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import sessions, tokens

PREFIX = "dt_"
SHOWN = 10  # characters of a token kept in clear (`dt_` + 7): enough to tell them apart
MIN_GIVEN = 32  # the shortest token `create --token-from-env` accepts


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for."""

    owner: str
    admin: bool


@dataclass(frozen=True)
class TokenRow:
    id: int
    owner: str
    admin: bool
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_owner(owner: str) -> str:
    """An owner name: 1-200 printable characters without spaces at either end."""
    if not owner or len(owner) > 200 or owner != owner.strip():
        raise Invalid("name: 1 to 200 characters, no spaces at either end", field="name")
    if not owner.isprintable():
        raise Invalid("name: control characters are not allowed", field="name")
    return owner


def create(engine: Engine, owner: str, *, admin: bool = False, token: str | None = None) -> str:
    """Store a new token for `owner` and return it (the only time it is seen). `token` stores a
    given one instead (the compose stack's admin token from its environment); storing the same
    given token again is a no-op, so a container may run this at every start."""
    check_owner(owner)
    if token is not None and (len(token) < MIN_GIVEN or not token.isascii() or " " in token):
        raise Invalid(f"a given token must be at least {MIN_GIVEN} ASCII characters, no spaces")
    value = token or PREFIX + secrets.token_urlsafe(32)
    h = digest(value)
    with transaction(engine) as conn:
        found = conn.execute(
            sa.select(tokens.c.owner, tokens.c.revoked_at).where(tokens.c.hash == h)
        ).one_or_none()
        if found is not None:
            if found.revoked_at is not None:
                raise Invalid(
                    "that token was revoked: choose a new one (for docker compose, a new "
                    "DROPTUNE_ADMIN_TOKEN)"
                )
            if found.owner != owner:
                raise Invalid("that token is already stored for another owner")
            return value
        conn.execute(tokens.insert().values(owner=owner, admin=admin, hash=h, prefix=value[:SHOWN]))
    return value


def identify(engine: Engine, token: str) -> Identity | None:
    """The owner a token speaks for, or None when it is unknown or revoked."""
    with transaction(engine, read_only=True) as conn:
        row = conn.execute(
            sa.select(tokens.c.owner, tokens.c.admin).where(
                tokens.c.hash == digest(token), tokens.c.revoked_at.is_(None)
            )
        ).one_or_none()
    return None if row is None else Identity(str(row.owner), bool(row.admin))


def any_exist(engine: Engine) -> bool:
    """Whether a token was ever created (revoked ones count: revoking all does not reopen)."""
    with transaction(engine, read_only=True) as conn:
        return conn.execute(sa.select(sa.exists().select_from(tokens))).scalar_one() is True


def list_tokens(engine: Engine, include_revoked: bool = False) -> list[TokenRow]:
    query = sa.select(tokens).order_by(tokens.c.id)
    if not include_revoked:
        query = query.where(tokens.c.revoked_at.is_(None))
    with transaction(engine, read_only=True) as conn:
        rows = conn.execute(query).all()
    return [
        TokenRow(r.id, r.owner, bool(r.admin), r.prefix, r.created_at, r.revoked_at) for r in rows
    ]


def revoke(engine: Engine, which: str) -> list[TokenRow]:
    """Revoke by id, by the token's shown prefix, by the token itself, or every token of an
    owner (`owner:NAME`), and end their dashboard sessions; returns what was revoked (404 when
    nothing matched)."""
    t = tokens.c
    if which.isdigit():
        match: sa.ColumnElement[bool] = t.id == int(which)
    elif which.startswith("owner:"):
        match = t.owner == which.removeprefix("owner:")
    elif len(which) > SHOWN:
        match = t.hash == digest(which)
    else:
        match = t.prefix == which
    with transaction(engine) as conn:
        rows = conn.execute(sa.select(tokens).where(match, t.revoked_at.is_(None))).all()
        if not rows:
            raise NotFound(f"no live token matches {which!r}")
        if len(rows) > 1 and not which.startswith("owner:"):
            raise Invalid(f"{which!r} matches {len(rows)} tokens: revoke by id")
        ids = [r.id for r in rows]
        conn.execute(tokens.update().where(t.id.in_(ids)).values(revoked_at=db_now()))
        # Its dashboard sessions end with it (storage/access/sessions.py checks the token as well).
        s = sessions.c
        conn.execute(
            sessions.update()
            .where(s.token_id.in_(ids), s.revoked_at.is_(None))
            .values(revoked_at=db_now())
        )
    return [TokenRow(r.id, r.owner, bool(r.admin), r.prefix, r.created_at, None) for r in rows]
