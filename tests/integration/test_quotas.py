"""Per-owner quotas: active studies and trial-epochs (429), stored data set bytes (403); each
refusal names its DROPTUNE_QUOTA_* variable, the limit and the use, and stores nothing; two
concurrent requests cannot both slip under a limit."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from droptune.core.errors import DroptuneError, Forbidden
from droptune.core.spec.study import StudySpec
from droptune.datafiles import datafile
from droptune.storage import datasets as store
from droptune.storage.jobs import queue
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import dataset_chunks, datasets, idempotency, studies
from droptune.storage.submit import submits
from droptune.storage.submit.quotas import QuotaExceeded, Quotas
from tests import datafiles, procs


def study(n_trials: int = 4, epochs: int = 5, repeats: int = 1) -> StudySpec:
    return StudySpec.model_validate(
        {
            "dataset": {"builtin": "iris"},
            "training": {"epochs": epochs},
            "cv": {"repeats": repeats},
            "search": {"n_trials": n_trials},
        }
    )


def count(engine: sa.Engine, table: sa.Table) -> int:
    with transaction(engine, read_only=True) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_active_studies_quota(db_url: str) -> None:
    engine = create_engine(db_url)
    quotas = Quotas(active_studies=2)
    first = submits.submit(engine, study(), "a", quotas=quotas).study_id
    submits.submit(engine, study(), "a", quotas=quotas)
    submits.submit(engine, study(), "b", quotas=quotas)  # another owner's count is theirs
    with pytest.raises(QuotaExceeded) as exc:
        submits.submit(engine, study(), "a", quotas=quotas, key="k")
    assert exc.value.status == 429
    assert exc.value.detail.startswith(
        "quota DROPTUNE_QUOTA_ACTIVE_STUDIES=2 reached: you have 2 queued or running studies"
    )
    assert (count(engine, studies), count(engine, idempotency)) == (3, 0)  # nothing stored
    queue.cancel(engine, first, "a")  # an ended study no longer counts
    assert submits.submit(engine, study(), "a", quotas=quotas).created


def test_trial_epochs_quota_counts_what_is_still_to_run(db_url: str) -> None:
    engine = create_engine(db_url)
    quotas = Quotas(trial_epochs=100)
    first = submits.submit(engine, study(4, epochs=5, repeats=2), "a", quotas=quotas).study_id
    submits.submit(engine, study(4, epochs=5, repeats=2), "a", quotas=quotas)  # 40 + 40
    with pytest.raises(QuotaExceeded) as exc:
        submits.submit(engine, study(3, epochs=5, repeats=2), "a", quotas=quotas)  # + 30
    assert exc.value.detail == (
        "quota DROPTUNE_QUOTA_TRIAL_EPOCHS=100 exceeded: your queued or running studies have "
        "80 trial-epochs still to run, and this one adds 30 "
        "(search.n_trials x training.epochs x cv.repeats)"
    )
    assert count(engine, studies) == 2
    submits.submit(engine, study(2, epochs=5, repeats=2), "a", quotas=quotas)  # exactly 100
    with transaction(engine) as conn:  # three of the first study's trials have finished
        conn.execute(studies.update().where(studies.c.id == first).values(n_done=3))
    assert submits.submit(engine, study(3, epochs=5, repeats=2), "a", quotas=quotas).created
    with pytest.raises(QuotaExceeded, match="have 100 trial-epochs"):
        submits.submit(engine, study(1, epochs=1), "a", quotas=quotas)
    assert submits.submit(engine, study(1, epochs=1), "b", quotas=quotas).created


def test_a_replayed_key_is_answered_even_past_the_quota(db_url: str) -> None:
    """A retry of a submit that was stored is its answer, not a new study the quota refuses."""
    engine = create_engine(db_url)
    quotas = Quotas(active_studies=1)
    first = submits.submit(engine, study(), "a", quotas=quotas, key="k")
    again = submits.submit(engine, study(), "a", quotas=quotas, key="k")
    assert (again.study_id, again.created) == (first.study_id, False)


def _race(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run `call(i)` for i < n at once; each result, or the DroptuneError it raised."""

    def one(i: int) -> Any:
        try:
            return call(i)
        except DroptuneError as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_submits_cannot_both_slip_under_the_limit(db_url: str) -> None:
    engine = create_engine(db_url)
    quotas = Quotas(active_studies=3)
    out = _race(10, lambda _: submits.submit(engine, study(), "a", quotas=quotas))
    assert sum(isinstance(o, QuotaExceeded) for o in out) == 7
    assert count(engine, studies) == 3


