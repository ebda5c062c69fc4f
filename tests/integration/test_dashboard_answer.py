"""The answer in the Optuna dashboard, read back through optuna-dashboard's own API and app.

On a real SQLite file and on PostgreSQL: the note, the one curve graph (replaced, not added to,
by a second publish), the study attributes, the metric as the objective's name, and the study
page's JSON as the mounted dashboard serves it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from optuna_dashboard import get_note
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from optuna_dashboard._note import get_note_from_system_attrs

from droptune.core import schemas
from droptune.core.answer.curve import Curve, CurvePoint
from droptune.core.schemas import BestOut, Recommended, Score, Tied
from droptune.core.spec.study import StudySpec
from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings
from droptune.storage.dashboard_answer import (
    GRAPH_ID,
    GRAPH_PREFIX,
    curve_figure,
    note_markdown,
    publish_answer,
)
from droptune.storage.optuna_bridge import ensure_study, optuna_storage

NAME = "droptune-7"
SPEC = StudySpec.model_validate(
    {"dataset": {"builtin": "iris"}, "cv": {"folds": 3, "repeats": 2}, "search": {"n_trials": 6}}
)
# (rate, fold scores, state): the curve's trials, in the order they finish.
TRIALS = [
    (0.1, [0.90, 0.92, 0.91, 0.93, 0.90, 0.92], "COMPLETE"),
    (0.3, [0.94, 0.95, 0.93, 0.96, 0.94, 0.95], "COMPLETE"),
    (0.85, [0.60, 0.62, 0.58, 0.61, 0.60, 0.59], "PRUNED"),
    (0.5, [0.93, 0.95, 0.94, 0.94, 0.93, 0.95], "COMPLETE"),
    (0.7, [0.88, 0.90, 0.89, 0.87, 0.88, 0.89], "COMPLETE"),
]


def stats(folds: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1), as the worker stores them."""
    mean = sum(folds) / len(folds)
    return mean, math.sqrt(sum((f - mean) ** 2 for f in folds) / (len(folds) - 1))


def add_trials(study: optuna.Study, rows: list[tuple[float, list[float], str]]) -> None:
    for rate, folds, state in rows:
        mean, std = stats(folds)
        study.add_trial(
            create_trial(
                state=TrialState[state],
                value=mean if state == "COMPLETE" else None,
                params={"dropout": rate},
                distributions={"dropout": FloatDistribution(0.0, 0.9)},
                user_attrs={"fold_scores": folds, "score_mean": mean, "score_std": std},
                intermediate_values={3: mean} if state == "PRUNED" else None,
            )
        )


def points_of(rows: list[tuple[float, list[float], str]]) -> list[CurvePoint]:
    return [
        CurvePoint(
            trial=number,
            dropout=rate,
            mean=stats(folds)[0],
            se=stats(folds)[1] / math.sqrt(len(folds)),
            state=state,
            tied=False,
            p_vs_best=None,
            epochs=20 if state == "COMPLETE" else 3,
        )
        for number, (rate, folds, state) in enumerate(rows)
    ]


def answer(rows: list[tuple[float, list[float], str]], test: bool) -> tuple[Curve, BestOut]:
    """A curve and an answer as droptune's reads would build them from these trials: the best
    is the highest mean, the tied range every finished rate within 0.02 of it."""
    points = points_of(rows)
    done = [p for p in points if p.state == "COMPLETE"]
    top = max(done, key=lambda p: p.mean)
    tied = [p for p in done if p.mean >= top.mean - 0.02]
    rec = max(tied, key=lambda p: p.dropout)
    for p in tied:
        p.tied = True
    low, high = min(p.dropout for p in tied), max(p.dropout for p in tied)
    folds = rows[top.trial][1]
    best = BestOut(
        study_id=7,
        dropout=top.dropout,
        params={"dropout": top.dropout},
        score=Score(mean=top.mean, std=stats(folds)[1], folds=folds),
        metric="accuracy",
        direction="maximize",
        trial=top.trial,
        one_se_dropout=rec.dropout,
        one_se_trial=rec.trial,
        complete=False,
        status="running",
        recommended=Recommended(
            dropout=rec.dropout,
            rule="one_se",
            trial=rec.trial,
            why="the strongest dropout within one SE of the best",
        ),
        tied=Tied(
            alpha=0.05,
            low=low,
            high=high,
            rates=[p.dropout for p in tied],
            trials=[p.trial for p in tied],
        ),
        warnings=["the best rate is near the top of the searched range"],
        test=schemas.TestScore(
            dropout=rec.dropout,
            score=0.9467,
            ci95=[0.89, 0.98],
            n=30,
            source="holdout",
            metric="accuracy",
            baseline=schemas.TestPoint(dropout=0.0, score=0.9, ci95=[0.83, 0.95]),
        )
        if test
        else None,
    )
    curve = Curve(
        study_id=7,
        metric="accuracy",
        direction="maximize",
        dropout_low=0.0,
        dropout_high=0.9,
        best=top.dropout,
        recommended=rec.dropout,
        tied_low=low,
        tied_high=high,
        points=points,
    )
    return curve, best


