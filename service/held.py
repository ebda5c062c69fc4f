"""Held requests: `GET /studies/{id}/best?wait=` and the event streams.

A held request costs the API nothing while it waits: it waits on the process's one
`StudyWatcher` (storage/jobs/notify.py), as the event streams do, which checks every watched study
in
one query per change (PostgreSQL) or per quarter second (SQLite), not one query per request. It ends
as soon as its client goes: issue 19 found 300 `?wait=600` requests whose sockets closed after
half a second keeping the API at 40% CPU for the next minute, each polling the database until
its wait ran out.

Each owner may hold at most `DROPTUNE_MAX_HELD_PER_OWNER` of them at once in one API process
(held `?wait=` requests and event streams together); one more is answered 429 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from starlette.requests import Request

from droptune.core.errors import DroptuneError
from droptune.core.states import ENDED
from droptune.storage.jobs.notify import StudyWatcher


class TooManyHeld(DroptuneError):
    """429: the owner already holds as many waiting requests and event streams as allowed."""

    status = 429
    title = "Too many requests"


class HeldSlots:
    """How many requests each owner holds open in this process, capped per owner."""

    def __init__(self, per_owner: int) -> None:
        self.per_owner = per_owner
        self._held: Counter[str] = Counter()
        # Released from generator finalisers too, which garbage collection may run on this very
        # thread while it holds the lock (inside acquire): reentrant.
        self._lock = threading.RLock()

    @property
    def total(self) -> int:
        return sum(self._held.values())

    def acquire(self, owner: str) -> Slot:
        with self._lock:
            if self._held[owner] >= self.per_owner:
                raise TooManyHeld(
                    f"{owner!r} already holds {self._held[owner]} waiting requests and event "
                    f"streams on this server, the most allowed "
                    f"(DROPTUNE_MAX_HELD_PER_OWNER={self.per_owner}): close one, or poll "
                    "without `wait`"
                )
            self._held[owner] += 1
        return Slot(self, owner)

    def _release(self, owner: str) -> None:
        with self._lock:
            self._held[owner] -= 1
            if self._held[owner] <= 0:
                del self._held[owner]


class Slot:
    """One held request's place; `release()` may be called any number of times."""

    def __init__(self, slots: HeldSlots, owner: str) -> None:
        self._slots, self._owner, self._held = slots, owner, True

    def release(self) -> None:
        with self._slots._lock:
            if self._held:
                self._held = False
                self._slots._release(self._owner)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


async def _disconnected(request: Request) -> None:
    """Return when the client has gone (the server's `http.disconnect`). A GET's body, already
    complete, is read past first."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def hold(
    request: Request,
    watcher: StudyWatcher,
    study_id: int,
    seconds: float,
    ended: Callable[[], Awaitable[bool]],
    *,
    recheck: bool = False,
) -> bool:
    """Wait until the study has ended or `seconds` have passed (True), or until the client has
    gone (False). `ended()` reads the study once the watch is in place: a study that ended
    (and said so) between the caller's first read and the watch would otherwise wait for the
    watcher's next unprompted check. With `recheck`, `ended()` is the whole condition instead
    (`?wait=` with If-None-Match: until the answer's version changes), read again after each
    change the watcher sees."""
    deadline = time.monotonic() + seconds
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        async with watcher.watch(study_id) as watched:
            version = watched.version  # before looking: a change after it wakes the wait
            if await ended():
                return True
            while True:
                if not recheck and watched.seen is not None and watched.seen[0] in ENDED:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                change = asyncio.ensure_future(watched.wait(version))
                done, _ = await asyncio.wait(
                    {change, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                change.cancel()
                if gone in done:
                    return False
                if change in done:
                    version = watched.version
                    if recheck and await ended():
                        return True
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