def held(path: Path) -> int:
    with path.open("rb") as f:
        size = datafile.inspect(f, path.suffix.lstrip(".")).held_bytes
    assert size is not None and size >= path.stat().st_size
    return size


def _upload(engine: sa.Engine, path: Path, owner: str, quotas: Quotas) -> tuple[Any, bool]:
    with path.open("rb") as f:
        sha, size = store.sha256_of(f)
        return store.create(
            engine,
            owner=owner,
            name=path.name,
            sha256=sha,
            size=size,
            summary=datafile.inspect(f, path.suffix.lstrip(".")),
            f=f,
            asked_target=None,
            asked_task=None,
            quotas=quotas,
        )


def test_dataset_bytes_quota(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    files = [datafiles.mixed_csv(tmp_path / f"m{i}.csv", seed=i) for i in range(3)]
    size = held(files[0])  # what counts: the values as the workers hold them
    quotas = Quotas(dataset_mb=(2 * size + size // 2) / 2**20)  # room for two
    _upload(engine, files[0], "a", quotas)
    _upload(engine, files[1], "a", quotas)
    assert _upload(engine, files[0], "a", quotas)[1] is False  # the same bytes: no new space
    with pytest.raises(Forbidden) as exc:
        _upload(engine, files[2], "a", quotas)
    assert exc.value.status == 403
    mb = f"{quotas.dataset_mb:g}"
    assert exc.value.detail.startswith(
        f"quota DROPTUNE_QUOTA_DATASET_MB={mb} exceeded: your stored data sets take "
        f"{2 * size / 2**20:.1f} MB and this upload {size / 2**20:.1f} MB"
    )
    with transaction(engine, read_only=True) as conn:  # nothing of the refused upload
        assert conn.execute(sa.select(sa.func.count()).select_from(datasets)).scalar_one() == 2
        chunks = conn.execute(sa.select(dataset_chunks.c.dataset_id).distinct()).all()
    assert len(chunks) == 2
    assert _upload(engine, files[2], "b", quotas)[1]  # another owner's space is theirs


def test_concurrent_uploads_cannot_both_slip_under_the_limit(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    files = [datafiles.mixed_csv(tmp_path / f"m{i}.csv", seed=i) for i in range(6)]
    size = max(held(f) for f in files)
    quotas = Quotas(dataset_mb=(2 * size + size // 2) / 2**20)
    out = _race(6, lambda i: _upload(engine, files[i], "a", quotas))
    assert sum(isinstance(o, Forbidden) for o in out) == 4
    assert count(engine, datasets) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_api_refuses_past_a_quota_with_a_problem(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url"))
    port = procs.free_port()
    env = {"DROPTUNE_QUOTA_ACTIVE_STUDIES": "1", "DROPTUNE_QUOTA_TRIAL_EPOCHS": "400"}
    api = procs.serve(url, port, tmp_path / "serve.log", env)
    engine = create_engine(url)
    base = f"http://127.0.0.1:{port}"
    body: dict[str, Any] = {"dataset": {"builtin": "iris"}, "search": {"n_trials": 4}}
    try:
        big = {**body, "search": {"n_trials": 21}}  # 21 x 20 epochs = 420
        r = httpx.post(f"{base}/studies", json=big)
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"].startswith(
            "quota DROPTUNE_QUOTA_TRIAL_EPOCHS=400 exceeded: your queued or running studies "
            "have 0 trial-epochs still to run, and this one adds 420"
        )
        assert httpx.post(f"{base}/studies", json=body).status_code == 201
        r = httpx.post(f"{base}/studies", json=body, headers={"Idempotency-Key": "k"})
        assert r.status_code == 429
        assert r.json()["title"] == "Quota exceeded"
        assert "DROPTUNE_QUOTA_ACTIVE_STUDIES=1 reached: you have 1 queued" in r.json()["detail"]
        assert (count(engine, studies), count(engine, idempotency)) == (1, 0)
    finally:
        procs.stop(api)
        engine.dispose()
