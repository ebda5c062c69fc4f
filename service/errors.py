"""Every error as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.errors import DroptuneError
from storage.spec import describe_errors

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = describe_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, "Invalid request", detail, errors=errors)


async def _droptune(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DroptuneError)
    return problem(exc.status, exc.title, exc.detail)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed"}
    return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    # Anything unforeseen: still a problem (Starlette logs the traceback), never bare text.
    return problem(
        500, "Internal error", f"the server failed on this request: {type(exc).__name__}"
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(DroptuneError, _droptune)
    app.add_exception_handler(StarletteHTTPException, _http)
