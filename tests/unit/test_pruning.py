"""The paired, epoch-matched pruning rule (core/pruning.py): a member is stopped only when a strict
corrected paired test calls it worse than the stack's leader AND the gap to the leader, closing at
its recent pace, would still be open at the last epoch; slow learners catching up are kept."""

from __future__ import annotations

import numpy as np

from droptune.core.pruning import paired_stop

RATIO = 0.25  # 5-fold: n_test / n_train
WOBBLE = np.array([0.001, -0.002, 0.0015, -0.001, 0.0005])  # split-to-split noise of a gap


def _stack(*gaps: float) -> np.ndarray:
    """Five split scores per member: the leader's, and others `gap` below it (with noise)."""
    leader = np.array([0.90, 0.92, 0.91, 0.93, 0.90])
    return np.vstack([leader] + [leader - g + WOBBLE * (i + 1) for i, g in enumerate(gaps)])


def test_a_flat_member_far_behind_is_stopped_a_fast_learner_is_kept() -> None:
    x = _stack(0.10, 0.10, 0.002)
    history = {
        0: [0.80, 0.85, 0.91],  # the leader
        1: [0.81, 0.81, 0.81],  # flat, 0.1 behind: cannot catch up in 7 epochs
        2: [0.50, 0.65, 0.81],  # 0.1 behind but gaining 0.15 an epoch: kept
        3: [0.80, 0.85, 0.908],  # level with the leader: the test does not call it worse
    }
    stop = paired_stop(x, history, [0, 1, 2, 3], epoch=3, epochs=10, ratio=RATIO, maximize=True)
    assert stop == {1}


def test_nothing_is_stopped_in_warm_up_or_at_the_last_epoch() -> None:
    x = _stack(0.2)
    history = {0: [0.9, 0.9, 0.9], 1: [0.7, 0.7, 0.7]}
    assert paired_stop(x, history, [0, 1], 2, 10, RATIO, True) == set()  # warm-up (3 epochs)
    assert paired_stop(x, history, [0, 1], 10, 10, RATIO, True) == set()  # the last epoch
    assert paired_stop(x, history, [0, 1], 3, 10, RATIO, True) == {1}


def test_minimising_a_loss_turns_it_around() -> None:
    loss = -_stack(0.2)  # the second member's loss is 0.2 higher
    history = {0: [-0.9] * 3, 1: [-0.7] * 3}
    stop = paired_stop(loss, history, [0, 1], epoch=4, epochs=10, ratio=RATIO, maximize=False)
    assert stop == {1}
    # The same numbers as losses of the other sign: now the first member is the one behind.
    assert paired_stop(-loss, history, [0, 1], 4, 10, RATIO, maximize=False) == {0}


def test_a_noisy_small_gap_is_not_enough() -> None:
    """0.003 behind with split noise of the same size: not worse at the strict level."""
    x = _stack(0.003)
    x[1] += np.array([0.004, -0.004, 0.003, -0.003, 0.0])
    history = {0: [0.9] * 3, 1: [0.897] * 3}
    assert paired_stop(x, history, [0, 1], 5, 10, RATIO, True) == set()


def test_a_member_learning_only_as_fast_as_the_leader_is_stopped() -> None:
    """Gaining 0.05 an epoch, but so does the leader: the gap is not closing, so it cannot catch
    up (the member's own pace alone, against a leader frozen where it is, would have kept it)."""
    x = _stack(0.10)
    history = {0: [0.80, 0.85, 0.91], 1: [0.70, 0.75, 0.81]}
    assert paired_stop(x, history, [0, 1], epoch=3, epochs=10, ratio=RATIO, maximize=True) == {1}
    # The same member closing the gap by 0.05 an epoch would be level in two: kept.
    history[1] = [0.60, 0.70, 0.81]
    history[0] = [0.80, 0.86, 0.91]
    assert paired_stop(x, history, [0, 1], epoch=3, epochs=10, ratio=RATIO, maximize=True) == set()
