"""Every error as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.exceptions import StorageInternalError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from droptune.storage.db import UNREACHABLE, driver_message, outage
from droptune.storage.errors import DroptuneError, StorageError, too_large
from droptune.storage.spec import describe_errors

PROBLEM = "application/problem+json"

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
    400: "the body could not be read (not UTF-8 JSON, a malformed form)",
    404: "not found",
    409: "the request conflicts with the resource's state",
    413: "the upload is larger than DROPTUNE_MAX_UPLOAD_MB",
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
