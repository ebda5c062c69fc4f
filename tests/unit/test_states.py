"""The state enums are the strings the database and the API use, and agree with the Literal
types core/schemas.py keeps for the OpenAPI document; the lifecycle table is consistent."""

from __future__ import annotations

import json
from typing import get_args

from droptune.core import schemas
from droptune.core.states import (
    ACTIVE,
    ENDED,
    LIFECYCLE,
    REFIT_PENDING,
    RefitState,
    StudyStatus,
    WorkerStatus,
    may_follow,
)


def test_the_schemas_literals_are_the_enums_values() -> None:
    assert get_args(schemas.StudyStatus) == tuple(s.value for s in StudyStatus)
    refit = get_args(schemas.Progress.model_fields["refit"].annotation)
    assert get_args(refit[0]) == tuple(s.value for s in RefitState)
    worker = schemas.WorkerOut.model_fields["status"].annotation
    assert get_args(worker) == tuple(s.value for s in WorkerStatus)


def test_a_state_is_its_string() -> None:
    assert [StudyStatus.CANCELLED] == ["cancelled"]  # equal to the string the column holds
    assert f"{RefitState.SKIPPED}" == str(RefitState.SKIPPED) == "skipped"
    assert json.dumps({"status": StudyStatus.RUNNING}) == '{"status": "running"}'
    assert "queued" in ACTIVE and {"queued": 1}.get(StudyStatus.QUEUED) == 1


def test_active_and_ended_split_the_statuses() -> None:
    assert set(ACTIVE) | set(ENDED) == set(StudyStatus)
    assert not set(ACTIVE) & set(ENDED)
    assert set(REFIT_PENDING) == set(RefitState) - {RefitState.DONE, RefitState.SKIPPED}


def test_the_lifecycle_table() -> None:
    assert set(LIFECYCLE) == set(StudyStatus)
    for ended in ENDED:  # an ended study never changes again
        assert LIFECYCLE[ended] == frozenset()
    assert may_follow("queued", "running") and may_follow("running", "succeeded")
    assert not may_follow("queued", "succeeded")  # only through a claim
    assert not may_follow("cancelled", "running")
    # Every status but the first can be reached.
    reached = set().union(*LIFECYCLE.values())
    assert reached == set(StudyStatus) - {StudyStatus.QUEUED}
