"""The Optuna dashboard on the API's port, read-only.

optuna-dashboard's page hard-codes `/dashboard`, `/static/*` and `/api/*`, so it cannot live under
a sub-path: its WSGI app is mounted last, as the catch-all, and droptune's routes stay off `/api`.
Its write routes (delete a study, tell a trial, notes) have no authentication and would corrupt the
queue, so every method but GET and HEAD is refused with 403 before it reaches the dashboard.
"""

from __future__ import annotations

import json
from typing import Any

from a2wsgi import WSGIMiddleware
from optuna.storages import RDBStorage
from optuna_dashboard import wsgi
from starlette.types import ASGIApp, Receive, Scope, Send

READ_METHODS = frozenset({"GET", "HEAD"})
# What the dashboard serves; any other path is droptune's own 404, not the dashboard's HTML page.
DASHBOARD_PREFIXES = ("/dashboard", "/static/", "/api/", "/favicon.ico")


class ReadOnly:
    """ASGI wrapper refusing writes with problem+json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] != "/" and not scope["path"].startswith(DASHBOARD_PREFIXES):
            await _problem(send, 404, "Not found", f"no route {scope['path']}")
        elif scope["method"] not in READ_METHODS:
            detail = (
                f"the dashboard is read-only: {scope['method']} {scope['path']} is refused; "
                "use droptune's REST API to change studies"
            )
            await _problem(send, 403, "Forbidden", detail)
        else:
            await self.app(scope, receive, send)


async def _problem(send: Send, status: int, title: str, detail: str) -> None:
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def dashboard_app(storage: RDBStorage) -> Any:
    return ReadOnly(WSGIMiddleware(wsgi(storage)))  # type: ignore[arg-type]
