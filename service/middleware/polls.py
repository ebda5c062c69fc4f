"""The two reads pollers repeat, answered without FastAPI's routing: a plain
`GET /studies/{id}/best` or `GET /studies/{id}` (no query string) is read and answered here,
innermost, after every middleware (request id and timing, access, limits, HEAD) has done its
part, exactly as the route would answer it (service/answers.py builds both).

FastAPI's per-request work for a route (matching every route in turn, solving its dependencies,
validating the path parameter, an exit stack) cost more than the read itself at a thousand polls
a second. Anything else goes on to the routes, which stay the API's definition and its OpenAPI
document: a query string (`?wait=`), an id out of range, and any error the read raises (a 404,
a 503): the route answers those itself, as it always has.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from droptune.core.errors import DroptuneError
from droptune.service.answers import Bodies, respond
from droptune.service.deps import Caller
from droptune.storage.readmodel import versions
from droptune.storage.readmodel.reads import Reader

DB_INT = 2**63 - 1  # as the routes' StudyId
# Polls read in at most this many threads at once (of the pool's 40): more only queue on the
# GIL and on the database's connection pool (whose spare connections, past its 5, are opened
# and closed again for each use; PostgreSQL's pool keeps 4), costing CPU, answering no sooner.
THREADS = 4
T = TypeVar("T")


async def run_in_threadpool(fn: Callable[[], T], limiter: anyio.CapacityLimiter) -> T:
    return await anyio.to_thread.run_sync(fn, limiter=limiter)


POLLED = re.compile(r"/studies/([1-9][0-9]{0,18})(/best)?")


class Polls:
    def __init__(self, app: ASGIApp, reader: Reader, bodies: Bodies) -> None:
        self.app = app
        self.reader = reader
        self.bodies = bodies
        self.limiter: anyio.CapacityLimiter | None = None  # made in the event loop, when first used

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            POLLED.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]
            else None
        )
        study_id = int(found.group(1)) if found else 0
        # no caller (the auth middleware did not run): the route decides, never an open read
        caller: Caller | None = scope.get("state", {}).get("caller")
        if not 1 <= study_id <= DB_INT or scope.get("root_path") or caller is None:
            await self.app(scope, receive, send)
            return
        read = versions.best if found and found.group(2) else versions.study
        route = "best" if read is versions.best else "study"
        etag = Headers(scope=scope).get("if-none-match")
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(THREADS)
        answer = functools.partial(
            respond,
            self.bodies,
            route,
            study_id,
            functools.partial(read, self.reader, study_id, caller.scope),
            etag,
        )
        try:
            response = await run_in_threadpool(answer, self.limiter)
        except DroptuneError:  # 404, 503: the route answers it, as for any other request
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
