"""The two reads pollers repeat, answered without FastAPI's routing: a plain
`GET /studies/{id}/best` or `GET /studies/{id}` (no query string) is read and answered here,
innermost, after every middleware (request id and timing, access, limits, HEAD) has done its
part, exactly as the route would answer it (service/answers.py builds both).

FastAPI's per-request work for a route (matching every route in turn, solving its dependencies,
validating the path parameter, an exit stack) cost more than the read itself at a thousand polls
a second. Anything else goes on to the routes, which stay the API's definition and its OpenAPI
document: a query string (`?wait=`), an id out of range, and any error the read raises (a 404,
a 503): the route answers those itself, as it always has.

A poll with a bearer token comes here unchecked (service/middleware/auth.py leaves it to this
read): the token is looked up by the read's own statement, joined to the study as its caller
may see it (storage/readmodel/versions.py), so a poll is one round trip and one thread hop, and
a revoked token is refused by the very next poll as before. A token that is not live is the
401 auth.py gives; a poll the routes answer (a 404, a 503) goes on with the caller that
statement found, or, when it did not run, with the token looked up as auth.py would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from droptune.core.errors import DroptuneError, StorageError
from droptune.service.answers import Bodies, polled, respond
from droptune.service.deps import Caller
from droptune.service.errors import problem
from droptune.service.middleware import auth
from droptune.storage.readmodel import versions
from droptune.storage.readmodel.reads import Reader

# Polls read in at most this many threads at once (of the pool's 40): more only queue on the
# GIL and on the database's connection pool (whose spare connections, past its 5, are opened
# and closed again for each use; PostgreSQL's pool keeps 4), costing CPU, answering no sooner.
THREADS = 4
T = TypeVar("T")
READS: dict[str, Callable[..., versions.Versioned[Any]]] = {
    "best": versions.best,
    "study": versions.study,
}


async def run_in_threadpool(fn: Callable[[], T], limiter: anyio.CapacityLimiter) -> T:
    return await anyio.to_thread.run_sync(fn, limiter=limiter)


class Polls:
    def __init__(self, app: ASGIApp, reader: Reader, bodies: Bodies) -> None:
        self.app = app
        self.reader = reader
        self.bodies = bodies
        self.limiter: anyio.CapacityLimiter | None = None  # made in the event loop, when first used

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        poll = polled(scope)
        state = scope.get("state", {})
        # no caller (the auth middleware did not run): the route decides, never an open read
        caller: Caller | None = state.get("caller")
        if poll is None or caller is None:
            await self._route(scope, receive, send, None)
            return
        study_id, route = poll
        bearer = versions.Bearer(state["bearer"]) if caller is auth.UNCHECKED else None
        etag = Headers(scope=scope).get("if-none-match")
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(THREADS)
        read = functools.partial(READS[route], self.reader, study_id, caller.scope, bearer)
        answer = functools.partial(respond, self.bodies, route, study_id, read, etag)
        try:
            response = await run_in_threadpool(answer, self.limiter)
        except DroptuneError:  # 404, 503: the route answers it, as for any other request
            await self._route(scope, receive, send, bearer)
            return
        await response(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send, bearer: Any) -> None:
        """On to the routes, with the caller of a token left to this middleware first."""
        state = scope.get("state", {})
        if state.get("caller") is auth.UNCHECKED:
            found = await self._bearer_caller(scope["path"], state["bearer"], bearer)
            if isinstance(found, Response):
                await found(scope, receive, send)
                return
            state["caller"] = found
        await self.app(scope, receive, send)

    async def _bearer_caller(
        self, path: str, token: str, bearer: versions.Bearer | None
    ) -> Caller | Response:
        if bearer is not None and bearer.checked:  # the read's statement ran: it said who
            if bearer.who is None:
                return auth.unauthorized(auth.NOT_VALID)
            return Caller(bearer.who.owner, bearer.who.admin, token)
        try:  # it did not run (the database is away, say): as auth.py looks a token up
            return await auth.bearer_caller(self.reader.engine, path, token)
        except StorageError as exc:
            return problem(503, exc.title, exc.detail)