def graphs(storage: Any, study: optuna.Study) -> dict[str, Any]:
    stored = get_plotly_graph_objects(storage.get_study_system_attrs(study._study_id))
    return {k: json.loads(v) for k, v in stored.items()}


def note_version(storage: Any, study: optuna.Study) -> int:
    system = storage.get_study_system_attrs(study._study_id)
    return int(get_note_from_system_attrs(system, None)["version"])


def error_bars(figure: dict[str, Any]) -> list[list[float]]:
    return [t["error_y"]["array"] for t in figure["data"] if "error_y" in t]


def trial_note(storage: Any, study: optuna.Study, number: int) -> str:
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    system = storage.get_study_system_attrs(study._study_id)
    return str(get_note_from_system_attrs(system, trial_id)["body"])


def test_publish_replaces_the_note_and_the_graph(db_url: str) -> None:
    storage = optuna_storage(db_url)
    study = ensure_study(storage, NAME, SPEC, 7)
    add_trials(study, TRIALS[:3])
    first_answer = answer(TRIALS[:3], test=False)
    publish_answer(storage, NAME, *first_answer)
    assert "Recommended dropout: 0.30" in get_note(study)
    assert "Best Trial" in get_note(study)  # which dashboard panels to read how
    # Issue 22: the trials say which is recommended and which only scored best.
    b1 = first_answer[1]
    assert b1.recommended is not None and b1.trial is not None
    rec1, best1 = b1.recommended.trial, b1.trial
    assert rec1 == best1 and "the recommended rate" in trial_note(storage, study, rec1)
    first = graphs(storage, study)
    assert list(first) == [GRAPH_ID] and [len(b) for b in error_bars(first[GRAPH_ID])] == [2]

    add_trials(study, TRIALS[3:])
    second = answer(TRIALS, test=True)
    publish_answer(storage, NAME, *second)
    assert second[1].recommended is not None
    rec2, best2 = second[1].recommended.trial, second[1].trial
    assert best2 is not None and rec2 not in (rec1, best2)
    assert "the recommended rate" in trial_note(storage, study, rec2)
    best_note = trial_note(storage, study, best2)
    assert f"best-scoring rate**; the recommended one is trial {rec2}" in best_note
    note = get_note(study)
    assert "Recommended dropout: 0.50" in note and "Recommended dropout: 0.30" not in note
    assert "tied with the best (paired test, p >= 0.05): 0.3, 0.5" in note
    assert "Test score" in note and "without dropout (baseline): 0.9" in note
    assert "Pruned trials trained fewer epochs" in note
    assert "near the top of the searched range" in note
    stored = graphs(storage, study)
    assert list(stored) == [GRAPH_ID]  # replaced, not a second graph
    (bars,) = error_bars(stored[GRAPH_ID])
    assert len(bars) == sum(state == "COMPLETE" for *_, state in TRIALS) == 4

    loaded = optuna.load_study(study_name=NAME, storage=storage)
    assert loaded.metric_names == ["accuracy"]
    attrs = loaded.user_attrs
    assert "spec" not in attrs
    assert attrs["recommended_dropout"] == 0.5 and attrs["tied_range"] == "0.30\u20130.50"
    assert attrs["test_score"] == pytest.approx(0.9467)
    assert attrs["model"] == "mlp [256, 256]" and attrs["cv"] == "3 folds x 2 repeats"
    assert attrs["search_range"] == "0.0\u20130.9" and attrs["epochs"] == 20
    assert attrs["sampler"] == "design, paired pruner" and attrs["n_trials"] == 6
    assert (attrs["droptune_id"], attrs["metric"], attrs["dataset"]) == (7, "accuracy", "iris")

    # The recommendation moves back to the best (answer.rule: best, say): trial rec2's mark
    # goes, and the best's note says recommended.
    curve, best = second
    assert best.recommended is not None
    back = best.recommended.model_copy(update={"trial": best2, "rule": "best"})
    publish_answer(storage, NAME, curve, best.model_copy(update={"recommended": back}))
    assert trial_note(storage, study, rec2) == ""
    assert "the recommended rate" in trial_note(storage, study, best2)


def test_an_older_answer_does_not_replace_a_newer_one(db_url: str) -> None:
    """A worker whose batch ended before another's may publish after it: fewer trials lose."""
    storage = optuna_storage(db_url)
    study = ensure_study(storage, NAME, SPEC, 7)
    add_trials(study, TRIALS)
    newer = answer(TRIALS, test=False)
    publish_answer(storage, NAME, *newer)
    publish_answer(storage, NAME, *answer(TRIALS[:3], test=False))
    assert get_note(study) == note_markdown(*newer)
    assert graphs(storage, study)[GRAPH_ID] == json.loads(curve_figure(newer[0]).to_json())


