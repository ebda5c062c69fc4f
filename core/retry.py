"""How often a study's trials and its refit are tried again: one small policy, no SQL.

The model is procrastinate's `RetryStrategy`: a value object built from the study's settings
that answers, from the attempts made so far and how the last one ended, whether there is
another and under which attempt number. storage/jobs/queue.py applies its answers in the
transaction that ends a lease; keeping the rule here lets it be tested without a database.

Attempt numbers start at 0 (a slot's first try). An attempt is counted when a try failed (a
trial ended FAILED, a refit raised or its worker died); a try given back unfinished (a
shutdown: RELEASED) is retried under the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

from droptune.core.states import Outcome


@dataclass(frozen=True)
class Retry:
    """The answer for one try that ended without a result."""

    attempt: int  # the attempt number the next try runs as (the count of failed tries so far)
    again: bool  # False: out of attempts, no next try


@dataclass(frozen=True)
class RetryPolicy:
    """A study's `search.max_retries` and `search.max_failed` (stored on its row)."""

    max_retries: int  # failed tries a trial's parameters, or the refit, may have beyond the first
    max_failed: int  # parameters given up on before the study fails

    def _next(self, attempt: int, counted: bool) -> Retry:
        attempt += 1 if counted else 0
        return Retry(attempt, attempt <= self.max_retries)

    def trial(self, attempt: int, outcome: Outcome) -> Retry:
        """A trial slot given back (FAILED or RELEASED) at `attempt`: whether its parameters
        are retried, and at which attempt. A FAILED end counts one; a RELEASED one does not
        (the worker stopped, the parameters did not fail)."""
        if outcome not in (Outcome.FAILED, Outcome.RELEASED):
            raise ValueError(f"{outcome.value}: nothing is given back to retry")
        return self._next(attempt, outcome is Outcome.FAILED)

    def study_fails(self, given_up: int) -> bool:
        """Whether `given_up` parameters out of retries fail the study (more than max_failed:
        the failures look deterministic, not bad luck)."""
        return given_up > self.max_failed

    def refit(self, attempts: int, *, counted: bool) -> Retry:
        """A refit lease that ended without a result after `attempts` counted ones: claimable
        again or not. `counted`: it failed or its worker died (a refit that kills its worker
        must not loop for ever); a shutdown gives it back uncounted."""
        return self._next(attempts, counted)
