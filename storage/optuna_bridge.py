"""Optuna's RDBStorage on the droptune database URL, and the studies droptune keeps in it."""

from __future__ import annotations

import optuna
from optuna.storages import RDBStorage

from droptune.storage.db import configure_sqlite, engine_kwargs, is_sqlite, normalise_url
from droptune.storage.spec import StudySpec

# Optuna logs every trial at INFO; droptune's own log lines say what happened.
optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_storage(url: str, *, writes: bool = True) -> RDBStorage:
    """Optuna's storage on the same database.

    On SQLite a storage that writes gets droptune's BEGIN IMMEDIATE: Optuna finishes a trial by
    reading its state, checking it is still RUNNING and then writing, and only inside one write
    transaction can a worker's `tell` and a recovery's `FAIL` not both succeed on the same trial.
    A storage only read from (the API's answers, the dashboard) leaves SQLite's reads lock-free.
    """
    url = normalise_url(url)
    storage = RDBStorage(url, engine_kwargs=engine_kwargs(url))
    if is_sqlite(url) and writes:
        configure_sqlite(storage.engine)
        storage.engine.dispose()  # connections opened while Optuna set up are not configured
    return storage


def ensure_study(storage: RDBStorage, name: str, spec: StudySpec, study_id: int) -> optuna.Study:
    """Create the Optuna study of a droptune study, or load it; safe to call from many workers."""
    study = optuna.create_study(
        storage=storage, study_name=name, direction=spec.cv.direction, load_if_exists=True
    )
    if "droptune_id" not in study.user_attrs:
        study.set_user_attr("droptune_id", study_id)
        study.set_user_attr("metric", spec.cv.metric)
        study.set_user_attr("dataset", spec.dataset.label())
        study.set_user_attr("spec", spec.model_dump(mode="json"))
    return study


def study_id_of(storage: RDBStorage, name: str) -> int | None:
    try:
        return int(storage.get_study_id_from_name(name))
    except KeyError:
        return None
