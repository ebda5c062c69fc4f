"""The queue's depth as SQL text, for autoscalers that run a query of their own (KEDA's
`postgresql` scaler): the trial slots and ready refits a worker would claim now, and the workers
holding leases.

The depth is built from the very conditions the claims use (`queue.open_slots`,
`refits.ready`), so it counts what workers would claim, no more, no less.
`deploy/k8s/base/worker-scaledobject.yaml` carries the text `depth_sql()` returns, and
`tests/deploy` checks that it is the same and that it counts what workers then claim.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.base import PGDialect

from droptune.storage.jobs import queue, refits
from droptune.storage.sql.tables import leases, studies


def depth_query(models: Collection[str] = ()) -> sa.Select[tuple[int]]:
    """Open trial slots plus ready refits, for a worker with these custom models (a worker
    of the stock image has none: the studies of custom models are not counted)."""
    s = studies.c
    slots = (
        sa.select(sa.func.coalesce(sa.func.sum(s.n_trials - s.slots_claimed), 0))
        .where(*queue.open_slots(models))
        .scalar_subquery()
    )
    ready = sa.select(sa.func.count()).where(*refits.ready(models)).scalar_subquery()
    return sa.select((slots + ready).label("depth"))


def busy_query() -> sa.Select[tuple[int]]:
    """The workers that hold at least one lease (a trial or a refit running)."""
    return sa.select(sa.func.count(sa.distinct(leases.c.worker_id)).label("busy"))


def sql_text(clause: sa.ClauseElement) -> str:
    """A statement or condition as PostgreSQL text with its values inlined, on one line (a
    manifest carries it as a plain YAML string)."""
    dialect = PGDialect()  # type: ignore[no-untyped-call]
    compiled = clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return " ".join(str(compiled).split())


def depth_sql(models: Collection[str] = ()) -> str:
    """`depth_query` as the text an autoscaler runs."""
    return sql_text(depth_query(models))


def busy_sql() -> str:
    """`busy_query` as the text an autoscaler runs."""
    return sql_text(busy_query())


if __name__ == "__main__":  # python -m droptune.storage.jobs.depth [MODEL ...]
    import sys

    print(depth_sql(sys.argv[1:]))
    print(busy_sql())
