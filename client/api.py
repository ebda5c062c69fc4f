"""A small typed HTTP client for scripts: `Client(base_url).submit(spec)`, `.best(id, wait=60)`."""

from __future__ import annotations

import builtins
from typing import Any

import httpx

from storage.schemas import BestOut, StudyOut, StudyPage, TrialOut, WorkerOut
from storage.spec import StudySpec

DEFAULT_URL = "http://127.0.0.1:8000"


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


class Client:
    def __init__(
        self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ClientError(f"not a URL: {base_url!r} ({exc})") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ClientError(f"not an http(s) URL: {base_url!r}")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        if timeout is not None:
            kw["timeout"] = timeout
        try:
            r = self._http.request(method, path, **kw)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ClientError(f"cannot reach droptune at {self.base_url}: {exc}") from exc
        if r.status_code >= 400:
            detail, errors = _problem(r)
            raise ClientError(f"{r.status_code}: {detail}", r.status_code, detail, errors)
        try:
            return r.json()
        except ValueError as exc:
            raise ClientError(
                f"{self.base_url}{path} answered {r.status_code} without JSON: is it droptune?"
            ) from exc

    def submit(self, spec: StudySpec | dict[str, Any]) -> StudyOut:
        body = (
            spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, StudySpec) else spec
        )
        return StudyOut.model_validate(self._call("POST", "/studies", json=body))

    def get(self, study_id: int) -> StudyOut:
        return StudyOut.model_validate(self._call("GET", f"/studies/{study_id}"))

    def list(self, status: str | None = None, offset: int = 0, limit: int = 50) -> StudyPage:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        return StudyPage.model_validate(self._call("GET", "/studies", params=params))

    def best(self, study_id: int, wait: float = 0.0) -> BestOut:
        """The best rate; with `wait`, the server holds the call until the study ends."""
        return BestOut.model_validate(
            self._call(
                "GET", f"/studies/{study_id}/best", params={"wait": wait}, timeout=wait + 30.0
            )
        )

    def trials(self, study_id: int) -> builtins.list[TrialOut]:
        return [
            TrialOut.model_validate(t) for t in self._call("GET", f"/studies/{study_id}/trials")
        ]

    def cancel(self, study_id: int) -> StudyOut:
        return StudyOut.model_validate(self._call("POST", f"/studies/{study_id}/cancel"))

    def workers(self, include_stopped: bool = False) -> builtins.list[WorkerOut]:
        data = self._call("GET", "/workers", params={"include_stopped": include_stopped})
        return [WorkerOut.model_validate(w) for w in data]

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/healthz")
        return result
