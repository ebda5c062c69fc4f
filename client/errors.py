"""What the client's calls raise and yield: errors, the wait that ran out, a study's event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from droptune.core.schemas import BestOut


class ClientError(Exception):
    """The server refused a request (with its problem details) or could not be reached.

    `status` is the HTTP status (None when unreachable), `detail` the problem's detail, and
    `errors` the per-field errors of a rejected spec (`[{"field": ..., "message": ...}]`).
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        detail: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail if detail is not None else message
        self.errors = errors or []


class WaitTimedOut(ClientError):
    """`Client.wait` ran out of time before the study ended; `best` is the interim answer
    (state "interim", or "none" when no trial has finished yet)."""

    def __init__(self, study_id: int, timeout: float, best: BestOut) -> None:
        super().__init__(
            f"study {study_id} had not ended after {timeout:g} s ({best.status}): {best.state_why}"
        )
        self.best = best


@dataclass(frozen=True)
class StudyEvent:
    """One server-sent event of a study (`Client.events`)."""

    kind: str  # "progress" (data: the study's id, status, progress, best) | "end" (its status)
    id: str | None  # give it back as `last_event_id` to resume after this event
    data: dict[str, Any]
    retry: float | None  # seconds the server asks a client to wait before reconnecting


def _problem(r: httpx.Response) -> tuple[str, list[dict[str, str]]]:
    """The problem+json detail of an error answer (or its text), and its field errors."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:200] or r.reason_phrase, []
    if not isinstance(body, dict):
        return str(body), []
    raw = body.get("errors")
    errors = raw if isinstance(raw, list) and all(isinstance(e, dict) for e in raw) else []
    return str(body.get("detail") or body.get("title") or body), errors
