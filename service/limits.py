"""The upload size limit as problem+json, before the body is read where its length is declared.

Starlette's own body limit answers 413 in plain text; this one speaks droptune's errors. A body
without a declared length (chunked) is counted as it arrives and cut off at the limit, whatever
the route then makes of the missing rest: the client gets the 413.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from droptune.storage.errors import too_large

PROBLEM = b"application/problem+json"


class _TooLarge(Exception):
    pass


class UploadLimit:
    def __init__(self, app: ASGIApp, path: str, max_bytes: int, max_upload_mb: float) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes
        self.body = json.dumps(
            {
                "type": "about:blank",
                "title": "Content too large",
                "status": 413,
                "detail": too_large(max_upload_mb),
            }
        ).encode()

    async def _refuse(self, send: Send) -> None:
        headers = [(b"content-type", PROBLEM), (b"content-length", str(len(self.body)).encode())]
        # The rest of the body is never read: the client must not keep the connection.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > self.max_bytes
        ):
            await self._refuse(send)
            return
        seen = 0
        tripped = False
        started = False

        async def counted() -> Message:
            nonlocal seen, tripped
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                tripped = True
                raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if tripped:  # whatever the route answered to a cut-off body: the 413 instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            if not started:
                started = True
                await self._refuse(send)
