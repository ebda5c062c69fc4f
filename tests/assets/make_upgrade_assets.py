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

import copy
import datetime as dt
import hashlib
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

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "upgrade"
SCRIPT = "tests/assets/make_upgrade_assets.py"
T0 = dt.datetime(2026, 11, 20, 9, 0, 0)  # every timestamp is T0 plus a fixed offset

# Tokens (0005 on). Only their SHA-256 is stored; the test sends them, so they are fixed here.
ADMIN_TOKEN = "dt_upgradeAssetAdminToken0123456789abcdefghij"
ALICE_TOKEN = "dt_upgradeAssetAliceToken0123456789abcdefghij"
REVOKED_TOKEN = "dt_upgradeAssetRevokedToken0123456789abcdefgh"

# The studies every asset holds, by id: what the test finds after the upgrade.
FINISHED, RUNNING, QUEUED, CANCELLED = 1, 2, 3, 4
FINISHED_NAME = "digits mlp"
DATASET_ID, DATASET_NAME = 1, "colours.csv"
MODEL_FILE = b"stand-in for a torch.export program (the real one is ~100 kB)"


def revisions() -> list[str]:
    """Every revision, oldest first (head last)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def asset_path(revision: str) -> Path:
    return ASSETS / f"droptune-{revision}.db"


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


# ------------------------------------------------------------------ what droptune stored then

# StudySpec(...).model_dump(mode="json") as storage/spec.py wrote it at 0001 (model.channels,
# no cv.repeats, no answer or evaluation sections; dropout_high defaulted to 0.8).
_SEARCH_0001: dict[str, Any] = {
    "dropout_low": 0.0,
    "dropout_high": 0.8,
    "sampler": "tpe",
    "pruner": "median",
    "per_layer": False,
    "input_dropout_low": 0.0,
    "input_dropout_high": 0.0,
    "batch_trials": None,
    "max_retries": 2,
    "max_failed": 10,
}
_TRAINING: dict[str, Any] = {"epochs": 20, "batch_size": 64, "lr": 0.001, "weight_decay": 0.0}


def spec(rev: int, kind: str) -> dict[str, Any]:
    """A stored spec, as the code at revision `rev` dumped it: `digits` (named), `synthetic`
    (unnamed, per-layer random search, priority 5) or `upload` (the uploaded data set, 0002 on)."""
    model: dict[str, Any] = {"kind": "mlp", "hidden": [256, 256]}
    cv: dict[str, Any] = {"folds": 5, "metric": "accuracy", "seed": 0}
    search = dict(_SEARCH_0001)
    out: dict[str, Any] = {"name": None, "dataset": {}, "model": model, "training": _TRAINING}
    if kind == "digits":
        out |= {"name": FINISHED_NAME, "dataset": {"builtin": "digits", "options": {}}}
        search["n_trials"] = 6
    elif kind == "synthetic":
        out["dataset"] = {"builtin": "synthetic", "options": {"n_samples": 400, "seed": 3}}
        model["hidden"] = [64, 32]
        search |= {"n_trials": 4, "sampler": "random", "per_layer": True}
    else:
        out |= {"name": "upload", "dataset": {"id": DATASET_ID, "options": {}}}
        search["n_trials"] = 3
    if rev == 1:
        model["channels"] = [32, 64]
    else:  # 0002 to 0005: cv.repeats, the answer rule, the holdout; the search up to 0.9
        cv["repeats"] = 1
        search["dropout_high"] = 0.9
        out["answer"] = {"rule": "one_se"}
        out["evaluation"] = {"holdout": 0.2 if kind == "digits" else 0.0}
    out["cv"], out["search"] = cv, {k: search[k] for k in _SEARCH_ORDER}
    out["priority"] = 5 if kind == "synthetic" else 0
    return copy.deepcopy(out)


_SEARCH_ORDER = ("dropout_low", "dropout_high", "n_trials", *list(_SEARCH_0001)[2:])

# 60 rows, two numeric columns, one categorical, target `label`: 913 bytes.
CSV = (
    "x1,x2,colour,label\n"
    + "".join(
        f"{(i * 7) % 13 / 10:.1f},{(i * 3) % 11 - 5},{('red', 'green', 'blue')[i % 3]},"
        f"{'yes' if (i * 5) % 7 < 3 else 'no'}\n"
        for i in range(60)
    )
).encode()
# storage.datafile.inspect(CSV, "csv", target="label") at 0002 (the same through 0005).
SUMMARY: dict[str, Any] = {
    "format": "csv",
    "rows": 60,
    "features": 3,
    "task": "classification",
    "task_inferred": True,
    "target": "label",
    "columns": [
        {"name": "x1", "kind": "numeric", "missing": 0, "categories": None},
        {"name": "x2", "kind": "numeric", "missing": 0, "categories": None},
        {"name": "colour", "kind": "categorical", "missing": 0, "categories": 3},
    ],
    "classes": ["no", "yes"],
    "class_counts": [34, 26],
    "image_shape": None,
    "encoded_features": 5,
    "target_mean": None,
    "target_std": None,
}
# The real chunk is 4 MiB (storage/datasets.py CHUNK_BYTES): a file that small would make the
# asset large, so this one is cut in two to keep the order of `seq` under test.
CHUNKS = (CSV[:500], CSV[500:])

# The final refit's result (schemas.TestScore at 0003).
REFIT_RESULT: dict[str, Any] = {
    "dropout": 0.31,
    "score": 0.9611,
    "ci95": [0.9338, 0.9776],
    "n": 360,
    "source": "holdout",
    "metric": "accuracy",
    "best": None,
    "baseline": {"dropout": 0.0, "score": 0.9556, "ci95": [0.9273, 0.9741]},
    "refit_seconds": 4.21,
}


def study_rows(rev: int) -> list[dict[str, Any]]:
    """droptune_studies at revision `rev`."""
    # The finished study: 6 trials done; the running one: 1 done, 1 failed (its parameters wait
    # as a retry), 2 leased; a queued one; a cancelled one (on the uploaded data set, 0002 on).
    common: dict[str, Any] = {
        "max_retries": 2,
        "max_failed": 10,
        "reason": None,
        "started_at": None,
    }
    studies: list[dict[str, Any]] = [
        common
        | {
            "id": FINISHED,
            "owner": "alice",
            "name": FINISHED_NAME,
            "spec": spec(rev, "digits"),
            "status": "succeeded",
            "priority": 0,
            "n_trials": 6,
            "slots_claimed": 6,
            "last_claim": 2,
            "n_done": 6,
            "n_given_up": 0,
            "created_at": at(0),
            "started_at": at(1),
            "ended_at": at(30),
        },
        common
        | {
            "id": RUNNING,
            "owner": "bob",
            "name": None,
            "spec": spec(rev, "synthetic"),
            "status": "running",
            "priority": 5,
            "n_trials": 4,
            "slots_claimed": 3,
            "last_claim": 2,
            "n_done": 1,
            "n_given_up": 0,
            "created_at": at(40),
            "started_at": at(41),
            "ended_at": None,
        },
        common
        | {
            "id": QUEUED,
            "owner": "alice",
            "name": "waiting",
            "spec": spec(rev, "digits") | {"name": "waiting"},
            "status": "queued",
            "priority": 0,
            "n_trials": 6,
            "slots_claimed": 0,
            "last_claim": 0,
            "n_done": 0,
            "n_given_up": 0,
            "created_at": at(50),
            "ended_at": None,
        },
        common
        | {
            "id": CANCELLED,
            "owner": "bob",
            "name": "upload" if rev >= 2 else None,
            "spec": spec(rev, "upload" if rev >= 2 else "synthetic"),
            "status": "cancelled",
            "reason": "cancelled by its owner",
            "priority": 0,
            "n_trials": 3,
            "slots_claimed": 0,
            "last_claim": 0,
            "n_done": 0,
            "n_given_up": 0,
            "created_at": at(55),
            "ended_at": at(56),
        },
    ]
    for s in studies:
        name = s["name"] if rev >= 3 else None  # 0003 named Optuna studies after droptune's
        s["optuna_study"] = f"{name} (droptune-{s['id']})" if name else f"droptune-{s['id']}"
        if s["id"] == CANCELLED:
            s["n_trials"] = s["spec"]["search"]["n_trials"]
    if rev >= 2:
        for s in studies:
            s["dataset_id"] = DATASET_ID if s["id"] == CANCELLED else None
    if rev >= 3:
        for s in studies:
            refits = s["spec"]["evaluation"]["holdout"] > 0
            state = {FINISHED: "done", QUEUED: "waiting"}.get(s["id"]) if refits else None
            s |= {
                "refit_state": state,
                "refit_attempts": 1 if state == "done" else 0,
                "refit_result": REFIT_RESULT if state == "done" else None,
                "test_dataset_id": None,
            }
    if rev >= 4:
        # NULL as migration 0004 left every study: the first read computes and keeps the answer.
        for s in studies:
            s |= {"answer": None, "answer_p": None, "answer_trials": None}
    if rev >= 5:
        for s in studies:
            s["custom_model"] = None
    return studies


def droptune_rows(rev: int) -> dict[str, list[dict[str, Any]]]:
    """droptune's rows at revision `rev`, table by table, in insertion order (leases come
    later: they name Optuna's trial ids)."""
    rows: dict[str, list[dict[str, Any]]] = {"droptune_studies": study_rows(rev)}
    rows["droptune_retries"] = [
        {
            "id": 1,
            "study_id": RUNNING,
            "params": {"dropout_0": 0.62, "dropout_1": 0.17},
            "attempt": 1,
            "origin_trial": 1,
            "created_at": at(44),
        }
    ]
    worker: dict[str, Any] = {
        "id": "w-3f2a9c",
        "host": "gpu-box",
        "pid": 4242,
        "device": "cuda:0",
        "status": "running",
        "started_at": at(39),
        "heartbeat_at": at(45),
        "study_id": RUNNING,
        "trials": [2, 3],
    }
    idle: dict[str, Any] = {
        "id": "w-77e0d1",
        "host": "laptop",
        "pid": 911,
        "device": "cpu",
        "status": "idle",
        "started_at": at(2),
        "heartbeat_at": at(45),
        "study_id": None,
        "trials": None,
    }
    if rev >= 5:
        worker |= {"memory_bytes": 25_769_803_776, "models": []}
        idle |= {"memory_bytes": 8_589_934_592, "models": ["tiny_cnn"]}
    rows["droptune_workers"] = [worker, idle]
    if rev >= 2:
        dataset: dict[str, Any] = {
            "id": DATASET_ID,
            "owner": "bob",
            "name": DATASET_NAME,
            "sha256": hashlib.sha256(CSV).hexdigest(),
            "format": "csv",
            "bytes": len(CSV),
            "rows": 60,
            "features": 3,
            "task": "classification",
            "asked_target": "label",
            "asked_task": "",
            "summary": SUMMARY,
            "created_at": at(35),
        }
        if rev >= 6:
            dataset["held_bytes"] = len(CSV)
        rows["droptune_datasets"] = [dataset]
        rows["droptune_dataset_chunks"] = [
            {"dataset_id": DATASET_ID, "seq": i, "data": c} for i, c in enumerate(CHUNKS)
        ]
    if rev >= 3:
        rows["droptune_models"] = [
            {
                "study_id": FINISHED,
                "role": "recommended",
                "dropout": 0.31,
                "params": {"dropout": 0.31},
                "file": MODEL_FILE,
                "created_at": at(30),
            }
        ]
    if rev >= 5:
        rows["droptune_tokens"] = [
            _token(1, "admin", ADMIN_TOKEN, admin=True),
            _token(2, "alice", ALICE_TOKEN),
            _token(3, "bob", REVOKED_TOKEN) | {"revoked_at": at(20)},
        ]
        rows["droptune_idempotency"] = [
            {
                "owner": "alice",
                "key": "nightly-2026-11-20",
                "body_sha256": hashlib.sha256(b"the body of study 3").hexdigest(),
                "study_id": QUEUED,
                "created_at": at(50),
            }
        ]
    if rev >= 6:
        rows["droptune_sessions"] = [
            {
                "hash": hashlib.sha256(b"a dashboard session").hexdigest(),
                "token_id": 1,
                "created_at": at(10),
                "expires_at": at(10 + 7 * 24 * 60),
                "revoked_at": None,
            }
        ]
    return rows


def _token(id_: int, owner: str, token: str, *, admin: bool = False) -> dict[str, Any]:
    return {
        "id": id_,
        "owner": owner,
        "admin": admin,
        "hash": hashlib.sha256(token.encode()).hexdigest(),
        "prefix": token[:10],
        "created_at": at(id_),
        "revoked_at": None,
    }


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
