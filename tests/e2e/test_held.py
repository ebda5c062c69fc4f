"""Held requests against a real API (issue 19, item 2): a `?wait=` whose client has gone stops
at once instead of polling the database until its wait runs out; held requests wait on the
process's one watcher; each owner may hold at most DROPTUNE_MAX_HELD_PER_OWNER of them (event
streams included), one more is a 429 naming the limit."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import httpx
import pytest

from tests import procs

pytestmark = pytest.mark.slow

CAP = 4
SPEC = {"dataset": {"builtin": "iris"}, "search": {"n_trials": 2}}


def held(base: str) -> int:
    text = httpx.get(f"{base}/metrics").text
    found = re.search(r"^droptune_api_held_requests (\S+)$", text, re.M)
    assert found, "droptune_api_held_requests is missing from /metrics"
    return int(float(found.group(1)))


def abandoned_wait(port: int, study_id: int) -> socket.socket:
    """A raw `?wait=600` request whose client will close without reading an answer."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /studies/{study_id}/best?wait=600 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return s


def test_abandoned_waits_end_with_their_clients_and_are_capped(db_url: str, tmp_path: Path) -> None:
    port = procs.free_port()
    log = tmp_path / "serve.log"
    extra = {"DROPTUNE_MAX_HELD_PER_OWNER": str(CAP)}
    proc = procs.serve(db_url, port, log, extra)
    base = f"http://127.0.0.1:{port}"
    try:
        sid = httpx.post(f"{base}/studies", json=SPEC).json()["id"]  # queued: no worker runs
        socks = [abandoned_wait(port, sid) for _ in range(CAP)]
        procs.wait_until(lambda: held(base) == CAP, 10, f"{CAP} held requests")

        # One more, a wait or an event stream, is refused at once, naming the limit.
        for path in (f"/studies/{sid}/best?wait=600", f"/studies/{sid}/events"):
            r = httpx.get(base + path, timeout=10)
            assert r.status_code == 429, (path, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/problem+json"
            assert f"DROPTUNE_MAX_HELD_PER_OWNER={CAP}" in r.json()["detail"]
        assert httpx.get(f"{base}/studies/{sid}/best").status_code == 200  # not held: no cap

        for s in socks:  # the clients go: their requests end with them, not in ten minutes
            s.close()
        procs.wait_until(lambda: held(base) == 0, 10, "the abandoned waits to end")

        # A held request still ends when the study does (woken by the watcher).
        answers: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: answers.append(
                httpx.get(f"{base}/studies/{sid}/best?wait=120", timeout=130)
            )
        )
        waiter.start()
        procs.wait_until(lambda: held(base) == 1, 10, "the wait to be held")
        assert httpx.post(f"{base}/studies/{sid}/cancel").status_code == 200
        waiter.join(60)
        assert not waiter.is_alive(), "the held request did not end with its study"
        assert answers[0].status_code == 200, answers[0].text
        assert held(base) == 0
        # An event stream's place is given back when it closes.
        with httpx.stream("GET", f"{base}/studies/{sid}/events") as r:
            assert r.status_code == 200
            assert "end" in r.read().decode()
        procs.wait_until(lambda: held(base) == 0, 10, "the stream's place to be given back")
    finally:
        procs.stop(proc)
