"""One hierarchy of errors; the API maps the base class once to problem+json with each status."""

from __future__ import annotations


class DroptuneError(Exception):
    """Base error. `status` is the HTTP status, `title` a short summary; `errors`, when set,
    the fields at fault (`[{"field": "cv.folds", "message": ...}]`, as for a rejected spec)."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors: list[dict[str, str]] = (
            [{"field": field, "message": detail.removeprefix(f"{field}: ")}]
            if field is not None
            else []
        )


class StorageError(DroptuneError):
    """The database could not be used (unreachable, locked, out of connections): worth retrying.
    Bugs and broken constraints are not this (see droptune.storage.sql.db.outage)."""

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


class TooLarge(DroptuneError):
    status = 413
    title = "Content too large"


def too_large(max_upload_mb: float) -> str:
    return (
        "the upload is larger than the largest this server takes "
        f"(DROPTUNE_MAX_UPLOAD_MB={max_upload_mb:g})"
    )


class Forbidden(DroptuneError):
    status = 403
    title = "Forbidden"
