"""The stopping rule (core/answer/settled.py): the search ends early only when a batch changed
neither the recommended trial nor the tied set and the fitted curve expects no rate to beat the
best by a tenth of its SE; otherwise it goes on."""

from __future__ import annotations

import dataclasses

import optuna

from droptune.core.answer.fit import Fit
from droptune.core.answer.rules import answer
from droptune.core.answer.settled import PREFIX, curve_fit, settled
from tests.unit.test_answer import add_trials, spec, trial

CERTAIN = Fit(
    rates=[0.0, 0.3, 0.6, 0.9],
    mean=[0.90, 0.974, 0.95, 0.90],
    sd=[1e-5] * 4,
    best=0.3,
    best_interval=(0.28, 0.32),
    recommended=0.45,
    tolerance=1e-5,
    length_scale=0.3,
)


def test_settled_only_when_nothing_moved_and_the_fit_expects_no_gain() -> None:
    study = optuna.create_study(direction="maximize")
    trials = add_trials(study)
    sp = spec()
    before = answer(trials, sp)
    # A new, clearly worse rate: nothing moves.
    study.add_trial(trial(0.7, [0.80, 0.81, 0.79, 0.80, 0.82]))
    after = answer(study.trials, sp)
    why = settled(before, after, CERTAIN, 8, 20, 0.9)
    assert why is not None and why.startswith(f"{PREFIX} 8 of at most 20 trials")
    assert "0.45" in why  # the recommended rate
    # The fit unsure somewhere: a batch might still find better.
    unsure = dataclasses.replace(CERTAIN, sd=[1e-5, 1e-5, 0.05, 1e-5])
    assert unsure.max_expected_improvement() > 0.001
    assert settled(before, after, unsure, 8, 20, 0.9) is None
    assert settled(before, after, None, 8, 20, 0.9) is None  # no fit (per-layer): never early
    # A new best: the recommendation moves.
    study.add_trial(trial(0.5, [0.99, 0.99, 0.99, 0.98, 0.99]))
    moved = answer(study.trials, sp)
    assert settled(after, moved, CERTAIN, 9, 20, 0.9) is None


def test_the_fit_the_rule_reads() -> None:
    trials = add_trials(optuna.create_study(direction="maximize"))
    fit = curve_fit(trials, spec())
    assert fit is not None and fit.maximize and fit.max_expected_improvement() >= 0.0
    assert curve_fit(trials, spec(search={"per_layer": True}, model={"hidden": [8, 8]})) is None
