"""The honest answer: the corrected resampled t-test, p against the best, the tied rates, the
recommended rate under both rules, and the edge warnings; through the Reader on a real SQLite
database too."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from scipy import stats

from droptune.core.answer.rules import (
    answer,
    corrected_t_test,
    engine_of,
    p_values,
    split_ratio,
)
from droptune.core.answer.text import answer_lines
from droptune.core.answer.view import answer_view
from droptune.core.schemas import BestOut, Score
from droptune.core.spec.study import StudySpec
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import studies
from droptune.storage.submit import submits

optuna.logging.set_verbosity(optuna.logging.WARNING)

BEST = [0.970, 0.975, 0.980, 0.970, 0.975]  # mean 0.974, SE sqrt(17.5e-6 / 5) = 0.00187


def _minus(diffs: Sequence[float]) -> list[float]:
    return [b - d for b, d in zip(BEST, diffs, strict=True)]


# (rate, state, fold scores) in trial-number order; what each should come out as is below.
TRIALS: list[tuple[float, TrialState, list[float] | None]] = [
    (0.30, TrialState.COMPLETE, BEST),  # 0: the best
    (0.45, TrialState.COMPLETE, _minus([0.001, 0.002, 0.0, 0.002, 0.0])),  # 1: within 1 SE, tied
    (0.60, TrialState.COMPLETE, _minus([0.003, 0.004, 0.002, 0.003, 0.003])),  # 2: worse, p small
    (0.85, TrialState.COMPLETE, [0.90, 0.92, 0.91, 0.90, 0.93]),  # 3: far worse
    (0.20, TrialState.PRUNED, [0.5, 0.6, 0.5, 0.6, 0.5]),  # 4: pruned: no p
    (0.10, TrialState.FAIL, None),  # 5: failed
    (0.50, TrialState.COMPLETE, [0.96] * 10),  # 6: another split count: no p
]


def trial(
    rate: float,
    folds: list[float] | None,
    state: TrialState = TrialState.COMPLETE,
    split_sizes: list[float] | None = None,
) -> FrozenTrial:
    attrs: dict[str, Any] = {}
    if folds is not None:
        attrs = {
            "fold_scores": folds,
            "score_mean": statistics.fmean(folds),
            "score_std": statistics.stdev(folds),
        }
    if split_sizes is not None:
        attrs["split_sizes"] = split_sizes
    value = statistics.fmean(folds) if folds and state == TrialState.COMPLETE else None
    return create_trial(
        state=state,
        value=value,
        params={"dropout": rate},
        distributions={"dropout": FloatDistribution(0.0, 0.9)},
        user_attrs=attrs,
    )


def add_trials(study: optuna.Study) -> list[FrozenTrial]:
    for rate, state, folds in TRIALS:
        study.add_trial(trial(rate, folds, state))
    return study.trials


def spec(**parts: Any) -> StudySpec:
    return StudySpec.model_validate({"dataset": {"builtin": "iris"}, **parts})


def expected_p(d: Sequence[float], test_train: float) -> float:
    """The test written out by hand: t with the corrected variance, df = J - 1."""
    j = len(d)
    t = np.mean(d) / math.sqrt((1 / j + test_train) * np.var(d, ddof=1))
    return float(2 * stats.t.sf(abs(t), df=j - 1))


def test_the_corrected_t_test_is_scipy_with_the_corrected_variance() -> None:
    a = [0.91, 0.93, 0.92, 0.95, 0.90]
    b = [0.90, 0.91, 0.92, 0.93, 0.89]
    d = [x - y for x, y in zip(a, b, strict=True)]
    p = corrected_t_test(d, 0.25)
    assert p is not None
    assert p == pytest.approx(expected_p(d, 0.25), rel=1e-12)
    assert 0.05 < p < 0.2  # p ~ 0.10: not significant once corrected
    plain = stats.ttest_rel(a, b).pvalue  # ~0.03: too confident for overlapping splits
    assert plain < 0.05 < p
    assert corrected_t_test([-x for x in d], 0.25) == pytest.approx(p, rel=1e-12)  # two-sided


def test_the_degrees_of_freedom_count_splits_not_rows() -> None:
    # 2 repeats x 5 folds = 10 splits, each of 400 training and 100 validation rows.
    d = [0.01, 0.02, -0.005, 0.015, 0.0, 0.012, 0.004, 0.01, -0.002, 0.008]
    best = trial(0.3, [0.9] * 10, split_sizes=[400.0, 100.0])
    other = trial(0.5, [0.9 + x for x in d])
    study = optuna.create_study(direction="maximize")
    study.add_trial(best)
    study.add_trial(other)
    p = p_values(study.trials, study.trials[0], folds=5)[1]
    assert p == pytest.approx(expected_p(d, 100 / 400), rel=1e-9)
    t = np.mean(d) / math.sqrt((1 / 10 + 0.25) * np.var(d, ddof=1))
    assert p == pytest.approx(2 * stats.t.sf(t, df=9), rel=1e-9)
    assert p != pytest.approx(2 * stats.t.sf(t, df=4), rel=1e-3)  # not K - 1
    assert p != pytest.approx(2 * stats.t.sf(t, df=499), rel=1e-3)  # not rows - 1


def test_equal_differences_and_too_few_splits() -> None:
    assert corrected_t_test([0.0, 0.0, 0.0], 0.25) == 1.0
    # no spread, one sign every time: the exact sign test (2 * 0.5 ** J), not p = 0
    assert corrected_t_test([0.01, 0.01, 0.01], 0.25) == 0.25
    assert corrected_t_test([-0.01] * 5, 0.25) == 0.0625
    assert corrected_t_test([0.01], 0.25) is None
    assert corrected_t_test([], 0.25) is None


def test_the_split_ratio_is_the_worker_s_or_k_fold_s() -> None:
    assert split_ratio(trial(0.3, BEST, split_sizes=[480.0, 120.0]), folds=5) == 0.25
    assert split_ratio(trial(0.3, BEST), folds=5) == 0.25  # 1 / (K - 1)
    assert split_ratio(trial(0.3, BEST), folds=3) == 0.5


def test_p_against_the_best_for_each_trial() -> None:
    trials = add_trials(optuna.create_study(direction="maximize"))
    p = p_values(trials, trials[0], folds=5)
    assert p[0] == 1.0
    for n in (1, 2, 3):
        d = [x - y for x, y in zip(TRIALS[n][2] or [], BEST, strict=True)]
        assert p[n] == pytest.approx(expected_p(d, 0.25), rel=1e-12)
    assert p[1] is not None and p[1] > 0.05  # ~0.2
    assert p[2] is not None and p[2] < 0.05  # small but consistent: told apart
    assert p[6] is None  # 10 splits against the best's 5
    assert 4 not in p and 5 not in p  # pruned, failed


@pytest.mark.parametrize("rule", ["one_se", "best"])
def test_tied_and_recommended_under_both_rules(rule: str) -> None:
    trials = add_trials(optuna.create_study(direction="maximize"))
    a = answer(trials, spec(answer={"rule": rule}))
    assert a.best is not None and a.best.number == 0
    assert a.one_se is not None and a.one_se.number == 1  # 0.9730 >= 0.9740 - 0.0019
    assert a.tied is not None
    assert (a.tied.alpha, a.tied.low, a.tied.high) == (0.05, 0.30, 0.45)
    assert (a.tied.rates, a.tied.trials) == ([0.30, 0.45], [0, 1])
    r = a.recommended
    assert r is not None and r.rule == rule
    if rule == "one_se":
        assert (r.dropout, r.trial) == (0.45, 1)
        assert r.why == (
            "the strongest dropout whose mean accuracy 0.9730 is within one standard error "
            "(0.0019) of the best, 0.9740 at 0.3, and not worse by the paired test"
        )
    else:
        assert (r.dropout, r.trial) == (0.30, 0)
        assert r.why == "the best mean accuracy, 0.9740 ± 0.0019 (SE over 5 splits)"
    assert a.warnings == []  # 0.30 and 0.45 are inside 0 to 0.9


def test_a_per_layer_answer_gives_every_layer_s_rate() -> None:
    """`recommended.dropout` of a per-layer trial is the mean of its layers' rates, which is no
    layer's rate: `params` carries each, and every renderer of the answer shows them."""
    study = optuna.create_study(direction="maximize")
    dist = FloatDistribution(0.0, 0.9)
    for (first, second), folds in [((0.063, 0.184), BEST), ((0.5, 0.7), [f - 0.05 for f in BEST])]:
        study.add_trial(
            create_trial(
                value=statistics.fmean(folds),
                params={"dropout_0": first, "dropout_1": second},
                distributions={"dropout_0": dist, "dropout_1": dist},
                user_attrs={"fold_scores": folds},
            )
        )
    sp = spec(search={"per_layer": True}, answer={"rule": "best"})
    r = answer(study.trials, sp).recommended
    assert r is not None and r.params == {"dropout_0": 0.063, "dropout_1": 0.184}
    assert r.dropout == pytest.approx(0.1235)
    best = BestOut(
        study_id=1,
        dropout=r.dropout,
        params=r.params,
        score=Score(mean=statistics.fmean(BEST), std=statistics.stdev(BEST), folds=BEST),
        metric="accuracy",
        direction="maximize",
        trial=0,
        one_se_dropout=None,
        one_se_trial=None,
        complete=True,
        status="succeeded",
        recommended=r,
    )
    head, line = answer_lines(best)[:2]
    assert head.startswith("best dropout 0.0630, 0.1840 by layer (mean 0.1235) (trial 0)"), head
    assert line.startswith("recommended 0.0630, 0.1840 by layer (mean 0.1235) (best)"), line
    view = answer_view(best).recommended
    assert view is not None and view.rate_short == "0.06, 0.18 by layer (mean 0.12)"


