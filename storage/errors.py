"""One hierarchy of errors; the API maps the base class once to problem+json with each status."""

from __future__ import annotations


class DroptuneError(Exception):
    """Base error. `status` is the HTTP status, `title` a short summary."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class StorageError(DroptuneError):
    """The database failed (unreachable, locked, constraint broken)."""

    status = 503
    title = "Storage unavailable"


class NotFound(DroptuneError):
    status = 404
    title = "Not found"


class Conflict(DroptuneError):
    status = 409
    title = "Conflict"


class Invalid(DroptuneError):
    status = 422
    title = "Invalid request"


class Forbidden(DroptuneError):
    status = 403
    title = "Forbidden"
