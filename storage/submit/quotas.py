"""Per-owner quotas: active studies, trial-epochs still to run, bytes of stored data sets.

Each check runs inside the transaction that stores the new study or data set, after
`lock_owner`: on PostgreSQL a transaction-scoped advisory lock on the owner makes two concurrent
submits (or uploads) of one owner take turns, so they cannot both read the use from before the
other and both slip under the limit. SQLite needs no lock: every write transaction there starts
with BEGIN IMMEDIATE (storage/sql/db.py), which serialises writers already.

A refusal raises before anything is inserted, and the transaction rolls back: nothing is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from droptune.core.errors import DroptuneError, Forbidden
from droptune.core.spec.study import StudySpec
from droptune.core.states import ACTIVE
from droptune.storage.sql.tables import datasets, studies

MB = 2**20
STUDIES, DATASETS = "studies", "datasets"  # one lock per owner for each: an upload never waits
# for a submit


class QuotaExceeded(DroptuneError):
    """429: a quota on work the owner has queued; it frees as their studies end."""

    status = 429
    title = "Quota exceeded"


class QuotaSettings(Protocol):
    """The settings the quotas come from (ServiceSettings: DROPTUNE_QUOTA_*)."""

    quota_active_studies: int
    quota_trial_epochs: int
    quota_dataset_mb: float


@dataclass(frozen=True)
class Quotas:
    """The limits, per owner. Built by the API from its settings (`of`)."""

    active_studies: int = 100
    trial_epochs: int = 1_000_000
    dataset_mb: float = 20_480.0

    @classmethod
    def of(cls, settings: QuotaSettings) -> Quotas:
        return cls(
            settings.quota_active_studies, settings.quota_trial_epochs, settings.quota_dataset_mb
        )


def lock_owner(conn: Connection, owner: str, what: str) -> None:
    """Make this owner's concurrent submits (`what` = STUDIES) or uploads (DATASETS) take turns
    until the transaction ends (PostgreSQL; SQLite's writers take turns anyway)."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"droptune-quota:{what}:{owner}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)  # the lock's bigint key
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def trial_epochs(spec: StudySpec | dict[str, Any], trials: int) -> int:
    """The epochs `trials` trials of a study train: trials x epochs x cv.repeats (each
    repeat's folds train together, one epoch at a time)."""
    if isinstance(spec, StudySpec):
        return trials * spec.training.epochs * spec.cv.repeats
    return trials * int(spec["training"]["epochs"]) * int(spec["cv"].get("repeats", 1))


def check_studies(conn: Connection, owner: str, spec: StudySpec, quotas: Quotas) -> None:
    """Refuse (429) a new study that would take the owner past either study quota: the count of
    queued or running studies, or the trial-epochs still to run over them with the new one's."""
    rows = conn.execute(
        sa.select(studies.c.spec, studies.c.n_trials, studies.c.n_done).where(
            studies.c.owner == owner, studies.c.status.in_(ACTIVE)
        )
    ).all()
    if len(rows) >= quotas.active_studies:
        raise QuotaExceeded(
            f"quota DROPTUNE_QUOTA_ACTIVE_STUDIES={quotas.active_studies} reached: you have "
            f"{len(rows)} queued or running studies; cancel some or wait for them to end"
        )
    queued = sum(trial_epochs(r.spec, max(0, r.n_trials - r.n_done)) for r in rows)
    new = trial_epochs(spec, spec.search.n_trials)
    if queued + new > quotas.trial_epochs:
        raise QuotaExceeded(
            f"quota DROPTUNE_QUOTA_TRIAL_EPOCHS={quotas.trial_epochs} exceeded: your queued or "
            f"running studies have {queued} trial-epochs still to run, and this one adds {new} "
            "(search.n_trials x training.epochs x cv.repeats)"
        )


def check_dataset_bytes(conn: Connection, owner: str, size: int, quotas: Quotas) -> None:
    """Refuse (403) an upload that would take the owner's stored data sets past the quota. Not
    429: the space frees only when the owner deletes data sets, not by waiting. Sizes are what
    the workers hold decompressed (`held_bytes`; a 1.5 MB NPZ can hold 1.6 GB), or the file's
    size for a data set stored before that was measured; `size` is the new upload's."""
    held = sa.func.coalesce(datasets.c.held_bytes, datasets.c.bytes)
    used = int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(held), 0)).where(datasets.c.owner == owner)
        ).scalar_one()
    )
    if used + size > quotas.dataset_mb * MB:
        raise Forbidden(
            f"quota DROPTUNE_QUOTA_DATASET_MB={quotas.dataset_mb:g} exceeded: your stored data "
            f"sets take {used / MB:.1f} MB and this upload {size / MB:.1f} MB, counted "
            "decompressed (as the workers hold them, not the files' sizes); delete some with "
            "`droptune dataset rm ID` (DELETE /datasets/{id})"
        )