def test_one_se_says_so_when_it_is_the_best() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0.6, BEST))
    study.add_trial(trial(0.3, [0.90, 0.91, 0.92, 0.90, 0.91]))
    a = answer(study.trials, spec())
    assert a.recommended is not None and a.recommended.trial == 0
    assert a.recommended.why == (
        "the best mean accuracy, 0.9740 ± 0.0019 (SE over 5 splits); no stronger dropout is "
        "within one standard error of it and not worse by the paired test"
    )
    assert a.tied is not None and a.tied.trials == [0]


def test_one_se_never_recommends_a_rate_the_paired_test_calls_worse() -> None:
    """Within one (unpaired) SE of the best, yet worse on every split: the paired test tells
    them apart, so the recommendation stays with a rate it cannot tell from the best."""
    study = optuna.create_study(direction="maximize")
    best = [0.95, 0.97, 0.96, 0.98, 0.94]
    study.add_trial(trial(0.2, best))
    study.add_trial(trial(0.5, [x - 0.004 + 0.0005 * i for i, x in enumerate(best)]))
    a = answer(study.trials, spec())
    assert a.one_se is not None and a.one_se.number == 1  # the plain one-SE rule's pick
    p1 = a.p[1]
    assert p1 is not None and p1 < 0.05
    assert a.recommended is not None and a.recommended.trial == 0


