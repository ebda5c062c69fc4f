"""Wake idle workers when work arrives: PostgreSQL LISTEN/NOTIFY, a short poll on SQLite."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg
import sqlalchemy as sa

from droptune.storage.db import is_sqlite, normalise_url
from droptune.storage.queue import NOTIFY_CHANNEL

SQLITE_POLL_S = 0.25


class QueueWaiter:
    """`wait(timeout)` returns early when a study is enqueued or a slot is given back."""

    def __init__(self, url: str) -> None:
        self._url = normalise_url(url)
        self._conn: Any = None

    def _listen(self) -> Any:
        if self._conn is None or self._conn.closed:
            u = sa.make_url(self._url).set(drivername="postgresql")
            dsn = u.render_as_string(hide_password=False)
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
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
