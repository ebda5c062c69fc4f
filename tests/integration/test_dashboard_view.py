"""storage/dashboard_view.py: the Optuna storage a non-admin's dashboard reads holds their
studies only, on both databases; every way to name another owner's study or trial is a
KeyError (the dashboard's 404), and nothing can be written through it."""

from __future__ import annotations

import json
from collections.abc import Callable

import optuna
import pytest
from optuna.trial import TrialState

from droptune.core.spec.study import StudySpec
from droptune.storage.dashboard_view import OwnerView, ReadOnlyError, label
from droptune.storage.jobs.queue import optuna_study_name
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.sql.db import create_engine
from droptune.storage.submit import submits

SPEC = {"dataset": {"builtin": "iris"}, "cv": {"folds": 3}, "search": {"n_trials": 2}}


def test_an_owner_sees_their_studies_and_nothing_else(db_url: str) -> None:
    engine, storage = create_engine(db_url), optuna_storage(db_url)
    spec = StudySpec.model_validate(SPEC)
    ids: dict[str, tuple[int, int]] = {}  # owner -> (Optuna study id, a trial id)
    for owner in ("carol", "dave"):
        sid = submits.enqueue(engine, spec, owner)
        study = ensure_study(storage, optuna_study_name(sid), spec, sid)
        trial = study.ask()
        study.tell(trial, 0.9)
        ids[owner] = (study._study_id, trial._trial_id)
    view = OwnerView(storage, engine, "carol", ttl=0.0)
    (mine, my_trial), (theirs, their_trial) = ids["carol"], ids["dave"]
    assert [s._study_id for s in view.get_all_studies()] == [mine]
    assert view.get_all_trials(mine)[0].state == TrialState.COMPLETE
    assert view.get_trial(my_trial).value == 0.9
    assert view.get_best_trial(mine).number == 0
    name = storage.get_study_name_from_id(theirs)
    refused: list[Callable[[], object]] = [
        lambda: view.get_study_name_from_id(theirs),
        lambda: view.get_study_id_from_name(name),
        lambda: view.get_study_directions(theirs),
        lambda: view.get_study_user_attrs(theirs),
        lambda: view.get_study_system_attrs(theirs),
        lambda: view.get_all_trials(theirs),
        lambda: view.get_n_trials(theirs),
        lambda: view.get_best_trial(theirs),
        lambda: view.get_trial_id_from_study_id_trial_number(theirs, 0),
        lambda: view.get_trial(their_trial),
        lambda: view.get_trial_params(their_trial),
        lambda: view.get_trial_user_attrs(their_trial),
        lambda: view.get_trial_system_attrs(their_trial),
        lambda: view.get_trial_number_from_id(their_trial),
        lambda: view.get_trial(10**6),  # no such trial at all: the same answer
    ]
    for read in refused:
        with pytest.raises(KeyError):
            read()
    with pytest.raises(KeyError):  # optuna.load_study goes through the same checks
        optuna.load_study(study_name=name, storage=view)
    writes: list[Callable[[], object]] = [
        lambda: view.delete_study(mine),
        lambda: view.set_study_user_attr(mine, "k", 1),
        lambda: view.set_trial_user_attr(my_trial, "k", 1),
        lambda: view.create_new_trial(mine),
    ]
    for write in writes:
        with pytest.raises(ReadOnlyError):
            write()
    assert storage.get_n_trials(mine) == 1  # nothing was written
    # The study list shows names only: the view names each study with its status and answer,
    # and reads those names back (optuna-dashboard loads a study by name for its importances).
    shown = view.get_study_name_from_id(mine)
    assert shown == f"{storage.get_study_name_from_id(mine)} \u00b7 queued"
    assert view.get_study_id_from_name(shown) == mine
    assert optuna.load_study(study_name=shown, storage=view)._study_id == mine
    assert [s.study_name for s in view.get_all_studies()] == [shown]
    # An admin's view holds every Optuna study (another program's too), still read-only.
    other = optuna.create_study(storage=storage, study_name="not droptune's")
    admin = OwnerView(storage, engine, None, ttl=0.0)
    assert {s._study_id for s in admin.get_all_studies()} == {mine, theirs, other._study_id}
    assert admin.get_trial(their_trial).value == 0.9
    with pytest.raises(ReadOnlyError):
        admin.delete_study(theirs)
    # A study submitted later shows once the view looks again (ttl 0 here: at once).
    sid = submits.enqueue(engine, spec, "carol")
    ensure_study(storage, optuna_study_name(sid), spec, sid)
    assert len(view.get_all_studies()) == 2
    engine.dispose()
    storage.engine.dispose()


def test_a_label_names_the_status_and_the_recommended_rate() -> None:
    assert label("wine (droptune-3)", "running", None) == "wine (droptune-3) \u00b7 running"
    rec = {"recommended": {"dropout": 0.7642, "params": {"dropout": 0.7642}}}
    assert label("w", "succeeded", rec) == "w \u00b7 succeeded \u00b7 recommended 0.76"
    layers = {"recommended": {"dropout": 0.29, "params": {"dropout_0": 0.033, "dropout_1": 0.5485}}}
    assert label("d", "succeeded", json.dumps(layers)).endswith("recommended 0.03/0.55")


def test_a_reused_study_id_is_not_read_through_a_stale_cache(db_url: str) -> None:
    """An outside attack: on SQLite a deleted study's Optuna id goes to the next study, maybe
    another owner's; within the view's cache time the old owner listed it. Ids are now checked
    against the study's Optuna name as it is."""
    engine, storage = create_engine(db_url), optuna_storage(db_url)
    spec = StudySpec.model_validate(SPEC)
    mine = submits.enqueue(engine, spec, "mallory")
    oid = ensure_study(storage, optuna_study_name(mine), spec, mine)._study_id
    view = OwnerView(storage, engine, "mallory", ttl=3600.0)  # the cache never refreshes here
    assert [s._study_id for s in view.get_all_studies()] == [oid]
    storage.delete_study(oid)
    theirs = submits.enqueue(engine, spec, "alice")
    reused = ensure_study(storage, optuna_study_name(theirs, "private"), spec, theirs)._study_id
    assert view.get_all_studies() == []  # whatever id it got
    for read in (view.get_study_user_attrs, view.get_all_trials, view.get_study_name_from_id):
        with pytest.raises(KeyError):
            read(reused)
    engine.dispose()
    storage.engine.dispose()
