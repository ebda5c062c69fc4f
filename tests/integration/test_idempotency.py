"""Idempotency-Key on POST /studies: the same key and body within a day answer the first study
(200); another body is refused (422); the key is stored with the study or not at all; the
client sends one and retries a submit whose answer was lost."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from droptune.client.api import Client
from droptune.core.errors import Invalid
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue
from droptune.storage.jobs.lifecycle import delete_study
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.sql.db import create_engine, db_now, transaction
from droptune.storage.sql.tables import idempotency as keys
from droptune.storage.sql.tables import studies
from droptune.storage.submit import idempotency, submits
from tests import procs
from tests.queueing import spec

BODY = {"dataset": {"builtin": "digits"}, "search": {"n_trials": 4}}


def count(engine: sa.Engine, table: sa.Table = studies) -> int:
    with transaction(engine, read_only=True) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_the_same_key_answers_the_first_study(db_url: str) -> None:
    engine = create_engine(db_url)
    first = submits.submit(engine, spec(4), "a", key="k1")
    again = submits.submit(engine, spec(4), "a", key="k1")
    assert (first.created, again.created, again.study_id) == (True, False, first.study_id)
    assert submits.submit(engine, spec(4), "b", key="k1").created  # keys are per owner
    assert submits.submit(engine, spec(4), "a", key="k2").created
    assert submits.submit(engine, spec(4), "a").created  # no key: always a new study
    assert (count(engine), count(engine, keys)) == (4, 3)
    with pytest.raises(Invalid, match="Idempotency-Key: this key was sent") as exc:
        submits.submit(engine, spec(5), "a", key="k1")  # another body
    assert exc.value.errors[0]["field"] == "Idempotency-Key"
    assert (count(engine), count(engine, keys)) == (4, 3)


def test_a_refused_submit_stores_no_key(db_url: str) -> None:
    engine = create_engine(db_url)
    bad = StudySpec.model_validate({"dataset": {"id": 99}, "search": {"n_trials": 4}})
    with pytest.raises(Invalid, match=r"dataset\.id"):
        submits.submit(engine, bad, "a", key="k1")
    assert (count(engine), count(engine, keys)) == (0, 0)
    assert submits.submit(engine, spec(4), "a", key="k1").created  # the key is still free


def test_keys_older_than_a_day_are_ignored_and_deleted(db_url: str) -> None:
    engine = create_engine(db_url)
    first = submits.submit(engine, spec(4), "a", key="old")
    submits.submit(engine, spec(4), "a", key="other")
    with transaction(engine) as conn:
        conn.execute(keys.update().values(created_at=db_now(-idempotency.KEEP_SECONDS - 60)))
    again = submits.submit(engine, spec(5), "a", key="old")  # a new study, even another body
    assert again.created and again.study_id != first.study_id
    with transaction(engine, read_only=True) as conn:
        left = conn.execute(sa.select(keys.c.key, keys.c.study_id)).all()
    assert [tuple(r) for r in left] == [("old", again.study_id)]  # "other" expired: deleted


def test_deleting_the_study_frees_its_key(db_url: str) -> None:
    engine = create_engine(db_url)
    first = submits.submit(engine, spec(4), "a", key="k")
    queue.cancel(engine, first.study_id, "a")
    delete_study(engine, optuna_storage(db_url), first.study_id, "a")
    assert count(engine, keys) == 0
    again = submits.submit(engine, spec(4), "a", key="k")
    assert again.created and again.study_id != first.study_id


def test_concurrent_submits_with_one_key_store_one_study(db_url: str) -> None:
    engine = create_engine(db_url)
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: submits.submit(engine, spec(4), "a", key="k"), range(8)))
    assert len({d.study_id for d in done}) == 1
    assert sorted(d.created for d in done) == [False] * 7 + [True]
    assert (count(engine), count(engine, keys)) == (1, 1)


def test_a_duplicate_that_breaks_the_primary_key_answers_the_first(pg_url: str) -> None:
    """The path past the owner's lock: another transaction holds the key's row, uncommitted;
    this submit's insert waits on it, breaks the primary key once it commits, and answers that
    study. (Its own study is rolled back: one study in all.)"""
    engine = create_engine(pg_url)
    digest = idempotency.digest(spec(4))
    with engine.connect() as other:
        tx = other.begin()
        winner = submits._store(other, spec(4), "a", None)
        idempotency.remember(other, "a", "k", digest, winner)
        with ThreadPoolExecutor(1) as pool:
            late = pool.submit(submits.submit, engine, spec(4), "a", key="k")
            procs.wait_until(lambda: _waiting_on_a_lock(engine), 10, "the insert to wait")
            tx.commit()
            answer = late.result(timeout=10)
    assert (answer.study_id, answer.created) == (winner, False)
    assert (count(engine), count(engine, keys)) == (1, 1)


def _waiting_on_a_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        ).scalar_one()
    return bool(n)


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    """A real `droptune serve` (no worker) on either backend: its URL and an engine."""
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    port = procs.free_port()
    proc = procs.serve(url, port, tmp_path / "serve.log")
    engine = create_engine(url)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        procs.stop(proc)
        engine.dispose()


def test_the_api_answers_a_repeated_key_200_with_the_first_study(
    api: tuple[str, sa.Engine],
) -> None:
    base, engine = api
    key = {"Idempotency-Key": str(uuid.uuid4())}
    r1 = httpx.post(f"{base}/studies", json=BODY, headers=key)
    r2 = httpx.post(f"{base}/studies", json=BODY, headers=key)
    assert (r1.status_code, r2.status_code) == (201, 200), r2.text
    assert r1.json()["id"] == r2.json()["id"]
    assert r2.headers["location"] == f"/studies/{r1.json()['id']}"
    r3 = httpx.post(f"{base}/studies", json={**BODY, "priority": 2}, headers=key)
    assert r3.status_code == 422
    assert r3.headers["content-type"] == "application/problem+json"
    assert r3.json()["errors"][0]["field"] == "Idempotency-Key"
    r4 = httpx.post(f"{base}/studies", json=BODY, headers={"Idempotency-Key": "x" * 256})
    assert r4.status_code == 422
    assert count(engine) == 1


class DropFirstAnswer:
    """A TCP proxy in front of the API that forwards the first request whole but closes the
    connection as its answer arrives: the API has stored the study, the client sees the
    connection drop (as when the API was killed right after its commit). Later connections
    pass through."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.dropped: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))
        threading.Thread(target=_pump, args=(client, up), daemon=True).start()
        if not self.dropped:
            self.dropped.append(up.recv(65536))  # the API's answer, never delivered
            for s in (client, up):  # shutdown, not only close: the pump's recv holds them
                # The pump may have shut it down first (a CI run saw ENOTCONN here).
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            return
        _pump(up, client)

    def close(self) -> None:
        self.server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def test_the_client_retries_a_submit_whose_answer_was_lost(
    api: tuple[str, sa.Engine],
) -> None:
    base, engine = api
    proxy = DropFirstAnswer(int(base.rsplit(":", 1)[1]))
    try:
        with Client(f"http://127.0.0.1:{proxy.port}") as c:
            study = c.submit(BODY)
            assert c.last_status == 200  # the retry found the study the lost answer was about
    finally:
        proxy.close()
    assert len(proxy.dropped) == 1 and proxy.dropped[0].startswith(b"HTTP/1.1 201")
    assert count(engine) == 1 and count(engine, keys) == 1
    with Client(base) as c:
        assert [s.id for s in c.list().items] == [study.id]
        assert c.submit(BODY).id != study.id  # a new call: a new key, a new study
    assert count(engine) == 2
