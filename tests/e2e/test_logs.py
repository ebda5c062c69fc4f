"""DROPTUNE_LOG_FORMAT=json: one JSON object per line, with the request, study, trial and
worker it is about; unit tests of the formatter and the ids, then a real server and worker."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from droptune.client import Client
from droptune.core import logs
from tests import procs

FIELDS = {"time", "level", "logger", "message"}
JSON = {"DROPTUNE_LOG_FORMAT": "json"}
TINY = {
    "name": "logs",
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 2},
    "cv": {"folds": 2},
    "search": {"n_trials": 1},
}


def _line(msg: str, exc: bool = False, **extra: Any) -> dict[str, Any]:
    """`msg` logged through the filter and the formatter, parsed back."""
    record = logging.LogRecord("droptune.test", logging.WARNING, __file__, 1, msg, (), None)
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            record.exc_info = sys.exc_info()
    for k, v in extra.items():
        setattr(record, k, v)
    logs.IdsFilter().filter(record)
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_a_line_carries_the_ids_bound_where_it_was_logged() -> None:
    assert _line("plain").keys() == FIELDS
    logs.bind_process(worker="w-1")
    try:
        with logs.bound(request="r-1", study=3):
            line = _line("two\nlines", exc=True, trial=[4, 5])
            with logs.bound(study=None):  # None takes one away
                inner = _line("inner")
        seen: list[dict[str, Any]] = []
        # Another thread has the process's ids, not this context's.
        t = threading.Thread(target=lambda: seen.append(_line("thread")))
        t.start()
        t.join()
        after = _line("after", study=9)  # `extra` is used as given
    finally:
        logs.bind_process(worker=None)
    assert line["message"] == "two\nlines" and line["level"] == "WARNING"
    assert (line["request"], line["study"], line["trial"], line["worker"]) == (
        "r-1",
        3,
        [4, 5],
        "w-1",
    )
    assert "RuntimeError: boom" in line["exc"]
    assert "study" not in inner and inner["request"] == "r-1"
    assert seen[0]["worker"] == "w-1" and "request" not in seen[0]
    assert after["study"] == 9 and "request" not in after
    assert "worker" not in _line("unbound")


def test_an_unknown_format_is_refused_in_one_line(tmp_path: Path) -> None:
    assert logs.log_format("JSON") == "json"
    env = {**os.environ, "DROPTUNE_LOG_FORMAT": "xml"}
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    r = procs.cli("serve", "--database-url", url, env=env, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: DROPTUNE_LOG_FORMAT='xml': must be one of text, json"
    assert not (tmp_path / "droptune.db").exists()  # refused before anything was done


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    assert lines, path
    parsed = []
    for text in lines:
        try:
            line = json.loads(text)
        except ValueError:
            pytest.fail(f"{path.name}: not JSON: {text!r}")
        assert isinstance(line, dict) and line.keys() >= FIELDS, text
        parsed.append(line)
    return parsed


@pytest.mark.slow
def test_serve_and_worker_log_json_lines_with_their_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'droptune.db'}"
    port = procs.free_port()
    api = procs.serve(url, port, tmp_path / "serve.log", JSON)
    work = procs.worker(url, tmp_path / "worker.log", JSON)
    base = f"http://127.0.0.1:{port}"
    try:
        with Client(base) as c:
            study = c.submit(TINY)
            assert c.best(study.id, wait=120).status == "succeeded"
            worker_id = c.workers()[0].id
        asked = httpx.get(f"{base}/studies/{study.id}", headers={"X-Request-ID": "trace-7"})
        assert asked.headers["X-Request-ID"] == "trace-7"
    finally:
        assert procs.stop(work) == 0
        procs.stop(api)
    served = _json_lines(tmp_path / "serve.log")
    access = [x for x in served if x["logger"] == "uvicorn.access"]
    assert access and all(len(x["request"]) == 32 or x["request"] == "trace-7" for x in access)
    traced = [x for x in access if x["request"] == "trace-7"]
    assert len(traced) == 1 and traced[0]["study"] == study.id
    assert any(x["logger"] == "uvicorn.error" for x in served)  # uvicorn's own lines too
    worked = _json_lines(tmp_path / "worker.log")
    # From its first line on (the migration's lines come before it has an id), every line.
    first = next(i for i, x in enumerate(worked) if x["logger"] == "droptune.worker")
    assert all(x["worker"] == worker_id for x in worked[first:])
    training = [x for x in worked if f"study {study.id} trials" in x["message"]]
    assert training and all(x["study"] == study.id and x["trial"] for x in training)
    assert all("study" not in x for x in worked if x["message"].endswith(" stopped"))
