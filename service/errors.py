"""Every error as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.exceptions import StorageInternalError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from droptune.core.errors import DroptuneError, StorageError, too_large
from droptune.core.spec.strict import describe_errors
from droptune.storage.sql.db import UNREACHABLE, driver_message, outage

PROBLEM = "application/problem+json"
MAX_JSON_DEPTH = 64  # arrays and objects inside each other; a study spec needs 3
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A JSON string (escapes included), and the brackets that nest, for counting the depth.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")

log = logging.getLogger("droptune.api")


class FieldProblem(BaseModel):
    field: str = Field(description="where, dotted: `cv.folds`, `body`, `study_id`")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error droptune answers."""

    type: str = Field(description="`about:blank`: the status and title say what went wrong")
    title: str
    status: int
    detail: str = Field(description="what went wrong with this request, for people")
    errors: list[FieldProblem] = Field(
        default_factory=list, description="the fields at fault, when the request named some (422)"
    )


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# What each status means on any route; a route names its own cases where they differ.
WHY = {
    400: "the body could not be read (not UTF-8 JSON, a malformed form), or the Host header "
    "is not one this server answers to (DROPTUNE_ALLOWED_HOSTS)",
    401: "no token, or one that is not valid (revoked, mistyped): send `Authorization: Bearer`",
    403: "the token's owner may not do this (an admin route, a write on the dashboard)",
    404: "not found",
    409: "the request conflicts with the resource's state",
    413: "the body is larger than the server takes (DROPTUNE_MAX_BODY_MB; uploads: _UPLOAD_MB)",
    429: "a quota of the owner's is used up (DROPTUNE_QUOTA_*): `detail` names it",
    422: "invalid parameters or body: `errors` names each field at fault",
    503: "the database is unavailable: worth retrying",
}
Responses = dict[int | str, dict[str, Any]]


def problems(*codes: int, why: Mapping[int, str] | None = None) -> Responses:
    """FastAPI `responses=` for the errors a route can answer, each a problem+json body;
    `why` gives the route's own description of a status where it says more than `WHY`."""
    return {
        code: {
            "description": (why or {}).get(code, WHY[code]),
            "content": {PROBLEM: {"schema": PROBLEM_REF}},
        }
        for code in codes
    }


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods droptune's own routes take on this path, sorted (empty: no such path).
    Mounts (the dashboard) are not droptune's routes and are skipped."""
    own = [r for r in routes if not isinstance(r, Mount)]
    return [
        method
        for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
        if any(r.matches({**scope, "method": method})[0] is Match.FULL for r in own)
    ]


def problem(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep arrays and objects nest in JSON `text` (brackets inside strings do not count),
    up to just past `limit`: counted, not parsed, so 100 000 levels cost no recursion."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


def body_problem(body: bytes) -> str | None:
    """Why a JSON body cannot be read as droptune reads JSON, or None: it is not UTF-8 (RFC
    8259; Python's json would guess UTF-16 or -32), or it nests beyond MAX_JSON_DEPTH (deeper,
    the parser or the validation runs out of stack: a RecursionError, a 500)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"the body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}): "
            "send JSON encoded as UTF-8"
        )
    if "\x00" in text:  # never in JSON as such; what UTF-16 or -32 looks like read as UTF-8
        return "the body is not UTF-8: it holds NUL bytes (UTF-16 or UTF-32 text?)"
    if json_depth(text) > MAX_JSON_DEPTH:
        return (
            f"the body is nested too deep: more than {MAX_JSON_DEPTH} levels of arrays and "
            "objects inside each other"
        )
    return None


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse this request's body as JSON: no Content-Type, or
    application/json or application/*+json."""
    value: bytes | None = dict(scope["headers"]).get(b"content-type")
    if value is None:
        return True
    kind = value.decode("latin-1").split(";")[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class JsonBodyCheck:
    """ASGI middleware: a JSON body that is not UTF-8 or nests too deep is a 400 problem that
    says so, before any route parses it (FastAPI answered "There was an error parsing the
    body" for both). Inside the body-size limit, so the body it holds is a bounded one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        why = body_problem(body) if body else None
        if why is not None:
            await problem(400, "Bad request", why)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = describe_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, "Invalid request", detail, errors=errors)


async def _droptune(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DroptuneError)
    if exc.errors:
        return problem(exc.status, exc.title, exc.detail, errors=exc.errors)
    return problem(exc.status, exc.title, exc.detail)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {
        400: "Bad request",
        404: "Not found",
        405: "Method not allowed",
        413: "Content too large",
    }
    title = titles.get(exc.status_code, "Error")
    if exc.status_code == 413:  # Starlette's body limit on the upload route
        return problem(413, title, too_large(request.app.state.settings.max_upload_mb))
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError | RecursionError):
        # FastAPI's "error parsing the body", where JsonBodyCheck did not look (a route's own)
        if isinstance(exc.__cause__, UnicodeDecodeError):
            return problem(400, title, "the body is not UTF-8: send JSON encoded as UTF-8")
        return problem(400, title, "the body is nested too deep to read")
    if exc.status_code == 405:  # without the dashboard's catch-all, Starlette answers these
        allow = ", ".join(allowed_methods(request.app.routes, request.scope))
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allow}"
        return problem(405, title, detail, headers={"Allow": allow})
    return problem(exc.status_code, title, str(exc.detail), headers=exc.headers)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    # Anything unforeseen is a bug: the traceback goes to the log, and the body names only the
    # exception's class, never its message (SQL, paths, the database's host).
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem(
        500, "Internal error", f"the server failed on this request: {type(exc).__name__}"
    )


async def _optuna_storage(request: Request, exc: Exception) -> JSONResponse:
    """Optuna's RDBStorage wraps every SQLAlchemy error but IntegrityError in
    StorageInternalError: an outage under it is droptune's 503, anything else a bug (500)."""
    assert isinstance(exc, StorageInternalError)
    cause = exc.__cause__
    detail = UNREACHABLE if cause is None else outage(cause)
    if detail is None:
        return await _internal(request, exc)
    log.warning(
        "Optuna's storage failed on %s %s: %s: %s",
        request.method,
        request.url.path,
        type(cause or exc).__name__,
        driver_message(cause or exc),
    )
    return await _droptune(request, StorageError(detail))


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(DroptuneError, _droptune)
    app.add_exception_handler(StorageInternalError, _optuna_storage)
    app.add_exception_handler(StarletteHTTPException, _http)
    # Innermost of the middleware create_app adds after this: the body limits run first.
    app.add_middleware(JsonBodyCheck)
    document(app)


def document(app: FastAPI) -> None:
    """The OpenAPI document with `Problem` among its schemas, and FastAPI's own 422
    (`HTTPValidationError`, JSON) replaced by the problem+json droptune answers, on any route
    that does not list its errors itself."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem_schema.pop("$defs", {}))
        schemas["Problem"] = problem_schema
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in str(responses.get("422", "")):
                    responses["422"] = problems(422)[422]
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
