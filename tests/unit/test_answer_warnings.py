"""The answer's warnings (core/answer/rules.py): splits too small to rank rates, the best or the
recommended rate at an edge of the searched range (naming the bound to move), and no edge blamed
when rates inside the range score the same."""

from __future__ import annotations

import optuna
import pytest

from droptune.core.answer.rules import answer, edge_warnings
from droptune.core.spec.search import SearchSpec
from tests.unit.test_answer import BEST, spec, trial


@pytest.mark.parametrize(("sizes", "warned"), [([2.0, 2.0], True), ([1150.0, 287.0], False)])
def test_tiny_splits_are_said_to_mean_little(sizes: list[float], warned: bool) -> None:
    """A 4-row table with 2 folds "succeeded" at accuracy 1.0 ± 0 (issue 22): the answer now
    says the splits are too small to rank rates, and how many rows would help."""
    study = optuna.create_study(direction="maximize")
    for rate, folds in [(0.2, [1.0, 1.0]), (0.7, [1.0, 0.5])]:
        study.add_trial(trial(rate, folds, split_sizes=sizes))
    warnings = answer(study.trials, spec(cv={"folds": 2})).warnings
    small = [w for w in warnings if "too few to tell dropout rates apart" in w]
    if warned:
        assert small == [
            "each split scored only 2 unseen rows, too few to tell dropout rates apart: the "
            "scores, the tied set and the recommendation mean little below 30 rows per split "
            "(about 60 rows with 2 folds)"
        ], warnings
    else:
        assert small == [], warnings


def _edges(best: float, recommended: float | None, low: float, high: float) -> list[str]:
    b = trial(best, BEST)
    b.number = 0
    r = b
    if recommended is not None:
        r = trial(recommended, BEST)
        r.number = 1
    return edge_warnings(b, r, SearchSpec(dropout_low=low, dropout_high=high))


def test_edge_warnings_name_the_bound_to_move() -> None:
    # The range 0.1 to 0.8 is 0.7 wide: within 0.035 of a bound is at it.
    assert _edges(0.79, None, 0.1, 0.8) == [
        "the best rate 0.79 sits at search.dropout_high 0.8: widen the range "
        "(raise search.dropout_high)"
    ]
    assert _edges(0.12, None, 0.1, 0.8) == [
        "the best rate 0.12 sits at search.dropout_low 0.1: widen the range "
        "(lower search.dropout_low)"
    ]
    assert _edges(0.02, None, 0.0, 0.9) == [
        "the best rate 0.02 sits at search.dropout_low 0: this network does best with (almost) "
        "no dropout, so dropout does not help it here"
    ]


def test_no_edge_warning_inside_and_one_per_rate() -> None:
    assert _edges(0.4, 0.5, 0.1, 0.8) == []
    assert _edges(0.76, 0.14, 0.1, 0.8) == []  # just inside both margins
    assert _edges(0.4, 0.78, 0.1, 0.8) == [
        "the recommended rate 0.78 sits at search.dropout_high 0.8: widen the range "
        "(raise search.dropout_high)"
    ]
    both = _edges(0.77, 0.79, 0.1, 0.8)
    assert [w.split(" sits")[0] for w in both] == [
        "the best rate 0.77",
        "the recommended rate 0.79",
    ]


def test_scores_equal_but_for_rounding_tie_and_the_edge_is_not_blamed() -> None:
    """Four rates got the same rows right on every split: their means differ only by float32
    rounding. The first of them is the best (not the one rounding favours), and the low edge is
    not named as where the network does best when rates inside the range score the same."""
    same = [0.97634049654] * 5
    study = optuna.create_study(direction="maximize")
    study.add_trial(trial(0.258, same))
    study.add_trial(trial(0.033, [v + 1.2e-8 for v in same]))  # rounding's favourite, at the edge
    study.add_trial(trial(0.6, [0.90, 0.91, 0.92, 0.93, 0.90]))
    a = answer(study.trials, spec(search={"dropout_high": 0.9}))
    assert a.best is not None and a.best.number == 0
    assert not any("sits at search.dropout_low" in w for w in a.warnings), a.warnings
    # A best alone at the edge is still named.
    alone = optuna.create_study(direction="maximize")
    alone.add_trial(trial(0.01, [0.99, 0.99, 0.98, 0.99, 0.99]))
    alone.add_trial(trial(0.5, [0.90, 0.91, 0.92, 0.93, 0.90]))
    b = answer(alone.trials, spec())
    assert any("best rate 0.01 sits at search.dropout_low" in w for w in b.warnings), b.warnings
