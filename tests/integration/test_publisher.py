"""The dashboard's copy of the answer, written on the worker's publishing thread
(worker/run/publisher.py): a worker that returns from `run()` has published every batch it told,
and the refit's test score; a request made before the thread runs (or after it closed) is written
at once."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna_dashboard import get_note, save_note

from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.sql.db import create_engine
from droptune.storage.sql.migrate import upgrade
from droptune.storage.submit import submits
from droptune.worker.run.loop import Worker
from droptune.worker.run.publisher import Publisher
from droptune.worker.run.settings import WorkerSettings
from tests.queueing import study_row

SPEC = StudySpec.model_validate(
    {
        "dataset": {"builtin": "iris"},
        "model": {"hidden": [16]},
        "training": {"epochs": 2},
        "cv": {"folds": 3},
        "search": {"n_trials": 8, "stop_when_settled": False},
        "evaluation": {"holdout": 0.2},
    }
)


def _note(url: str, sid: int) -> str:
    name = queue.optuna_study_name(sid, SPEC.name)
    study = optuna.load_study(study_name=name, storage=url)
    return str(get_note(study))


def test_a_worker_that_returns_has_published_its_last_answer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    sid = submits.enqueue(create_engine(url), SPEC, "local")
    w = Worker(WorkerSettings(database_url=url, device="cpu", threads=1, exit_when_idle=True))
    assert w.run() == 0
    row = study_row(url, sid)
    assert row.status == "succeeded" and row.refit_state == "done"
    note = _note(url, sid)
    # The refit's publish was the last request: the note has the held-out score.
    assert "Recommended dropout" in note and "held-out" in note.lower(), note


def test_a_request_without_the_thread_is_written_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    engine = create_engine(url)
    sid = submits.enqueue(engine, SPEC, "local")
    w = Worker(WorkerSettings(database_url=url, device="cpu", threads=1, exit_when_idle=True))
    assert w.run() == 0
    name = queue.optuna_study_name(sid, SPEC.name)
    storage = optuna_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    optuna_dashboard_note = str(get_note(study))
    assert optuna_dashboard_note
    # Wipe the note, then ask a publisher whose thread never started: written in line.
    save_note(study, "")
    Publisher(engine, storage).request(sid)
    assert _note(url, sid) == optuna_dashboard_note
    # And through the thread: close() waits for the write.
    save_note(study, "")
    with Publisher(engine, storage) as p:
        for _ in range(5):
            p.request(sid)
    assert _note(url, sid) == optuna_dashboard_note
