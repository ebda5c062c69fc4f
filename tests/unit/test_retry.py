"""The retry policy on its own: which attempt a given-back trial's parameters come back at, when
they are given up, when give-ups fail the study, and how many times a refit is tried."""

from __future__ import annotations

import pytest

from droptune.core.retry import Retry, RetryPolicy
from droptune.core.states import Outcome


def test_a_failed_trial_counts_an_attempt_until_max_retries() -> None:
    policy = RetryPolicy(max_retries=2, max_failed=10)
    assert policy.trial(0, Outcome.FAILED) == Retry(attempt=1, again=True)
    assert policy.trial(1, Outcome.FAILED) == Retry(attempt=2, again=True)
    assert policy.trial(2, Outcome.FAILED) == Retry(attempt=3, again=False)  # given up


def test_a_released_trial_comes_back_at_the_same_attempt() -> None:
    policy = RetryPolicy(max_retries=2, max_failed=10)
    assert policy.trial(0, Outcome.RELEASED) == Retry(attempt=0, again=True)
    assert policy.trial(2, Outcome.RELEASED) == Retry(attempt=2, again=True)


def test_no_retries_gives_up_at_the_first_failure() -> None:
    policy = RetryPolicy(max_retries=0, max_failed=0)
    assert policy.trial(0, Outcome.FAILED) == Retry(attempt=1, again=False)
    assert policy.trial(0, Outcome.RELEASED).again  # a shutdown is no failure


def test_a_lease_set_to_max_retries_gives_up_at_its_next_failure() -> None:
    # storage.submit.admission.no_retry sets a lease's attempt to max_retries for this.
    policy = RetryPolicy(max_retries=5, max_failed=10)
    assert not policy.trial(5, Outcome.FAILED).again


@pytest.mark.parametrize("outcome", [Outcome.DONE, Outcome.DROPPED])
def test_only_a_given_back_slot_is_retried(outcome: Outcome) -> None:
    with pytest.raises(ValueError, match=outcome.value):
        RetryPolicy(max_retries=2, max_failed=10).trial(0, outcome)


def test_the_study_fails_past_max_failed_give_ups() -> None:
    policy = RetryPolicy(max_retries=2, max_failed=3)
    assert [policy.study_fails(n) for n in range(1, 6)] == [False, False, False, True, True]
    assert RetryPolicy(max_retries=2, max_failed=0).study_fails(1)


def test_a_refit_is_tried_max_retries_plus_one_times() -> None:
    policy = RetryPolicy(max_retries=2, max_failed=10)
    assert policy.refit(0, counted=True) == Retry(attempt=1, again=True)
    assert policy.refit(1, counted=True) == Retry(attempt=2, again=True)
    assert policy.refit(2, counted=True) == Retry(attempt=3, again=False)


def test_a_refit_given_back_by_a_shutdown_counts_nothing() -> None:
    policy = RetryPolicy(max_retries=0, max_failed=10)
    assert policy.refit(0, counted=False) == Retry(attempt=0, again=True)
