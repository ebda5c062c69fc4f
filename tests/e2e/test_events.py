"""GET /studies/{id}/events against a real API: keep-alive pings, resuming with Last-Event-ID
without repeats, the `end` event, 404, and `droptune wait` following the stream (and resuming
it across an API restart)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from droptune.client import Client
from droptune.client.api import ClientError
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue
from droptune.storage.jobs.notify import StudyWatcher
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.sql.db import create_engine
from droptune.storage.submit import submits
from tests import procs

pytestmark = pytest.mark.slow

# Pings every 0.2 s; on PostgreSQL no periodic check, so only NOTIFY can move a stream.
FAST_EVENTS = {"DROPTUNE_EVENTS_PING_SECONDS": "0.2", "DROPTUNE_EVENTS_CHECK_SECONDS": "600"}
QUICK = {
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 20},  # a batch of trials runs for a second or more
    "cv": {"folds": 2},
    # the search before issue 21 (TPE, median pruning, all n_trials): 4 trials complete
    "search": {"n_trials": 4, "batch_trials": 2, "strategy": "optuna"},
}


@contextlib.contextmanager
def api(url: str, log: Path, port: int | None = None) -> Iterator[str]:
    """A real `droptune serve` with fast pings (no worker unless the test starts one)."""
    port = port or procs.free_port()
    proc = procs.serve(url, port, log, FAST_EVENTS)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop(proc)


def lines(base: str, study_id: int, seconds: float, last_id: str | None = None) -> list[str]:
    """The raw stream's lines for `seconds` (a queued study's stream does not end by itself)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    out: list[str] = []
    until = time.monotonic() + seconds
    with httpx.stream("GET", f"{base}/studies/{study_id}/events", headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        for line in r.iter_lines():
            out.append(line)
            if time.monotonic() > until:
                return out
    raise AssertionError(f"the stream ended: {out}")


def test_pings_resuming_the_end_and_wait_across_a_restart(sqlite_url: str, tmp_path: Path) -> None:
    port = procs.free_port()
    with api(sqlite_url, tmp_path / "serve.log", port) as base, Client(base) as c:
        sid = c.submit(QUICK).id  # no worker: it stays queued until cancelled
        first = lines(base, sid, 1.0)
        assert first[:2] == ["retry: 2000", ""]
        assert [x for x in first if x.startswith(("id:", "event:"))] == ["id: 0", "event: progress"]
        assert sum(x.startswith(": ping") for x in first) >= 2
        # Resumed after the only event there was: pings and nothing else until a change.
        resumed = lines(base, sid, 1.0, last_id="0")
        assert [x for x in resumed if x and not x.startswith(": ping")] == ["retry: 2000"]
        assert sum(x.startswith(": ping") for x in resumed) >= 2
        with pytest.raises(ClientError) as missing:
            list(c.events(999))
        assert missing.value.status == 404 and missing.value.detail == "study 999 not found"
        gone = httpx.get(f"{base}/studies/999/events")
        assert gone.headers["content-type"] == "application/problem+json"
        late = procs.cli("wait", str(sid), "--url", base, "--timeout", "1")
        assert late.returncode == 2, late.stderr
        assert late.stderr.strip().splitlines()[-1] == f"study {sid} still queued after 1s"
        assert "Traceback" not in late.stderr and "Exception" not in late.stderr, late.stderr
        following = f'"GET /studies/{sid}/events HTTP/1.1" 200'
        log = tmp_path / "serve.log"
        streams = log.read_text().count(following)
        wait = subprocess.Popen(
            [sys.executable, "-m", "droptune.client.cli", "wait", str(sid), "--url", base],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            procs.wait_until(lambda: log.read_text().count(following) > streams, 30, "wait")
        except AssertionError:
            wait.kill()
            raise
    # The API restarts under `wait`: its stream drops, and it resumes on the new one.
    try:
        with api(sqlite_url, tmp_path / "serve2.log", port) as base, Client(base) as c:
            log = tmp_path / "serve2.log"
            procs.wait_until(lambda: following in log.read_text(), 30, "wait to reconnect")
            c.cancel(sid)
            out, err = wait.communicate(timeout=30)
            got = list(c.events(sid, last_event_id="0"))
            assert [(e.kind, e.id) for e in got] == [("progress", "2"), ("end", "3")]
            assert got[0].data["status"] == "cancelled" and got[1].data == {"status": "cancelled"}
            assert got[0].retry == 2.0
            # After the progress event: only `end`; after `end`: nothing (204: no reconnect).
            assert [(e.kind, e.id) for e in c.events(sid, last_event_id="2")] == [("end", "3")]
            assert list(c.events(sid, last_event_id="3")) == [] and c.last_status == 204
    finally:
        wait.kill()
    assert wait.returncode == 2, err  # the study ended, but did not succeed
    assert f"study {sid} [cancelled]" in out, (out, err)
    assert "Traceback" not in err, err


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_study_streams_to_its_end_and_wait_follows_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url"))
    log = tmp_path / "serve.log"
    work = procs.worker(url, tmp_path / "droptune.worker.log")  # starts while the API does
    try:
        with api(url, log) as base, Client(base) as c:
            sid = c.submit(QUICK).id
            # The one `wait` follows runs after it (a lower priority): it waits on a stream.
            waited_id = c.submit({**QUICK, "priority": -1}).id
            waited = subprocess.Popen(
                [sys.executable, "-m", "droptune.client.cli", "wait", str(waited_id)],
                env={**os.environ, "DROPTUNE_URL": base},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            events = list(c.events(sid))  # to the end
            # Resumed from the middle: what came after, and nothing it had already.
            middle = events[len(events) // 2 - 1].id
            again = list(c.events(sid, last_event_id=middle))
            out, err = waited.communicate(timeout=120)
    finally:
        code = procs.stop(work)
    assert code == 0, (tmp_path / "droptune.worker.log").read_text()[-2000:]
    *progress, end = events
    ids = [int(e.id or -1) for e in events]
    # never decreasing; a refit starting (ready -> running) repeats its id with a new body
    assert ids == sorted(ids) and len(ids) - len(set(ids)) <= 1, ids
    assert {e.kind for e in progress} == {"progress"} and end.kind == "end"
    assert end.data == {"status": "succeeded"} and ids[-1] == ids[-2] + 1
    final = progress[-1].data
    assert final["status"] == "succeeded" and final["progress"]["complete"] == 4
    assert any(e.data["progress"]["running"] for e in progress)  # seen while trials ran
    assert [(e.kind, e.id) for e in again] == [(e.kind, e.id) for e in events[-2:]]
    # `droptune wait` took its progress from the stream: one read before it, one after.
    assert waited.returncode == 0, err
    assert f"study {waited_id} [succeeded] 4/4 finished" in out and "  best dropout " in out
    served = log.read_text()
    assert f'"GET /studies/{waited_id}/events HTTP/1.1" 200' in served
    assert served.count(f'"GET /studies/{waited_id} HTTP/1.1" 200') == 2, served


def test_the_watcher_wakes_a_stream_only_on_a_change(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        sid = submits.enqueue(engine, StudySpec.model_validate(QUICK), "local")
        asyncio.run(_watch(engine, db_url, sid))
    finally:
        engine.dispose()


async def _watch(engine: Engine, url: str, sid: int) -> None:
    # On PostgreSQL no periodic check: NOTIFY alone must wake it.
    watcher = StudyWatcher(engine, url, poll_s=0.05, check_s=600)
    try:
        async with watcher.watch(sid) as w:
            await asyncio.wait_for(w.wait(0), 10)  # the first check: the study as it is
            assert w.seen == ("queued", "waiting", 0, 0, 0)  # every study ends with a refit
            with pytest.raises(TimeoutError):  # nothing changes: nothing wakes it
                await asyncio.wait_for(w.wait(w.version), 0.5)
            version = w.version
            claim = await asyncio.to_thread(queue.claim, engine, "w", 1)
            await asyncio.wait_for(w.wait(version), 10)
            assert claim is not None and w.seen == ("running", "waiting", 0, 0, 0)
            version = w.version
            await asyncio.to_thread(_start_trial, engine, url, claim)  # notified with no study id
            await asyncio.wait_for(w.wait(version), 10)
            assert w.seen == ("running", "waiting", 0, 1, 0)
            version = w.version
            await asyncio.to_thread(queue.cancel, engine, sid, "local")
            await asyncio.wait_for(w.wait(version), 10)
            assert w.seen == ("cancelled", "skipped", 0, 1, 0)
            # However many streams ask, one read per version (and owner).
            reads: list[int] = []

            async def read() -> int:
                reads.append(w.version)
                await asyncio.sleep(0.01)
                return len(reads)

            both = [w.shared(w.version, "local", read), w.shared(w.version, "local", read)]
            assert await asyncio.gather(*both) == [1, 1]
            assert await w.shared(w.version + 1, "local", read) == 2
    finally:
        await watcher.close()


def _start_trial(engine: Engine, url: str, claim: queue.Claim) -> None:
    """What a worker does with a claimed slot: a running Optuna trial, linked to its lease."""
    storage = optuna_storage(url)
    study = ensure_study(storage, claim.optuna_study, claim.spec, claim.study_id)
    trial = study.ask()
    lease = claim.leases[0].id
    assert queue.link_trial(engine, lease, trial._trial_id, trial.number, {}, "w")
    storage.engine.dispose()
