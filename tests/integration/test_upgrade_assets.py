"""A populated database saved at each earlier revision upgrades to head with every row intact, and
the app and Optuna read it afterwards (tests/assets/make_upgrade_assets.py makes the files).

test_migrations.py checks that the migrations build the right tables from nothing; this checks
what they do to a database that already holds studies, data sets and Optuna's trials: a batch
migration on SQLite copies every table it alters, which is where rows, values and ids get lost.
SQLite only, as Optuna keeps its own upgrade assets: a PostgreSQL file cannot be saved beside
the tests, and the migrations' PostgreSQL-only step (0002's SET STORAGE) has no rows to lose.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings
from droptune.storage import datasets
from droptune.storage.sql.db import create_engine
from droptune.storage.sql.migrate import upgrade
from tests.assets import make_upgrade_assets as assets
from tests.assets import upgrade_rows as stored

REVISIONS = assets.revisions()
HEAD = REVISIONS[-1]
OLD = REVISIONS[:-1]
VERSION_TABLES = ("droptune_alembic_version", "alembic_version")  # rewritten by the upgrade

# What a column added after an asset's revision holds on the rows that were there before: the
# migration's server default, or NULL. A new column missing here fails the test: say what the
# old rows should hold.
NEW_COLUMNS: dict[tuple[str, str], Any] = {
    ("droptune_studies", "dataset_id"): None,  # 0002
    ("droptune_studies", "refit_state"): None,  # 0003: no refit for a study from before refits
    ("droptune_studies", "refit_attempts"): 0,
    ("droptune_studies", "refit_result"): None,
    ("droptune_studies", "test_dataset_id"): None,
    ("droptune_leases", "kind"): "trial",  # every lease before 0003 was a trial's
    ("droptune_studies", "answer"): None,  # 0004: computed by the first read
    ("droptune_studies", "answer_p"): None,
    ("droptune_studies", "answer_trials"): None,
    ("droptune_workers", "memory_bytes"): None,  # 0005
    ("droptune_workers", "models"): None,
    ("droptune_studies", "custom_model"): None,
    ("droptune_datasets", "held_bytes"): None,  # 0006: unknown until the data set is read again
}

Rows = dict[tuple[Any, ...], dict[str, Any]]  # a table's rows by primary key


def snapshot(path: Path) -> dict[str, Rows]:
    """Every table's rows as SQLite stores them (text timestamps, JSON text, bytes), by key."""
    db = sqlite3.connect(path)
    try:
        names = [
            n
            for (n,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
            if n not in VERSION_TABLES
        ]
        tables: dict[str, Rows] = {}
        for name in names:
            info = db.execute(f'PRAGMA table_info("{name}")').fetchall()
            cols = [c[1] for c in info]
            key = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5]] or cols
            cur = db.execute(f'SELECT * FROM "{name}"')
            rows = [dict(zip(cols, r, strict=True)) for r in cur]
            tables[name] = {tuple(r[k] for k in key): r for r in rows}
        return tables
    finally:
        db.close()


@dataclass(frozen=True)
class Upgraded:
    rev: int
    url: str
    before: dict[str, Rows]
    after: dict[str, Rows]
    version: str


@pytest.fixture(params=OLD, ids=[f"from-{r}" for r in OLD])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> Upgraded:
    """A copy of the asset saved at one earlier revision, upgraded to head by `upgrade`."""
    revision = str(request.param)
    path = tmp_path / "droptune.db"
    shutil.copyfile(assets.asset_path(revision), path)
    before = snapshot(path)
    url = f"sqlite:///{path}"
    upgrade(url)
    db = sqlite3.connect(path)
    try:
        (version,) = db.execute("SELECT version_num FROM droptune_alembic_version").fetchone()
    finally:
        db.close()
    return Upgraded(int(revision), url, before, snapshot(path), version)


def test_every_row_survives_with_its_values(upgraded: Upgraded) -> None:
    assert upgraded.version == HEAD
    before, after = upgraded.before, upgraded.after
    assert before["droptune_studies"], "the asset holds no studies: rerun the script"
    for table, rows in before.items():
        assert table in after, f"{table} was dropped"
        assert after[table].keys() == rows.keys(), f"{table}: rows lost or added"
        for key, row in rows.items():
            now = after[table][key]
            kept = {c: now[c] for c in row}
            assert kept == row, f"{table} {key}: values changed"
            for column in now.keys() - row.keys():
                assert (table, column) in NEW_COLUMNS, (
                    f"{table}.{column} is new: add what old rows hold to NEW_COLUMNS"
                )
                assert now[column] == NEW_COLUMNS[table, column], f"{table}.{column} on {key}"
    for table in after.keys() - before.keys():
        assert after[table] == {}, f"{table} is new since {upgraded.rev:04d}: it starts empty"


def test_sessions_and_held_bytes_arrive_empty(upgraded: Upgraded) -> None:
    """0006, named: every asset predates it."""
    assert upgraded.after["droptune_sessions"] == {}
    assert {r["held_bytes"] for r in upgraded.after["droptune_datasets"].values()} <= {None}


