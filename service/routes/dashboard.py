"""The Optuna dashboard on the API's port, read-only.

optuna-dashboard's page hard-codes `/dashboard`, `/static/*` and `/api/*`, so it cannot live under
a sub-path: its WSGI app is mounted last, as the catch-all, and droptune's routes stay off `/api`.
Its write routes (delete a study, tell a trial, notes) have no authentication and would corrupt the
queue, so every method but GET and HEAD is refused with 403 before it reaches the dashboard. Once
tokens exist, a caller needs a token (service/middleware/auth.py: a bearer token or the login
cookie): an admin's dashboard shows every owner's studies; anyone else's is built over
storage/dashboard_view.py's OwnerView (`owner_view`, given by the app), which holds only that
owner's studies (optuna-dashboard reads a storage whole and knows no owners), one app per owner,
the most recent few kept.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
from a2wsgi import WSGIMiddleware
from optuna.storages import BaseStorage
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from droptune.service.errors import allowed_methods
from droptune.storage.sql.db import MAX_ID

READ_METHODS = frozenset({"GET", "HEAD"})
# What the dashboard serves; any other path is droptune's own 404, not the dashboard's HTML page.
DASHBOARD_PREFIXES = ("/dashboard", "/static/", "/api/", "/favicon.ico")


class ReadOnly:
    """ASGI wrapper refusing writes with problem+json.

    Being the catch-all, it also sees requests for droptune's own paths with a method they do
    not take (Starlette falls through to it): those get 405 with `Allow`, not 404.
    """

    def __init__(self, app: ASGIApp, routes: Callable[[], Iterable[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] != "/" and not scope["path"].startswith(DASHBOARD_PREFIXES):
            allowed = allowed_methods(self.routes(), scope)
            if allowed:
                allow = ", ".join(allowed)
                detail = f"{scope['method']} is not allowed on {scope['path']}; allowed: {allow}"
                await _problem(
                    send, 405, "Method not allowed", detail, [(b"allow", allow.encode())]
                )
            else:
                await _problem(send, 404, "Not found", f"no route {scope['path']}")
        elif _past_an_id(scope["path"]):
            # Optuna's id columns are INTEGER: a larger id would be a 500 from PostgreSQL.
            await _problem(send, 404, "Not found", f"no such study or trial: {scope['path']}")
        elif scope["method"] not in READ_METHODS:
            detail = (
                f"the dashboard is read-only: {scope['method']} {scope['path']} is refused; "
                "use droptune's REST API to change studies"
            )
            await _problem(send, 403, "Forbidden", detail)
        else:
            headers = scope["headers"]
            if not any(k == b"accept-encoding" for k, _ in headers):
                # optuna-dashboard's static route fails with 500 without this header (browsers
                # always send one; curl does not).
                scope = {**scope, "headers": [*headers, (b"accept-encoding", b"identity")]}
            await self.app(scope, receive, send)


def _past_an_id(path: str) -> bool:
    """Whether a segment of the path is a number no id column can hold."""
    return any(p.isascii() and p.isdigit() and int(p) > MAX_ID for p in path.split("/"))


async def _problem(
    send: Send, status: int, title: str, detail: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# optuna-dashboard imports optuna.importance, whose fANOVA evaluator imports scikit-learn's
# forests as the module loads: 1.3 s of CPU, most of optuna-dashboard's import. The dashboard
# ranks parameters with PED-ANOVA, and nothing else in the API process uses scikit-learn, so
# that one import is refused while the dashboard loads. Optuna then marks its two forest-based
# evaluators (fANOVA, mean decrease in impurity) unavailable for the life of this process, even
# if scikit-learn is imported later; a process that already holds scikit-learn's forests is left
# as it is.
_NOT_NEEDED = "sklearn.ensemble"


def _import_dashboard_wsgi() -> Callable[[BaseStorage], Any]:
    refused = _NOT_NEEDED not in sys.modules
    if refused:
        sys.modules[_NOT_NEEDED] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        from optuna_dashboard import wsgi
    finally:
        if refused and sys.modules.get(_NOT_NEEDED, 0) is None:
            del sys.modules[_NOT_NEEDED]
    build: Callable[[BaseStorage], Any] = wsgi
    return build


OWNER_APPS = 32  # owners' dashboards kept built (each holds optuna-dashboard's caches)


class Deferred:
    """optuna-dashboard's WSGI app, imported and built off the startup path, so the API answers
    as soon as it can after `serve` starts. The app's lifespan starts `ready()` in a thread at
    once; a dashboard request that comes first waits for it. An admin's request goes to that
    app; another owner's to an app over their OwnerView, built at their first request."""

    def __init__(
        self, storage: BaseStorage, owner_view: Callable[[str], BaseStorage] | None = None
    ) -> None:
        self.storage, self.owner_view = storage, owner_view
        self.app: ASGIApp | None = None
        self.owners: OrderedDict[str, ASGIApp] = OrderedDict()
        self.lock = asyncio.Lock()

    def _build(self, storage: BaseStorage) -> ASGIApp:
        return WSGIMiddleware(_import_dashboard_wsgi()(storage))  # type: ignore[return-value]

    async def ready(self) -> ASGIApp:
        """The built app (built once, in a worker thread)."""
        if self.app is None:
            async with self.lock:
                if self.app is None:
                    self.app = await anyio.to_thread.run_sync(self._build, self.storage)
        return self.app

    async def for_owner(self, owner: str) -> ASGIApp:
        """The dashboard over `owner`'s studies only."""
        async with self.lock:
            app = self.owners.pop(owner, None)
            if app is None:
                assert self.owner_view is not None, "per-owner dashboards need owner_view"
                app = await anyio.to_thread.run_sync(self._build, self.owner_view(owner))
            self.owners[owner] = app  # the most recently used last
            while len(self.owners) > OWNER_APPS:
                self.owners.popitem(last=False)
            return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope.get("state", {}).get("caller")
        if caller is None:  # the auth middleware did not run: show nothing rather than all
            await _problem(send, 403, "Forbidden", "the dashboard needs a caller")
            return
        app = await (self.ready() if caller.admin else self.for_owner(caller.name))
        await app(scope, receive, send)


def dashboard_app(deferred: Deferred, routes: Callable[[], Iterable[BaseRoute]]) -> Any:
    """`routes` gives droptune's own routes, for 405 answers."""
    return ReadOnly(deferred, routes)
