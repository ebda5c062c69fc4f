"""Ending a search early (`search.stop_when_settled`): the SQL side of core/answer/settled.py's
rule, which worker/run/settling.py applies after each batch."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from droptune.core.states import ACTIVE
from droptune.storage.jobs.queue import notify, search_ended
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import retries, studies


def stop_search(engine: Engine, study_id: int, reason: str) -> bool:
    """End an active study's search early (search.stop_when_settled): no slot beyond those
    already claimed is handed out (`n_trials` becomes the claimed count) and `reason` says why;
    when every claimed trial has finished, the search ends now as the last trial would end it
    (the refit becomes claimable, or the study succeeds). Not while retries wait for a slot
    (their parameters are owed a run), nor once the study has ended; False then."""
    s = studies.c
    with transaction(engine) as conn:
        study = conn.execute(
            sa.select(studies).where(s.id == study_id).with_for_update()
        ).one_or_none()
        if study is None or study.status not in ACTIVE or study.slots_claimed >= study.n_trials:
            return False
        owed = conn.execute(
            sa.select(sa.func.count()).select_from(retries).where(retries.c.study_id == study_id)
        ).scalar_one()
        if owed:
            return False
        values: dict[str, Any] = {"n_trials": study.slots_claimed, "reason": reason}
        if study.n_done >= study.slots_claimed:
            values |= search_ended(study)
        conn.execute(studies.update().where(s.id == study_id).values(**values))
        notify(conn, study_id, work="refit_state" in values)
    return True