@pytest.fixture
def api(upgraded: Upgraded) -> Iterator[TestClient]:
    app = create_app(ServiceSettings(database_url=upgraded.url))
    # Once a token exists (0005 on) the API needs one: the admin's, created before the upgrade.
    auth = {"Authorization": f"Bearer {stored.ADMIN_TOKEN}"} if upgraded.rev >= 5 else {}
    with TestClient(app, base_url="http://localhost", headers=auth) as client:
        yield client


def test_the_app_reads_the_old_studies(upgraded: Upgraded, api: TestClient) -> None:
    page = api.get("/studies").json()
    by_id = {s["id"]: s for s in page["items"]}
    assert page["total"] == 4
    assert by_id.keys() == {stored.FINISHED, stored.RUNNING, stored.QUEUED, stored.CANCELLED}
    assert by_id[stored.CANCELLED]["reason"] == "cancelled by its owner"

    done = api.get(f"/studies/{stored.FINISHED}")
    assert done.status_code == 200, done.text
    assert done.json()["name"] == stored.FINISHED_NAME
    assert done.json()["status"] == "succeeded"
    progress = done.json()["progress"]
    assert (progress["complete"], progress["pruned"]) == (5, 1)
    assert progress["refit"] == ("done" if upgraded.rev >= 3 else None)

    best = api.get(f"/studies/{stored.FINISHED}/best")
    assert best.status_code == 200, best.text
    assert best.json()["complete"] is True
    assert best.json()["trial"] == 2  # dropout 0.31: the highest mean of the frozen fold scores
    assert best.json()["dropout"] == pytest.approx(0.31)
    test = best.json()["test"]
    refit_score = stored.REFIT_RESULT["score"] if upgraded.rev >= 3 else None
    assert (test or {}).get("score") == refit_score

    running = api.get(f"/studies/{stored.RUNNING}").json()["progress"]
    assert (running["complete"], running["failed"], running["running"]) == (1, 1, 2)
    assert api.get(f"/studies/{stored.RUNNING}/trials").status_code == 200


def test_the_app_reads_the_old_data_set_and_model(upgraded: Upgraded, api: TestClient) -> None:
    if upgraded.rev < 2:
        assert api.get("/datasets").json()["items"] == []
        return
    items = api.get("/datasets").json()["items"]
    assert [(d["id"], d["name"], d["rows"]) for d in items] == [
        (stored.DATASET_ID, stored.DATASET_NAME, 60)
    ]
    assert items[0]["studies"] == [stored.CANCELLED]
    assert items[0]["held_bytes"] is None  # 0006: unknown until the data set is read again
    # A worker reads the bytes back chunk by chunk, checking their sha256.
    out = io.BytesIO()
    engine = create_engine(upgraded.url)
    try:
        sha = datasets.read_bytes(engine, stored.DATASET_ID, out)
    finally:
        engine.dispose()
    assert out.getvalue() == stored.CSV
    assert sha == items[0]["sha256"]
    if upgraded.rev >= 3:
        model = api.get(f"/studies/{stored.FINISHED}/model")
        assert model.status_code == 200, model.text
        assert model.content == stored.MODEL_FILE


def test_new_studies_take_new_ids(api: TestClient) -> None:
    """A batch migration copies the table: its AUTOINCREMENT counter must come along."""
    r = api.post("/studies", json={"dataset": {"builtin": "iris"}, "search": {"n_trials": 2}})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == stored.CANCELLED + 1


def test_old_tokens_still_decide_access(upgraded: Upgraded, api: TestClient) -> None:
    if upgraded.rev < 5:  # no tokens before 0005: open mode, checked by the other tests
        return
    alice = {"Authorization": f"Bearer {stored.ALICE_TOKEN}"}
    mine = api.get("/studies", headers=alice).json()["items"]
    assert {s["id"] for s in mine} == {stored.FINISHED, stored.QUEUED}
    revoked = {"Authorization": f"Bearer {stored.REVOKED_TOKEN}"}
    assert api.get("/studies", headers=revoked).status_code == 401


def test_optuna_loads_the_old_studies(upgraded: Upgraded) -> None:
    names = {r["id"]: r["optuna_study"] for r in upgraded.after["droptune_studies"].values()}
    done = optuna.load_study(study_name=names[stored.FINISHED], storage=upgraded.url)
    assert [t.state for t in done.trials] == [s for _, s, _ in assets.FINISHED_TRIALS]
    assert done.best_trial.params == {"dropout": 0.31}
    assert done.user_attrs["droptune_id"] == stored.FINISHED
    running = optuna.load_study(study_name=names[stored.RUNNING], storage=upgraded.url)
    states = [t.state for t in running.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    assert running.trials[2].user_attrs["lease"] == 9


def test_every_earlier_revision_has_its_asset() -> None:
    """Adding a migration makes the old head an earlier revision: save a database at it."""
    saved = sorted(p.name for p in assets.ASSETS.glob("*.db"))
    wanted = sorted(assets.asset_path(r).name for r in OLD)
    assert saved == wanted, (
        f"tests/assets/upgrade holds {saved}, not one file per revision before head {wanted}: "
        f"run `PYTHONPATH=. python {assets.SCRIPT}` (extend its rows for the new revision's "
        "tables) and commit the file it writes"
    )
