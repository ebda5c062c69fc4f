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


class ReadOnly:
    """ASGI wrapper refusing writes with problem+json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in READ_METHODS:
            body = json.dumps(
                {
                    "type": "about:blank",
                    "title": "Forbidden",
                    "status": 403,
                    "detail": f"the dashboard is read-only: {scope['method']} {scope['path']} "
                    "is refused; use droptune's REST API to change studies",
                }
            ).encode()
            headers: list[tuple[bytes, bytes]] = [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def dashboard_app(storage: RDBStorage) -> Any:
    return ReadOnly(WSGIMiddleware(wsgi(storage)))  # type: ignore[arg-type]
