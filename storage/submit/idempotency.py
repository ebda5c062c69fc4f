"""`Idempotency-Key` on POST /studies: the same key and body within a day answer the first study.

The key's row (`droptune_idempotency`) is inserted in the transaction that stores the study, so
the key exists exactly when the study does: a request that died before its commit left
neither, and its retry stores the study; one that died after left both, and its retry is
answered the study. Two requests with one key at the same time: on PostgreSQL the owner's
advisory lock (storage/submit/quotas.py) makes the second wait and then find the first's row; were
it
to get past that, its insert breaks the primary key and it answers the first study too.
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core.errors import Invalid, StorageError
from droptune.core.spec.study import StudySpec
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import idempotency

KEEP_SECONDS = 86_400.0  # a key answers its first study for a day; older ones are deleted
HEADER = "Idempotency-Key"


def digest(spec: StudySpec) -> str:
    """The sha256 of the spec as submitted, in one canonical JSON form (a retry's body hashes
    the same however its JSON was spaced or ordered)."""
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def first_study(conn: Connection, owner: str, key: str, body_sha256: str) -> int | None:
    """The study the owner's first request with this key made within a day, or None; 422 when
    that request had another body. The owner's expired keys are deleted here."""
    conn.execute(
        idempotency.delete().where(
            idempotency.c.owner == owner, idempotency.c.created_at < db_now(-KEEP_SECONDS)
        )
    )
    row = conn.execute(
        sa.select(idempotency.c.body_sha256, idempotency.c.study_id).where(
            idempotency.c.owner == owner, idempotency.c.key == key
        )
    ).one_or_none()
    if row is None:
        return None
    if row.body_sha256 != body_sha256:
        raise Invalid(
            f"{HEADER}: this key was sent within the last day with another body (it made "
            f"study {row.study_id}); send a new key for a new study",
            field=HEADER,
        )
    return int(row.study_id)


def remember(conn: Connection, owner: str, key: str, body_sha256: str, study_id: int) -> None:
    """Record the key with the study it made, in the study's own transaction."""
    conn.execute(
        idempotency.insert().values(
            owner=owner, key=key, body_sha256=body_sha256, study_id=study_id
        )
    )


def lost_race(exc: sa.exc.IntegrityError) -> bool:
    """Whether an insert broke droptune_idempotency's primary key (the same key, meanwhile)."""
    diag = getattr(exc.orig, "diag", None)  # psycopg names the constraint; pysqlite does not
    if diag is not None:
        return getattr(diag, "table_name", None) == idempotency.name
    return f"UNIQUE constraint failed: {idempotency.name}." in str(exc.orig)


def after_race(engine: Engine, owner: str, key: str, body_sha256: str) -> int:
    """The study of the request that won a race for the key (or 422 for another body)."""
    with transaction(engine) as conn:
        study_id = first_study(conn, owner, key, body_sha256)
    if study_id is None:  # the winner's row expired or its study was deleted at once
        raise StorageError(f"{HEADER}: a concurrent request with this key failed; retry")
    return study_id


def forget_study(conn: Connection, study_id: int) -> None:
    """Drop the keys that answer a study being deleted (a retry then makes a new one)."""
    conn.execute(idempotency.delete().where(idempotency.c.study_id == study_id))
