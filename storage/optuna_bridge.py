"""Optuna's RDBStorage on the droptune database URL, and the studies droptune keeps in it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage

from droptune.core.answer.view import DASH
from droptune.core.spec.kinds import SPEC_KINDS
from droptune.core.spec.study import DEFAULT_METRIC, StudySpec
from droptune.storage.sql.db import configure_sqlite, engine_kwargs, is_sqlite, normalise_url

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
    """Create the Optuna study of a droptune study, or load it; safe to call from many workers.

    The first call names the objective after the metric and writes the spec as a few readable
    user attributes (what the dashboard shows); later calls only read. Concurrent writers write
    the same values, and `droptune_id` goes last, so a worker that died halfway leaves it
    missing and the next call writes everything again. A study made before these attributes
    existed (it has `droptune_id` but no `model`) gets them too.
    """
    study = optuna.create_study(
        storage=storage, study_name=name, direction=spec.cv.direction, load_if_exists=True
    )
    attrs = study.user_attrs
    if "droptune_id" not in attrs or "model" not in attrs:
        # The objective's name in the dashboard; the API is experimental, not the name.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.cv.metric or DEFAULT_METRIC["classification"]])
        for key, value in readable_attrs(spec).items():
            study.set_user_attr(key, value)
        study.set_user_attr("droptune_id", study_id)
    return study


def readable_attrs(spec: StudySpec) -> dict[str, str | int]:
    """The spec as the dashboard's study attributes: a few lines a person reads at a glance."""
    model = spec.model
    shape = SPEC_KINDS[model.kind].describe(model)
    search = spec.search
    rates = f"{rate_text(search.dropout_low)}{DASH}{rate_text(search.dropout_high)}"
    attrs: dict[str, str | int] = {
        "dataset": spec.dataset.label(),
        "metric": spec.cv.metric or DEFAULT_METRIC["classification"],
        "model": shape,
        "cv": f"{spec.cv.folds} folds x {spec.cv.repeats} repeat{'s' * (spec.cv.repeats > 1)}",
        "epochs": spec.training.epochs,
        "search_range": rates + (" per layer" if search.per_layer else ""),
        "sampler": f"{search.sampler}, "
        + ("no pruner" if search.pruner == "none" else f"{search.pruner} pruner"),
        "n_trials": search.n_trials,
    }
    if search.searches_input_dropout:
        low, high = search.input_dropout_low, search.input_dropout_high
        attrs["input_dropout_range"] = f"{rate_text(low)}{DASH}{rate_text(high)}"
    return attrs


def rate_text(rate: float) -> str:
    """0.0, 0.9, 0.05: a rate with as many decimals as it has (up to three)."""
    text = f"{rate:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def study_id_of(storage: RDBStorage, name: str) -> int | None:
    try:
        return int(storage.get_study_id_from_name(name))
    except KeyError:
        return None


LOCK_CLASS = 0x64547044  # first key of the PostgreSQL advisory lock; the second is the study id


@contextmanager
def study_lock(engine: sa.Engine, optuna_id: int) -> Iterator[None]:
    """Writers of an Optuna study's dashboard copy (storage.dashboard_answer) and its delete
    (storage.lifecycle.delete_study) take turns on PostgreSQL: a lock held by a side
    connection's transaction, so it is released whatever happens. Optuna's delete_study rolls
    back *silently* when a concurrent write to the study breaks its foreign keys (issue 19: a
    worker's last publish left a deleted study's Optuna study behind). SQLite needs no lock:
    every write transaction there holds the database's one write lock from its first statement
    (storage.db.configure_sqlite), and Optuna reads the study in the same transaction.

    `engine` holds the lock's connection: a pool other than the one the writes inside use
    (the delete passes droptune's engine and writes through Optuna's), so that concurrent
    holders cannot take every connection of one pool and wait on each other for a second."""
    if is_sqlite(engine.url):
        yield
        return
    with engine.connect() as conn:
        conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_CLASS, optuna_id)))
        yield
        conn.rollback()
