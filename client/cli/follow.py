"""`droptune wait`'s progress bar: it follows the study's event stream, resumes it after a
dropped connection, and polls where the stream is no use (an older server, a proxy)."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
from pydantic import ValidationError

from droptune.client.api import Client, ClientError, StudyEvent
from droptune.client.cli.common import fail
from droptune.core.escape import safe
from droptune.core.schemas import BestOut, Progress, StudyOut
from droptune.core.states import ENDED

OUTAGE = (502, 503, 504)  # an API restarting behind a proxy: waited out, like no answer
POLL_S = 1.0
RETRY_S = 2.0  # before reconnecting, until the server says otherwise (its `retry:`)
STREAM_TRIES = 3  # connections in a row that end without an event: give up on the stream


def progress_bar(quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]study {task.fields[sid]}[/] {task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        transient=quiet,
        disable=not sys.stderr.isatty() and quiet,
    )


class Bar:
    """One study's line in the progress bar, and the last status it showed."""

    def __init__(self, bar: Any, study: StudyOut) -> None:
        self._bar = bar
        self._task = bar.add_task("", total=None, sid=study.id, state="", best="")
        self.status: str = study.status
        self.show(study.status, study.progress, study.best)

    def show(self, status: str, p: Progress, b: BestOut | None) -> None:
        self.status = status
        best = (
            f"best {b.dropout:.3f} ({b.score.mean:.4f})"
            if b and b.score and b.dropout is not None
            else ""
        )
        done = p.complete + p.pruned
        from rich.markup import escape  # rich loads only when a bar is shown

        # The status is the server's word, shown through rich's markup: escaped for both.
        state = escape(safe(status))
        self._bar.update(self._task, total=p.n_trials, completed=done, state=state, best=best)

    def show_event(self, data: dict[str, Any]) -> None:
        try:
            best = BestOut.model_validate(data["best"]) if data.get("best") else None
            self.show(str(data["status"]), Progress.model_validate(data["progress"]), best)
        except (KeyError, ValidationError):
            pass  # another server version's fields: the next poll or event shows the rest

    def note(self, state: str) -> None:
        self._bar.update(self._task, state=state)


def follow(c: Client, first: StudyOut, bar: Any, deadline: float) -> tuple[StudyOut | None, str]:
    """Show the study in the bar until it ends or the deadline passes: (its record when it
    ended, else None; the last status seen). Follows the event stream, else polls."""
    view = Bar(bar, first)
    if first.status in ENDED:
        return first, first.status
    if _stream(c, first.id, view, deadline) == "deadline":
        return None, view.status
    # The stream said the study ended (one read fetches its record), or it was no use.
    return _poll(c, first.id, view, deadline)


def _stream(c: Client, study_id: int, view: Bar, deadline: float) -> str:
    """Follow the study's events: "end" once they say it ended, "deadline", or "poll" when the
    stream is no use (refused, or not an event stream: an older server or a proxy; or
    STREAM_TRIES connections in a row that gave nothing, as behind a proxy that buffers it). A
    dropped stream (an API restart) is resumed after the server's retry delay with
    Last-Event-ID: no event is shown twice."""
    last_id: str | None = None
    retry_s = RETRY_S
    empty = 0  # connections in a row that gave no event
    while empty < STREAM_TRIES:
        events = 0
        refused = False  # not reached at all (an API restarting): waited out, not counted
        for item in _events_until(c, study_id, last_id, deadline):
            if item is None:
                return "deadline"
            if isinstance(item, ClientError):
                if item.status is not None and item.status not in OUTAGE:
                    return "poll"
                why = "unreachable" if item.status is None else f"answers {item.status}"
                view.note(f"API {why}, reconnecting")
                refused = isinstance(item.__cause__, httpx.ConnectError | httpx.ConnectTimeout)
                break
            events += 1
            last_id, retry_s = item.id or last_id, item.retry or retry_s
            if item.kind == "end":
                return "end"
            if item.kind == "progress":
                view.show_event(item.data)
        if events:
            empty = 0
        elif not refused:
            empty += 1
        time.sleep(max(0.0, min(retry_s, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            return "deadline"
    return "poll"


def _events_until(
    c: Client, study_id: int, last_id: str | None, deadline: float
) -> Iterator[StudyEvent | ClientError | None]:
    """One connection's events, then its ClientError if it failed; None when the deadline
    passes first. Read in a thread of its own: a quiet stream blocks in a read for as long as
    nothing changes, and the deadline must not wait for that."""
    items: queue.Queue[StudyEvent | ClientError | None] = queue.Queue()

    def read() -> None:
        try:
            for event in c.events(study_id, last_event_id=last_id):
                items.put(event)
        except ClientError as exc:
            items.put(exc)
        finally:
            items.put(None)  # the stream is over

    threading.Thread(target=read, name=f"droptune events {study_id}", daemon=True).start()
    while True:
        left = deadline - time.monotonic()
        try:
            item = items.get(timeout=None if left == float("inf") else max(0.0, left))
        except queue.Empty:
            yield None
            return
        if item is None:
            return
        yield item


def _poll(c: Client, study_id: int, view: Bar, deadline: float) -> tuple[StudyOut | None, str]:
    """Poll the study into the bar until it ends or the deadline. An API that answers 502-504
    or not at all is waited out (a restart); any other refusal ends the command."""
    while True:
        try:
            s = c.get(study_id)
        except ClientError as exc:
            if exc.status is not None and exc.status not in OUTAGE:
                fail(str(exc))
            why = "unreachable" if exc.status is None else f"answers {exc.status}"
            view.note(f"API {why}, retrying")
        else:
            view.show(s.status, s.progress, s.best)
            if s.status in ENDED:
                return s, s.status
        if time.monotonic() >= deadline:
            return None, view.status
        time.sleep(max(0.0, min(POLL_S, deadline - time.monotonic())))
