"""What droptune stored at each revision, as tests/assets/make_upgrade_assets.py writes it into the
upgrade assets: the studies, data set, models, tokens and leases, as literals frozen from the code
of each revision's time (the Optuna side and the writing of the files are make_upgrade_assets'),
and the ids and values tests/integration/test_upgrade_assets.py finds after the upgrade."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from typing import Any

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
