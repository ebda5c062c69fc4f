"""Make tests/assets/upgrade/droptune-NNNN.db: a populated SQLite database saved at each revision
before head, which tests/integration/test_upgrade_assets.py upgrades to head (as Optuna keeps
`tests/storages_tests/rdb_tests/test_upgrade_assets/*.db`).

    PYTHONPATH=. python tests/assets/make_upgrade_assets.py

Run it after adding a migration: it writes the file for the revision that was head until then
(the test fails until that file exists). Files already there are rewritten identically: every
value, timestamp and id is fixed, so a rerun changes no byte unless the rows below change.

Each database is migrated to exactly its revision by the real migrations, then filled with plain
SQLAlchemy Core against its tables *as reflected from that database*, never today's
storage/sql/tables.py, whose shape is head's. The rows are what droptune wrote at that revision:
the specs, the data set's summary and the trials' user attributes were produced by the code of
that time (each revision's last commit before the next migration) and frozen here as literals.
Optuna's own tables are filled through Optuna's RDBStorage on the same file, under the names
droptune gave its studies then.
"""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from droptune.storage.sql.migrate import MIGRATIONS, upgrade
from tests.assets.upgrade_rows import FINISHED, RUNNING, at, droptune_rows, spec

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "upgrade"
SCRIPT = "tests/assets/make_upgrade_assets.py"


def revisions() -> list[str]:
    """Every revision, oldest first (head last)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def asset_path(revision: str) -> Path:
    return ASSETS / f"droptune-{revision}.db"


# ------------------------------------------------------------------ Optuna's side


def trial_attrs(lease: int, worker: str, attempt: int = 0) -> dict[str, Any]:
    """What the worker set when it opened a trial (droptune's recovery looks for `lease`)."""
    device = "cuda:0" if worker == "w-3f2a9c" else "cpu"
    return {"worker": worker, "device": device, "attempt": attempt, "lease": lease}


def scored(rev: int, folds: list[float], epochs: int, seconds: float) -> dict[str, Any]:
    """What the worker set when it told a trial trained (split_sizes from 0003 on)."""
    mean = sum(folds) / len(folds)
    var = sum((f - mean) ** 2 for f in folds) / (len(folds) - 1)
    out: dict[str, Any] = {"epochs": epochs, "train_seconds": seconds}
    if rev >= 3:
        out["split_sizes"] = [1150.0, 287.6]
    return out | {"fold_scores": folds, "score_mean": mean, "score_std": var**0.5}


# The finished study's trials: (dropout, state, fold scores).
FINISHED_TRIALS = [
    (0.12, TrialState.COMPLETE, [0.951, 0.958, 0.944, 0.962, 0.949]),
    (0.55, TrialState.COMPLETE, [0.962, 0.966, 0.955, 0.971, 0.958]),
    (0.31, TrialState.COMPLETE, [0.966, 0.969, 0.961, 0.972, 0.963]),
    (0.74, TrialState.PRUNED, [0.801, 0.812, 0.799, 0.820, 0.805]),
    (0.05, TrialState.COMPLETE, [0.944, 0.951, 0.940, 0.957, 0.946]),
    (0.38, TrialState.COMPLETE, [0.965, 0.968, 0.962, 0.970, 0.960]),
]


def study_attrs(rev: int, droptune_id: int) -> dict[str, Any]:
    """The Optuna study's user attributes as ensure_study wrote them."""
    if rev == 1:
        return {
            "droptune_id": droptune_id,
            "metric": "accuracy",
            "dataset": "digits" if droptune_id == FINISHED else "synthetic",
            "spec": spec(rev, "digits" if droptune_id == FINISHED else "synthetic"),
        }
    return {
        "dataset": "digits" if droptune_id == FINISHED else "synthetic",
        "metric": "accuracy",
        "model": "mlp [256, 256]" if droptune_id == FINISHED else "mlp [64, 32]",
        "cv": "5 folds x 1 repeat",
        "epochs": 20,
        "search_range": "0.0\u20130.9" + ("" if droptune_id == FINISHED else " per layer"),
        "sampler": "tpe, median pruner" if droptune_id == FINISHED else "random, median pruner",
        "n_trials": 6 if droptune_id == FINISHED else 4,
        "droptune_id": droptune_id,
    }


def add_trial(
    rev: int,
    study: optuna.Study,
    params: dict[str, float],
    state: TrialState,
    attrs: dict[str, Any],
    start: float,
    value: float | None = None,
) -> int:
    high = 0.8 if rev == 1 else 0.9  # the spec's search.dropout_high
    trial = optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions={k: FloatDistribution(0.0, high) for k in params},
        user_attrs=attrs,
    )
    # Fixed times (create_trial stamps now): the file's bytes do not change between runs.
    trial.datetime_start = at(start)
    trial.datetime_complete = None if state == TrialState.RUNNING else at(start + 3)
    study.add_trial(trial)
    return int(study.trials[-1]._trial_id)


