"""Change notification, PostgreSQL LISTEN/NOTIFY or a short poll on SQLite: wake idle workers
when work arrives (`QueueWaiter`), and the API's event streams when a study changes
(`StudyWatcher`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from droptune.core.errors import StorageError
from droptune.storage.jobs.queue import NOTIFY_CHANNEL, STUDY_CHANNEL
from droptune.storage.sql.db import is_sqlite, normalise_url, transaction
from droptune.storage.sql.tables import studies

log = logging.getLogger("droptune.notify")

SQLITE_POLL_S = 0.25  # idle workers and, while anything watches, the study watcher
RECONNECT_S = 1.0  # after PostgreSQL was lost: wait this long before listening again

# Optuna's own tables, read only: a study's trials and their states.
_ostudies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
_otrials = sa.table("trials", sa.column("trial_id"), sa.column("study_id"), sa.column("state"))

Fingerprint = tuple[Any, ...]
T = TypeVar("T")


def _dsn(url: str) -> str:
    """libpq's form of a SQLAlchemy PostgreSQL URL (psycopg connects without SQLAlchemy)."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class QueueWaiter:
    """`wait(timeout)` returns early when a study is enqueued or a slot is given back."""

    def __init__(self, url: str) -> None:
        self._url = normalise_url(url)
        self._conn: Any = None

    def _listen(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(_dsn(self._url), autocommit=True, connect_timeout=5)
            self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._conn

    def wait(self, timeout: float) -> None:
        if is_sqlite(self._url):
            time.sleep(min(timeout, SQLITE_POLL_S))
            return
        try:
            conn = self._listen()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error:
            # The server is restarting or unreachable: fall back to sleeping, reconnect later.
            self.close()
            time.sleep(min(timeout, 1.0))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


def fingerprints(engine: Engine, study_ids: Iterable[int]) -> dict[int, Fingerprint]:
    """What an event stream shows of each study changes only with these, read in one query for
    all of them: status, refit state and attempts, trials created, trials finished (a trial's
    score and the answer change only when it finishes). A study not found is left out."""
    s, t = studies.c, _otrials.c
    ended = sa.cast(t.state, sa.String(8)) != "RUNNING"  # an enum on PostgreSQL: as text
    finished = sa.func.coalesce(sa.func.sum(sa.case((ended, 1), else_=0)), 0)  # NULL: none
    query = (
        sa.select(s.id, s.status, s.refit_state, s.refit_attempts, sa.func.count(t.trial_id))
        .add_columns(finished)
        .select_from(
            studies.outerjoin(_ostudies, _ostudies.c.study_name == s.optuna_study).outerjoin(
                _otrials, t.study_id == _ostudies.c.study_id
            )
        )
        .where(s.id.in_(list(study_ids)))
        .group_by(s.id, s.status, s.refit_state, s.refit_attempts)
    )
    with transaction(engine, read_only=True) as conn:
        return {int(row[0]): tuple(row[1:]) for row in conn.execute(query)}


class Watched:
    """One watched study: `version` grows with each change the watcher sees."""

    def __init__(self) -> None:
        self.version = 0
        self.refs = 0
        self.seen: Fingerprint | None = None  # None until the first check
        self._changed = asyncio.Event()
        self._reads: dict[Hashable, tuple[int, asyncio.Future[Any]]] = {}

    def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, version: int) -> None:
        """Return once the version is past `version`: read it before reading the study, so a
        change during that read is not missed."""
        while self.version <= version:
            await self._changed.wait()

    async def shared(self, version: int, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """`read()` once per version and key, however many streams of the study ask for it: a
        read started once `version` was seen shows every change up to it."""
        got = self._reads.get(key)
        if got is None or got[0] != version:
            future = asyncio.ensure_future(read())
            # Retrieved even when every stream that wanted it has gone: no "never retrieved".
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            got = self._reads[key] = (version, future)
        result: T = await asyncio.shield(got[1])  # one stream leaving must not cancel it
        return result


class StudyWatcher:
    """One per API process: wakes the event streams of a study when it changes, so an idle
    stream costs nothing and a change costs one read of the study (`Watched.shared`).

    On PostgreSQL it LISTENs on `droptune_study` (queue.notify) and checks when a watched study
    (or an unnamed one) is announced, and every `check_s` anyway (a change nobody announced:
    recovery failing an orphaned trial). On SQLite it checks every `poll_s`. A check is one
    query for all watched studies (`fingerprints`); the watcher idles while none is watched."""

    def __init__(
        self, engine: Engine, url: str, poll_s: float = SQLITE_POLL_S, check_s: float = 5.0
    ) -> None:
        self._engine = engine
        self._url = normalise_url(url)
        self._poll_s = poll_s
        self._check_s = check_s
        self._studies: dict[int, Watched] = {}
        self._wanted = asyncio.Event()  # set while any study is watched
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._failing = False
        self._checked = -float("inf")  # when _check last ran (monotonic)

    @contextlib.asynccontextmanager
    async def watch(self, study_id: int) -> AsyncIterator[Watched]:
        """Watch `study_id` for the block; the first watch starts the watcher."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="droptune study watcher")
        w = self._studies.setdefault(study_id, Watched())
        w.refs += 1
        self._wanted.set()
        try:
            yield w
        finally:
            w.refs -= 1
            if w.refs == 0:
                del self._studies[study_id]
                if not self._studies:
                    self._wanted.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            try:
                if await self._woken():
                    await self._check()
            except Exception:  # a bug: log it, and let the streams re-read rather than go deaf
                log.exception("study watcher failed (will retry)")
                for w in self._studies.values():
                    w.bump()
                await asyncio.sleep(RECONNECT_S)

    async def _woken(self) -> bool:
        """Wait for a reason to check (True) or a notification about no watched study (False)."""
        if is_sqlite(self._url):
            await asyncio.sleep(self._poll_s)
            return True
        try:
            if self._conn is None:
                # Notifications sent before LISTEN are lost: check right after (re)connecting.
                self._conn = await psycopg.AsyncConnection.connect(
                    _dsn(self._url), autocommit=True, connect_timeout=5
                )
                await self._conn.execute(f"LISTEN {STUDY_CHANNEL}")
                return True
            # Until the next unprompted check is due, however many unrelated notifications
            # come first (on a busy server they would otherwise put it off for ever).
            left = max(0.0, self._checked + self._check_s - time.monotonic())
            got = [n async for n in self._conn.notifies(timeout=left, stop_after=1)]
        except psycopg.Error as exc:
            log.warning("study watcher lost PostgreSQL (will reconnect): %s", exc)
            await self._disconnect()
            await asyncio.sleep(RECONNECT_S)
            return True
        if not got or time.monotonic() - self._checked >= self._check_s:
            return True
        payload = got[0].payload
        return not (payload.isascii() and payload.isdigit()) or int(payload) in self._studies

    async def _check(self) -> None:
        self._checked = time.monotonic()
        ids = list(self._studies)
        if not ids:
            return
        try:
            now = await asyncio.to_thread(fingerprints, self._engine, ids)
        except StorageError as exc:
            if not self._failing:  # once per outage, not twice a second
                log.warning("study watcher cannot read the database (will retry): %s", exc)
            self._failing = True
            return
        self._failing = False
        for study_id in ids:
            w = self._studies.get(study_id)
            if w is not None and now.get(study_id) != w.seen:
                w.seen = now.get(study_id)
                w.bump()

    async def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
        self._conn = None
