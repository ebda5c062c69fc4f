"""Reads that name their version: what GET /studies/{id}/best and GET /studies/{id} show,
with a digest of everything their bytes are made from (the service's ETag).

A poll reads the same statements as before (the row with its finished trials counted; the
row and its trials counted by state), but the JSON columns come back as their text, not
decoded: the digest is taken over that text and the plain columns, and the body is built (JSON
decoded, models validated) only when the caller has no bytes for that digest yet. The body is
built from the very row the digest was taken from, so a digest always names one body.

What goes into a digest is every column the body reads: status, reason, spec, refit state and
result, the cached answer and the number of finished trials it was computed from, the progress
counts for a study. A change to any of them changes the digest; columns the body does not show
(claims, heartbeats) leave it alone. An answer that is stale (more trials finished than the
cached one saw) has no version: it is recomputed and stored by the plain read, and the next
poll finds it current.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from droptune.core.errors import NotFound
from droptune.core.schemas import BestOut, StudyOut
from droptune.storage.access import tokens
from droptune.storage.readmodel.answer_cache import Counts, finished_of
from droptune.storage.readmodel.reads import Reader, _best_out, _counts_of
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies
from droptune.storage.sql.tables import tokens as tok

T = TypeVar("T")
JSON_COLUMNS = ("spec", "refit_result", "answer")
# What the answer of GET /best reads from the row; GET /studies/{id} reads these and more.
# (refit_state: a refit done without unseen rows adds a warning to the answer)
BEST = ("id", "status", "reason", "spec", "refit_result", "refit_state", "answer", "answer_trials")
STUDY = (
    *BEST,
    *("name", "priority", "owner", "created_at", "started_at", "ended_at"),
    *("optuna_study", "n_trials"),
)


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """`etag`: the digest of what the body is made from (None: the answer was stale, nothing
    to name); `build()`: the body itself, from the same row."""

    etag: str | None
    build: Callable[[], T]


class Bearer:
    """A bearer token checked by the read's own statement (service/middleware/polls.py): one
    round trip for the token and the study. After the read, `checked` says the statement ran
    and `who` whom the token speaks for (None: not a live token, the study was not read)."""

    def __init__(self, token: str) -> None:
        self.hash = tokens.digest(token)
        self.checked = False
        self.who: tokens.Identity | None = None


@functools.cache
def _statement(
    names: tuple[str, ...], owned: bool, finished: bool, by_token: bool = False
) -> sa.Select[Any]:
    """The row by `:id` (and `:owner`), JSON columns as their text: built once per shape.
    `by_token`: the live token by `:hash` first (its owner and admin flag), the study joined
    to it as that caller may see it (theirs, or any for an admin): no study, NULL columns."""
    cols: list[Any] = [
        sa.cast(studies.c[n], sa.Text).label(n) if n in JSON_COLUMNS else studies.c[n]
        for n in names
    ]
    if finished:
        cols.append(finished_of(studies.c.optuna_study).label("finished"))
    if by_token:
        t = tok.c
        seen = sa.or_(studies.c.owner == t.owner, t.admin.is_(True))
        joined = tok.outerjoin(studies, sa.and_(studies.c.id == sa.bindparam("id"), seen))
        q = sa.select(t.owner.label("caller_owner"), t.admin.label("caller_admin"), *cols)
        return q.select_from(joined).where(t.hash == sa.bindparam("hash"), t.revoked_at.is_(None))
    q = sa.select(*cols).where(studies.c.id == sa.bindparam("id"))
    return q.where(studies.c.owner == sa.bindparam("owner")) if owned else q


def _row(
    conn: Connection,
    names: tuple[str, ...],
    study_id: int,
    owner: str | None,
    finished: bool,
    bearer: Bearer | None = None,
) -> sa.Row[Any]:
    if bearer is not None:
        q = _statement(names, False, finished, by_token=True)
        row = conn.execute(q, {"id": study_id, "hash": bearer.hash}).one_or_none()
        bearer.checked = True
        if row is None:
            raise NotFound(f"study {study_id} not found")  # and no caller: `who` stays None
        bearer.who = tokens.Identity(str(row.caller_owner), bool(row.caller_admin))
        row = row if row.id is not None else None
    else:
        q = _statement(names, owner is not None, finished)
        row = conn.execute(q, {"id": study_id, "owner": owner}).one_or_none()
    if row is None:  # another owner's study is a missing one: before any version is looked at
        raise NotFound(f"study {study_id} not found")
    return row


def _owner(owner: str | None, bearer: Bearer | None) -> str | None:
    """The owner a read is scoped to: the token's caller's once read (None for an admin)."""
    if bearer is None or bearer.who is None:
        return owner
    return None if bearer.who.admin else bearer.who.owner


def _parts(row: sa.Row[Any], bearer: Bearer | None) -> tuple[Any, ...]:
    """The row's values the body is made from (not the caller's, which lead a token's read)."""
    return tuple(row)[2:] if bearer is not None else tuple(row)