def test_no_answer_without_a_complete_trial() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0.3, BEST, TrialState.PRUNED))
    a = answer(study.trials, spec())
    assert (a.best, a.recommended, a.tied, a.warnings, a.p) == (None, None, None, [], {})


def stored_study(url: str, sp: StudySpec, status: str) -> int:
    """A study row owned by `local` with TRIALS in its Optuna study, ended as `status`."""
    engine = create_engine(url)
    try:
        sid = submits.enqueue(engine, sp, "local")
        with transaction(engine) as conn:
            row = conn.execute(sa.select(studies).where(studies.c.id == sid)).one()
            conn.execute(studies.update().where(studies.c.id == sid).values(status=status))
        add_trials(ensure_study(optuna_storage(url), row.optuna_study, sp, sid))
    finally:
        engine.dispose()
    return sid


def test_the_reader_fills_the_answer_and_p(sqlite_url: str) -> None:
    sp = spec(search={"dropout_low": 0.3, "dropout_high": 0.8}, cv={"folds": 5})
    sid = stored_study(sqlite_url, sp, "succeeded")
    reader = Reader(create_engine(sqlite_url), optuna_storage(sqlite_url, writes=False))
    best = reader.best(sid, "local")
    assert (best.dropout, best.trial, best.one_se_dropout, best.complete) == (0.30, 0, 0.45, True)
    assert best.recommended is not None and best.recommended.dropout == 0.45
    assert best.tied is not None and best.tied.trials == [0, 1]
    assert best.warnings == [
        "the best rate 0.30 sits at search.dropout_low 0.3: widen the range "
        "(lower search.dropout_low)"
    ]
    assert best.test is None
    assert reader.study(sid, "local").best == best
    p = {t.number: t.p_vs_best for t in reader.trials(sid, "local")}
    assert p[0] == 1.0 and p[1] is not None and p[1] > 0.05
    assert p[2] is not None and p[2] < 0.05
    assert p[4] is None and p[5] is None and p[6] is None


def with_engine(t: FrozenTrial, engine: str, warning: str | None = None) -> FrozenTrial:
    t.set_user_attr("engine", engine)
    if warning is not None:
        t.set_user_attr("warning", warning)
    return t


def test_the_answer_says_how_the_trials_trained() -> None:
    """Issue 22: a module that fell back to member-by-member training said so only in /trials
    warnings; the answer (and every line renderer) now says it per study, reason included."""
    why = "module m cannot be vmapped (RuntimeError: x); members trained one by one"
    stacked = [with_engine(trial(r, [0.9, 0.92, 0.91]), "stacked") for r in (0.1, 0.3)]
    assert engine_of(stacked) == "stacked"
    loop = with_engine(trial(0.5, [0.9, 0.9, 0.9]), "member by member", why)
    assert engine_of([*stacked, loop]) == f"member by member ({why}) and stacked"
    failed = with_engine(trial(0.7, None, TrialState.FAIL), "member by member", why)
    assert engine_of([*stacked, failed]) == "stacked"  # a failed trial did not train to the end
    assert engine_of([trial(0.1, [0.9, 0.9, 0.9])]) is None  # told before it was recorded
    spec = StudySpec.model_validate({"dataset": {"builtin": "iris"}, "cv": {"folds": 3}})
    a = answer([loop], spec)
    assert a.engine == f"member by member ({why})"
    b = BestOut(
        study_id=1,
        dropout=0.5,
        params={"dropout": 0.5},
        score=Score(mean=0.9, std=0.0, folds=[0.9, 0.9, 0.9]),
        metric="accuracy",
        direction="maximize",
        trial=0,
        one_se_dropout=0.5,
        one_se_trial=0,
        complete=True,
        status="succeeded",
        engine=a.engine,
    )
    assert f"engine: member by member ({why})" in answer_lines(b)
