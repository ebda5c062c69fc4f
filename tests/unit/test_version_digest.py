"""storage/readmodel/versions.py's remembered digests: the same digest as hashing again for the
same values, a new one when any value or its type changes."""

from __future__ import annotations

from typing import Any

import pytest

from droptune.storage.readmodel import versions


@pytest.fixture(autouse=True)
def _forget() -> None:
    versions._LAST.clear()


ROW: tuple[Any, ...] = (7, "running", None, '{"a": 1}', None, "none", '{"dropout": 0.3}', 40, 40)


def test_a_remembered_digest_is_the_digest_of_the_values() -> None:
    first = versions._digest_of("best", 7, ROW)
    assert first == versions.digest("best", *ROW)
    # equal values from another row (other string objects): the same digest
    again = tuple(p if not isinstance(p, str) else "".join(list(p)) for p in ROW)
    assert versions._digest_of("best", 7, again) == first


@pytest.mark.parametrize(
    "changed",
    [
        (7, "running", None, '{"a": 1}', None, "none", '{"dropout": 0.31}', 40, 40),  # the answer
        (7, "running", None, '{"a": 1}', None, "none", '{"dropout": 0.3}', 41, 41),  # a trial
        (7, "running", None, '{"a": 1}', None, "none", '{"dropout": 0.3}', 40.0, 40),  # a type
        (7.0, "running", None, '{"a": 1}', None, "none", '{"dropout": 0.3}', 40, 40),  # 7 == 7.0
    ],
)
def test_any_change_gives_the_digest_of_the_new_values(changed: tuple[Any, ...]) -> None:
    versions._digest_of("best", 7, ROW)
    assert versions._digest_of("best", 7, changed) == versions.digest("best", *changed)


def test_routes_and_studies_are_kept_apart_and_the_kept_ones_bounded() -> None:
    best = versions._digest_of("best", 7, ROW)
    assert versions._digest_of("study", 7, ROW) == versions.digest("study", *ROW) != best
    for sid in range(versions.MAX_KEPT + 10):
        versions._digest_of("best", sid, ROW)
    assert len(versions._LAST) <= versions.MAX_KEPT