def digest(kind: str, *parts: Any) -> str:
    """A strong ETag's opaque part: `kind` and the values, each as text with its length (the
    text of a JSON column as it is, not escaped again), hashed."""
    h = hashlib.blake2b(kind.encode(), digest_size=16)
    for part in parts:
        text = b"" if part is None else str(part).encode()
        h.update(b"-" if part is None else f"{len(text)}:".encode())
        h.update(text)
    return h.hexdigest()


# The last digest of each (route, study), with the values it was taken over: a poll of an
# unchanged row compares them (the same text: a memcmp) instead of hashing them again.
_LAST: dict[tuple[str, int], tuple[tuple[Any, ...], str]] = {}
_LAST_LOCK = threading.Lock()
MAX_KEPT = 256  # studies (each holds its row's text, as service/answers.py keeps its bytes)


def _digest_of(kind: str, study_id: int, parts: tuple[Any, ...]) -> str:
    """`digest(kind, *parts)`, remembered for the values it was last taken over: equal values
    of the same types (the text a digest hashes is theirs) give the same digest."""
    kept = _LAST.get((kind, study_id))
    if (
        kept is not None
        and kept[0] == parts
        and all(type(a) is type(b) for a, b in zip(kept[0], parts, strict=True))
    ):
        return kept[1]
    etag = digest(kind, *parts)
    with _LAST_LOCK:  # up to service/middleware/polls.THREADS polls at once
        if (kind, study_id) not in _LAST and len(_LAST) >= MAX_KEPT:
            del _LAST[next(iter(_LAST))]  # the oldest first
        _LAST[(kind, study_id)] = (parts, etag)
    return etag


def _decoded(row: sa.Row[Any]) -> SimpleNamespace:
    """The row as `reads` reads it: JSON columns decoded (what the database driver would do)."""
    values = row._asdict()
    for n in JSON_COLUMNS:
        if n in values and values[n] is not None:
            values[n] = json.loads(values[n])
    return SimpleNamespace(**values)


def _current(answer_trials: int | None, finished: int) -> bool:
    """Whether the row's answer is the one of its `finished` trials (none finished: the empty
    answer, whatever the row holds)."""
    return finished == 0 or answer_trials == finished


def best(
    reader: Reader, study_id: int, owner: str | None, bearer: Bearer | None = None
) -> Versioned[BestOut]:
    """GET /studies/{id}/best: one statement, as `Reader.best` (`bearer`: the token's caller
    in the same statement, `owner` unused)."""
    with transaction(reader.engine, read_only=True) as conn:
        row = _row(conn, BEST, study_id, owner, True, bearer)
    owner = _owner(owner, bearer)
    if not _current(row.answer_trials, row.finished):
        return Versioned(None, lambda: reader.best(study_id, owner))

    def build() -> BestOut:
        r = _decoded(row)
        return _best_out(r, reader._answer(r, r.finished)[0])

    return Versioned(_digest_of("best", study_id, _parts(row, bearer)), build)


def study(
    reader: Reader, study_id: int, owner: str | None, bearer: Bearer | None = None
) -> Versioned[StudyOut]:
    """GET /studies/{id}: two statements, as `Reader.study` (`bearer`: as for `best`)."""
    with transaction(reader.engine, read_only=True) as conn:
        row = _row(conn, STUDY, study_id, owner, False, bearer)
        counts = _counts_of(conn, row)
    owner = _owner(owner, bearer)
    if counts.total and not _current(row.answer_trials, counts.finished):
        return Versioned(None, lambda: reader.study(study_id, owner))

    def build() -> StudyOut:
        return reader._study_out(_decoded(row), counts)

    return Versioned(_digest_of("study", study_id, (*_parts(row, bearer), *_fields(counts))), build)


def _fields(counts: Counts) -> tuple[int, ...]:
    c = counts
    return (c.complete, c.pruned, c.fail, c.interrupted, c.running, c.total)
