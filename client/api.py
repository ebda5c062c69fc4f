"""A small typed HTTP client for scripts: `Client(base_url).submit(spec)`, `.best(id, wait=60)`."""

from __future__ import annotations

import builtins
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, overload

import httpx
from httpx_sse import SSEError, connect_sse

# the errors and events are client/errors.py's; named here too, where scripts import them from
from droptune.client.errors import ClientError as ClientError
from droptune.client.errors import StudyEvent as StudyEvent
from droptune.client.errors import WaitTimedOut as WaitTimedOut
from droptune.client.errors import _problem
from droptune.core.answer.curve import Curve
from droptune.core.schemas import (
    BestOut,
    DatasetOut,
    DatasetPage,
    ModelOut,
    StudyOut,
    StudyPage,
    TrialOut,
    TrialPage,
    WorkerOut,
)
from droptune.core.spec.study import StudySpec

DEFAULT_URL = "http://127.0.0.1:8000"
TRIALS_PAGE = 1000  # the largest page GET /studies/{id}/trials serves: fewest round trips
# A submit is sent again this many times after a connection error (with the same key), after
# RETRY_PAUSE_S, doubling: 0.5 + 1 + 2 s, long enough for an API that restarts at once.
SUBMIT_RETRIES, RETRY_PAUSE_S = 3, 0.5


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`base_url` and `token` default to DROPTUNE_URL (else http://127.0.0.1:8000) and
        DROPTUNE_TOKEN, as for the CLI. `transport` replaces the network (None: real HTTP),
        e.g. to call an app in-process."""
        base_url = base_url or os.environ.get("DROPTUNE_URL") or DEFAULT_URL
        token = (os.environ.get("DROPTUNE_TOKEN") if token is None else token) or None
        if token is not None:
            token = token.strip()  # a newline pasted with it
            if not token.isascii() or not token.isprintable() or " " in token:
                raise ClientError(
                    "the token (DROPTUNE_TOKEN) holds spaces or characters a token cannot have"
                )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ClientError(f"not a URL: {base_url!r} ({exc})") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ClientError(f"not an http(s) URL: {base_url!r}")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.last_status: int | None = None  # the last answer's HTTP status (200 vs 201)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        retries: int = 0,
        **kw: Any,
    ) -> Any:
        """One request; a refusal (>= 400) or an unreachable API raises ClientError. With
        `retries`, the same request is sent again after a connection error (only for a request
        that is safe to repeat: an idempotent one, or one carrying an Idempotency-Key)."""
        if timeout is not None:
            kw["timeout"] = timeout
        r = self._request(method, path, retries, **kw)
        self.last_status = r.status_code
        if r.status_code >= 400:
            detail, errors = _problem(r)
            raise ClientError(f"{r.status_code}: {detail}", r.status_code, detail, errors)
        return r

    def _request(self, method: str, path: str, retries: int, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return self._http.request(method, path, **kw)
            except httpx.TransportError as exc:  # refused, reset, timed out: maybe never sent
                if attempt >= retries:
                    raise self._unreachable(exc) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self._unreachable(exc) from exc
            time.sleep(RETRY_PAUSE_S * 2**attempt)
            attempt += 1

    def _unreachable(self, exc: Exception) -> ClientError:
        return ClientError(
            f"cannot reach droptune at {self.base_url}: {exc} (start it with `droptune up`, "
            "or point --url / DROPTUNE_URL at a running one)"
        )

    def _call(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        r = self._send(method, path, timeout=timeout, **kw)
        if r.status_code == 204:
            return None
        try:
            return r.json()
        except ValueError as exc:
            raise ClientError(
                f"{self.base_url}{path} answered {r.status_code} without JSON: is it droptune?"
            ) from exc

    def submit(self, spec: StudySpec | dict[str, Any]) -> StudyOut:
        """Queue a study. The request carries a fresh Idempotency-Key and is sent again, with
        that key, when the connection fails: a submit whose answer was lost (the API died
        after storing it, say) is answered the study it made, never queued twice. `last_status`
        is 201, or 200 when a retry found the study stored."""
        body = (
            spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, StudySpec) else spec
        )
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        out = self._call("POST", "/studies", json=body, headers=headers, retries=SUBMIT_RETRIES)
        return StudyOut.model_validate(out)

    def get(self, study_id: int) -> StudyOut:
        return StudyOut.model_validate(self._call("GET", f"/studies/{study_id}"))

    def list(
        self,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
        owner: str | None = None,
    ) -> StudyPage:
        """A page of your studies, newest first (an admin's: everyone's, or `owner`'s)."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        if owner is not None:
            params["owner"] = owner
        return StudyPage.model_validate(self._call("GET", "/studies", params=params))

    def best(self, study_id: int, wait: float = 0.0) -> BestOut:
        """The answer; with `wait`, the server holds the call until the study ends or `wait`
        seconds pass. Check `.state`: "final" once the study has ended, "interim" when the wait
        ran out first, "none" when no trial has finished (`.state_why` says which)."""
        return BestOut.model_validate(
            self._call(
                "GET", f"/studies/{study_id}/best", params={"wait": wait}, timeout=wait + 30.0
            )
        )

    def wait(self, study_id: int, timeout: float = 3600.0) -> BestOut:
        """The final answer: held on the server (a call at a time, each as long as the server
        allows) until the study ends. Raises WaitTimedOut, carrying the interim answer, when
        `timeout` seconds pass first; ClientError as every call does."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            best = self.best(study_id, wait=max(left, 0.0))
            if best.complete:  # state "final", or "none" for a study that ended without one
                return best
            if left <= 0 or time.monotonic() >= deadline:
                raise WaitTimedOut(study_id, timeout, best)

    def events(
        self, study_id: int, last_event_id: str | None = None, *, idle_timeout: float = 60.0
    ) -> Iterator[StudyEvent]:
        """The study's server-sent events, until `end` or until the server closes the stream.
        With `last_event_id` the stream resumes after that event: none is repeated (nothing
        comes until the next change, when nothing changed since; nothing at all past `end`).

        Raises ClientError: refused (with its status), unreachable or dropped (no status), no
        byte for `idle_timeout` seconds (the server sends a keep-alive every 15 s; no status),
        or an answer that is not an event stream (an older server or a proxy; its status).
        Reconnecting is the caller's choice."""
        path = f"/studies/{study_id}/events"
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(self._http.timeout.connect, read=idle_timeout)
        retry = None
        status = None
        try:
            with connect_sse(self._http, "GET", path, headers=headers, timeout=timeout) as source:
                r = source.response
                self.last_status = status = r.status_code
                if r.status_code >= 400:
                    r.read()
                    detail, errors = _problem(r)
                    raise ClientError(f"{r.status_code}: {detail}", r.status_code, detail, errors)
                if r.status_code == 204:  # resumed past `end`
                    return
                for sse in source.iter_sse():
                    retry = sse.retry / 1000 if sse.retry is not None else retry
                    if sse.data:  # a bare `retry:` carries none
                        yield StudyEvent(sse.event, sse.id or None, json.loads(sse.data), retry)
        except (SSEError, ValueError) as exc:  # SSEError first: it is an httpx.TransportError
            raise ClientError(
                f"{self.base_url}{path} is not a droptune event stream ({exc}): an older "
                "server, or a proxy in between?",
                status,
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ClientError(f"study {study_id}'s events from {self.base_url}: {exc}") from exc

    def _raw(self, path: str, **params: Any) -> httpx.Response:
        """A GET whose answer is not JSON (a file, a picture), with the same errors as _call."""
        r: httpx.Response = self._send("GET", path, params=params)
        return r

    def download_model(
        self, study_id: int, path: str | os.PathLike[str] | None = None, which: str = "recommended"
    ) -> Path:
        """Save the study's refit model (a torch.export .pt2 file) to `path` (default: the name
        the server gives it, in the current folder); return where it went."""
        r = self._raw(f"/studies/{study_id}/model", which=which)
        disposition = r.headers.get("content-disposition", "")
        default = disposition.split("filename=")[-1].strip('"') or f"droptune-{study_id}.pt2"
        out = Path(path) if path is not None else Path(Path(default).name)
        out.write_bytes(r.content)
        return out

    def trials(
        self, study_id: int, offset: int = 0, limit: int | None = None
    ) -> builtins.list[TrialOut]:
        """The study's trials by number: `limit` of them from `offset`, or (None) every one from
        `offset`, fetched a page of TRIALS_PAGE at a time."""
        if limit is not None:
            return self.trial_page(study_id, offset, limit).items
        out: builtins.list[TrialOut] = []
        while True:
            page = self.trial_page(study_id, offset, TRIALS_PAGE)
            out += page.items
            if not page.items or offset + len(page.items) >= page.total:
                return out
            offset += len(page.items)

    def trial_page(self, study_id: int, offset: int = 0, limit: int = 100) -> TrialPage:
        """One page of the study's trials by number, `{items, total, offset, limit}`."""
        params = {"offset": offset, "limit": limit}
        return TrialPage.model_validate(
            self._call("GET", f"/studies/{study_id}/trials", params=params)
        )

    @overload
    def curve(self, study_id: int, format: Literal["json"] = "json") -> Curve: ...
    @overload
    def curve(self, study_id: int, format: Literal["svg", "png"]) -> bytes: ...
    def curve(self, study_id: int, format: str = "json") -> Curve | bytes:
        """The dropout curve: its points (json), or the picture's bytes (svg, png)."""
        path = f"/studies/{study_id}/curve"
        if format == "json":
            return Curve.model_validate(self._call("GET", path))
        return self._raw(path, format=format).content

    def cancel(self, study_id: int) -> StudyOut:
        return StudyOut.model_validate(self._call("POST", f"/studies/{study_id}/cancel"))

    def delete_study(self, study_id: int) -> None:
        """Delete an ended study with its trials and models (409 while it is queued or
        running: `cancel` it first)."""
        self._call("DELETE", f"/studies/{study_id}")

    def workers(self, include_stopped: bool = False) -> builtins.list[WorkerOut]:
        data = self._call("GET", "/workers", params={"include_stopped": include_stopped})
        return [WorkerOut.model_validate(w) for w in data]

    def models(self) -> builtins.list[ModelOut]:
        """The custom models the workers can build (`model.kind: custom`)."""
        return [ModelOut.model_validate(m) for m in self._call("GET", "/models")]

    def upload_dataset(
        self,
        data: str | os.PathLike[str] | Any,
        *,
        target: str | None = None,
        name: str | None = None,
        task: str | None = None,
        timeout: float = 600.0,
    ) -> DatasetOut:
        """Upload a data set and return its record: the stored one if these bytes were
        uploaded before and read the same way (then `last_status` is 200, else 201).

        `data`: a CSV, NPZ or Parquet file's path; a pandas DataFrame (sent as CSV); or an
        `(X, y)` pair of arrays (sent as NPZ; X may be (N, H, W) / (N, C, H, W) images)."""
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            return self._upload(path, path.name, target, name, task, timeout)
        with tempfile.TemporaryDirectory(prefix="droptune-upload-") as tmp:
            if hasattr(data, "to_csv"):  # a pandas DataFrame (its index is not a column)
                rows, cols = data.shape
                path = Path(tmp) / f"dataframe-{rows}x{cols}.csv"
                data.to_csv(path, index=False)
            elif isinstance(data, tuple) and len(data) == 2:
                import numpy as np

                X, y = np.asarray(data[0]), np.asarray(data[1])
                # Object arrays would be pickled, which the server refuses: labels as text.
                if y.dtype == object:
                    y = y.astype(str)
                if X.dtype == object:
                    try:
                        X = X.astype(np.float64)
                    except (TypeError, ValueError) as exc:
                        raise ClientError(f"X must hold numbers: {exc}") from exc
                path = Path(tmp) / f"arrays-{'x'.join(map(str, X.shape))}.npz"
                np.savez(path, X=X, y=y)
            else:
                raise ClientError(
                    "upload_dataset takes a file path, a pandas DataFrame or an (X, y) pair, "
                    f"not {type(data).__name__}"
                )
            return self._upload(path, name or path.name, target, name, task, timeout)

    def _upload(
        self,
        path: Path,
        filename: str,
        target: str | None,
        name: str | None,
        task: str | None,
        timeout: float,
    ) -> DatasetOut:
        form = {k: v for k, v in {"name": name, "target": target, "task": task}.items() if v}
        try:
            f = path.open("rb")
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from exc
        with f:
            body = self._call(
                "POST", "/datasets", files={"file": (filename, f)}, data=form, timeout=timeout
            )
        return DatasetOut.model_validate(body)

    def dataset(self, dataset_id: int) -> DatasetOut:
        return DatasetOut.model_validate(self._call("GET", f"/datasets/{dataset_id}"))

    def datasets(self, offset: int = 0, limit: int = 50) -> DatasetPage:
        params = {"offset": offset, "limit": limit}
        return DatasetPage.model_validate(self._call("GET", "/datasets", params=params))

    def delete_dataset(self, dataset_id: int) -> None:
        self._call("DELETE", f"/datasets/{dataset_id}")

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/healthz")
        return result