def test_a_same_answer_writes_nothing_and_a_damaged_one_is_rewritten(db_url: str) -> None:
    """After the last batch the answer is published again unchanged: the note keeps its
    version. A graph left mixed by overlapping publishes (SQLite) is rewritten by the next."""
    storage = optuna_storage(db_url)
    study = ensure_study(storage, NAME, SPEC, 7)
    add_trials(study, TRIALS)
    latest = answer(TRIALS, test=True)
    publish_answer(storage, NAME, *latest)
    version = note_version(storage, study)
    storage.set_study_system_attr(study._study_id, f"{GRAPH_PREFIX}0", "{broken")
    publish_answer(storage, NAME, *latest)
    assert note_version(storage, study) == version
    assert graphs(storage, study)[GRAPH_ID] == json.loads(curve_figure(latest[0]).to_json())


def test_concurrent_publishes_leave_the_newest_whole(pg_url: str) -> None:
    """On PostgreSQL publishes take turns: the note and the graph, each stored in several
    attributes, end as one publish wrote them (the one with the most trials), never a mix."""
    storage = optuna_storage(pg_url)
    study = ensure_study(storage, NAME, SPEC, 7)
    rows = [(0.9 * i / 79, [0.9 + (i % 7) / 100, 0.91, 0.92], "COMPLETE") for i in range(80)]
    answers = [answer(rows[: 40 + 10 * k], test=False) for k in range(5)]
    start = threading.Barrier(len(answers))

    def publish(curve: Curve, best: BestOut) -> None:
        start.wait()
        publish_answer(optuna_storage(pg_url), NAME, curve, best)

    threads = [threading.Thread(target=publish, args=a) for a in answers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    newest = answers[-1]
    assert get_note(study) == note_markdown(*newest)
    assert graphs(storage, study)[GRAPH_ID] == json.loads(curve_figure(newest[0]).to_json())


def test_publish_logs_and_returns_on_a_dashboard_problem(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = optuna_storage(sqlite_url)
    with caplog.at_level(logging.WARNING, logger="droptune.storage.dashboard_answer"):
        publish_answer(storage, "no-such-study", *answer(TRIALS, test=False))
    assert "could not publish the answer to Optuna study no-such-study" in caplog.text


def test_the_mounted_dashboard_serves_the_answer(db_url: str) -> None:
    storage = optuna_storage(db_url)
    study = ensure_study(storage, NAME, SPEC, 7)
    add_trials(study, TRIALS)
    publish_answer(storage, NAME, *answer(TRIALS, test=True))
    with TestClient(
        create_app(ServiceSettings(database_url=db_url)), base_url="http://localhost"
    ) as api:
        page = api.get(f"/api/studies/{study._study_id}")
        listing = api.get("/api/studies")
    assert page.status_code == 200, page.text
    body = page.json()
    assert "Recommended dropout: 0.50" in body["note"]["body"]
    assert body["objective_names"] == ["accuracy"]
    assert [g["id"] for g in body["plotly_graph_objects"]] == [GRAPH_ID]
    (summary,) = listing.json()["study_summaries"]
    attrs = {a["key"]: a["value"] for a in summary["user_attrs"]}
    assert attrs["recommended_dropout"] == "0.5" and attrs["model"] == "mlp [256, 256]"
    assert "spec" not in attrs


def test_ensure_study_from_many_workers_at_once(db_url: str) -> None:
    """Every worker calls it for every batch: one study, its attributes written once."""
    start = threading.Barrier(4)
    ids: list[int] = []

    def open_study() -> None:
        start.wait()
        ids.append(ensure_study(optuna_storage(db_url), NAME, SPEC, 7)._study_id)

    threads = [threading.Thread(target=open_study) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 and len(set(ids)) == 1
    study = optuna.load_study(study_name=NAME, storage=optuna_storage(db_url))
    assert study.metric_names == ["accuracy"]
    assert study.user_attrs["droptune_id"] == 7 and study.user_attrs["cv"] == "3 folds x 2 repeats"


def test_ensure_study_upgrades_a_study_made_before_the_readable_attributes(
    sqlite_url: str,
) -> None:
    storage = optuna_storage(sqlite_url)
    old = optuna.create_study(storage=storage, study_name=NAME, direction="maximize")
    old.set_user_attr("droptune_id", 7)
    ensure_study(storage, NAME, SPEC, 7)
    again = optuna.load_study(study_name=NAME, storage=storage)
    assert again.user_attrs["model"] == "mlp [256, 256]"
    assert again.metric_names == ["accuracy"]