# The running study's two live leases (ids 9 and 10) and their trials' parameters.
RUNNING_PARAMS = {
    9: {"dropout_0": 0.08, "dropout_1": 0.71},
    10: {"dropout_0": 0.5, "dropout_1": 0.26},
}


def fill_optuna(url: str, rev: int, names: dict[int, str]) -> dict[int, tuple[int, int]]:
    """The Optuna studies of the two studies that ran; returns the running trials' (id,
    number) by lease id, for droptune_leases."""
    storage = optuna.storages.RDBStorage(url)
    try:
        done, run = (
            optuna.create_study(storage=storage, study_name=names[i], direction="maximize")
            for i in (FINISHED, RUNNING)
        )
        for study, droptune_id in ((done, FINISHED), (run, RUNNING)):
            if rev >= 2:
                with warnings.catch_warnings():  # experimental, as droptune calls it
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(["accuracy"])
            for key, value in study_attrs(rev, droptune_id).items():
                study.set_user_attr(key, value)
        for n, (rate, state, folds) in enumerate(FINISHED_TRIALS):
            attrs = trial_attrs(n + 1, "w-77e0d1") | scored(rev, folds, 20 - 9 * (n == 3), 3.5)
            value = sum(folds) / len(folds) if state == TrialState.COMPLETE else None
            add_trial(rev, done, {"dropout": rate}, state, attrs, 2 + 4 * n, value)
        folds = [0.871, 0.882, 0.869, 0.890, 0.877]
        attrs = trial_attrs(7, "w-3f2a9c") | scored(rev, folds, 20, 1.9)
        params = {"dropout_0": 0.21, "dropout_1": 0.44}
        add_trial(rev, run, params, TrialState.COMPLETE, attrs, 41, sum(folds) / len(folds))
        failed = trial_attrs(8, "w-3f2a9c") | {"reason": "worker w-3f2a9c lost its lease"}
        add_trial(rev, run, {"dropout_0": 0.62, "dropout_1": 0.17}, TrialState.FAIL, failed, 41)
        running = {}
        for lease, params in RUNNING_PARAMS.items():
            attrs = trial_attrs(lease, "w-3f2a9c")
            tid = add_trial(rev, run, params, TrialState.RUNNING, attrs, 44)
            running[lease] = (tid, run.trials[-1].number)
        return running
    finally:
        storage.engine.dispose()


def leases(rev: int, running: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
    """The running study's two live leases (the others ended with their trials)."""
    out = []
    for lease, (trial_id, number) in running.items():
        row: dict[str, Any] = {
            "id": lease,
            "study_id": RUNNING,
            "worker_id": "w-3f2a9c",
            "trial_id": trial_id,
            "trial_number": number,
            "attempt": 0,
            "params": RUNNING_PARAMS[lease],
            "claimed_at": at(44),
            "heartbeat_at": at(45),
        }
        if rev >= 3:
            row["kind"] = "trial"
        out.append(row)
    return out


# ------------------------------------------------------------------ the file


def insert(conn: sa.Connection, tables: sa.MetaData, name: str, rows: list[dict[str, Any]]) -> None:
    table = tables.tables[name]
    for row in rows:
        unknown = set(row) - set(table.c.keys())
        if unknown:  # a row written for another revision: never drop its values silently
            raise SystemExit(f"{name} has no column {sorted(unknown)} at this revision")
        missing = {c.name for c in table.c if not c.nullable and c.server_default is None} - set(
            row
        )
        if missing - {c.name for c in table.primary_key}:
            raise SystemExit(f"{name}: a row without its required {sorted(missing)}")
    conn.execute(table.insert(), rows)


def make(revision: str, path: Path) -> None:
    rev = int(revision)
    path.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    upgrade(url, revision=revision)  # the real migrations, stopped at `revision`
    rows = droptune_rows(rev)
    names = {s["id"]: s["optuna_study"] for s in rows["droptune_studies"]}
    running = fill_optuna(url, rev, names)
    rows["droptune_leases"] = leases(rev, running)
    engine = sa.create_engine(url)
    try:
        tables = sa.MetaData()
        tables.reflect(engine)  # the tables as they are at `revision`
        with engine.begin() as conn:
            for name, table_rows in rows.items():
                insert(conn, tables, name, table_rows)
    finally:
        engine.dispose()
    # One self-contained, compact file: no WAL beside it, no free pages.
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        # Alembic's batch mode (SQLite) recreates a table's indexes in the order of a set of
        # objects, which changes from run to run: recreated by name, the same schema is stored
        # in the same order, and the file keeps the same bytes.
        indexes = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " ORDER BY name"
        ).fetchall()
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        for _, sql in indexes:
            db.execute(sql)
        db.commit()
        # Each table and index takes a page at least (Optuna alone has some 30): 512-byte pages
        # keep a file near 30 kB where the default 4096 made it over 200 kB.
        db.execute("PRAGMA page_size=512")
        db.execute("VACUUM")
    finally:
        db.close()


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    for revision in revisions()[:-1]:
        path = asset_path(revision)
        make(revision, path)
        print(f"{path.relative_to(HERE.parent.parent)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main()
