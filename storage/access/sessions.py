"""Dashboard sessions: what the browser's cookie names instead of the API token.

A session id is 32 random bytes (urlsafe base64), given to the browser once, at sign-in; only
its SHA-256 is stored (as for tokens, guessing is hopeless, so no slow hash), with the token it
was opened with. A session is valid while it is unexpired (database clock), not ended (/logout)
and its token is not revoked: `tokens.revoke` ends a token's sessions in its own transaction,
and `identify` checks the token again, so a token revoked by any other way ends them too.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from droptune.storage.access.tokens import Identity, digest
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import sessions, tokens


def start(engine: Engine, token: str, hours: float) -> str | None:
    """A new session for a live token, valid `hours`: its id (None for a token that is not live).
    The cookie only ever opens the dashboard and the docs (GET and HEAD): an admin's dashboard
    shows every study, anyone else's their own."""
    t = tokens.c
    with transaction(engine) as conn:
        token_id = conn.execute(
            sa.select(t.id).where(t.hash == digest(token), t.revoked_at.is_(None))
        ).scalar_one_or_none()
        if token_id is None:
            return None
        # Expired rows are dead weight (identify refuses them): dropped here, as sign-ins are
        # rare, so the table stays the size of the live sessions.
        conn.execute(sessions.delete().where(sessions.c.expires_at < db_now()))
        session_id = secrets.token_urlsafe(32)
        conn.execute(
            sessions.insert().values(
                hash=digest(session_id), token_id=token_id, expires_at=db_now(hours * 3600)
            )
        )
    return session_id


def identify(engine: Engine, session_id: str) -> Identity | None:
    """Whom a session speaks for, or None once it has expired or ended, or its token is revoked."""
    s, t = sessions.c, tokens.c
    query = (
        sa.select(t.owner, t.admin)
        .select_from(sessions.join(tokens, t.id == s.token_id))
        .where(
            s.hash == digest(session_id),
            s.revoked_at.is_(None),
            s.expires_at > db_now(),
            t.revoked_at.is_(None),
        )
    )
    with transaction(engine, read_only=True) as conn:
        row = conn.execute(query).one_or_none()
    return None if row is None else Identity(str(row.owner), bool(row.admin))


def end(engine: Engine, session_id: str) -> bool:
    """End a session (/logout): its id is refused from now on, replayed or not. Whether it was
    live."""
    s = sessions.c
    with transaction(engine) as conn:
        done = conn.execute(
            sessions.update()
            .where(s.hash == digest(session_id), s.revoked_at.is_(None))
            .values(revoked_at=db_now())
        )
    return done.rowcount > 0
