"""HEAD on droptune's own GET routes, answered as GET without the body (RFC 9110 §9.3.2).

FastAPI routes a GET endpoint for GET only, so HEAD would fall through to the dashboard's
catch-all and get 405. The dashboard (a WSGI app) answers HEAD itself and is left alone.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from droptune.service.routes.dashboard import DASHBOARD_PREFIXES


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "HEAD"
            or scope["path"] == "/"
            or scope["path"].startswith(DASHBOARD_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        answered = asyncio.Event()

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)  # its Content-Length stays that of the GET
            elif message["type"] == "http.response.body" and not answered.is_set():
                answered.set()
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def receive_until_answered() -> Message:
            # Once answered, a stream (events) is told the client left, so it stops.
            if answered.is_set():
                return {"type": "http.disconnect"}
            got = asyncio.ensure_future(receive())
            done = asyncio.ensure_future(answered.wait())
            await asyncio.wait({got, done}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            if got.done():
                return got.result()
            got.cancel()
            return {"type": "http.disconnect"}

        await self.app({**scope, "method": "GET"}, receive_until_answered, send_headers_only)
