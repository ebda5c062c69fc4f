"""Body size limits as problem+json, before the body is read where its length is declared.

Uploads (`POST /datasets`) may be DROPTUNE_MAX_UPLOAD_MB (plus the form's overhead); every other
body (JSON) DROPTUNE_MAX_BODY_MB. Starlette's own body limit answers 413 in plain text; this one
speaks droptune's errors. A body without a declared length (chunked) is counted as it arrives
and cut off at the limit, whatever the route then makes of the missing rest: the client gets
the 413.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from droptune.core.errors import too_large
from droptune.service.routes.datasets import FORM_OVERHEAD, upload_limit
from droptune.service.settings import ServiceSettings

PROBLEM = b"application/problem+json"


class _TooLarge(Exception):
    pass


def _problem(detail: str) -> bytes:
    body = {"type": "about:blank", "title": "Content too large", "status": 413, "detail": detail}
    return json.dumps(body).encode()


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: ServiceSettings, upload_path: str) -> None:
        self.app = app
        self.upload_path = upload_path
        self.upload = (
            upload_limit(settings) + FORM_OVERHEAD,
            _problem(too_large(settings.max_upload_mb)),
        )
        detail = (
            "the body is larger than the largest this server takes "
            f"(DROPTUNE_MAX_BODY_MB={settings.max_body_mb:g})"
        )
        self.other = (int(settings.max_body_mb * 2**20), _problem(detail))

    async def _refuse(self, send: Send, body: bytes) -> None:
        headers = [(b"content-type", PROBLEM), (b"content-length", str(len(body)).encode())]
        # The rest of the body is never read: the client must not keep the connection.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"] == self.upload_path
        max_bytes, body = self.upload if upload else self.other
        declared = dict(scope["headers"]).get(b"content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > max_bytes
        ):
            await self._refuse(send, body)
            return
        seen = 0
        tripped = False
        started = False

        async def counted() -> Message:
            nonlocal seen, tripped
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                tripped = True
                raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if tripped:  # whatever the route answered to a cut-off body: the 413 instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send, body)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            if not started:
                started = True
                await self._refuse(send, body)
