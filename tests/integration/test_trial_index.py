"""The index droptune adds beside Optuna's `trials` (storage/sql/migrate.py): made by every
upgrade (again without error), and the count of a study's finished trials that every poll runs
reads it, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from droptune.storage.readmodel.answer_cache import finished_of
from droptune.storage.sql.db import create_engine, is_sqlite
from droptune.storage.sql.migrate import upgrade

INDEX = "ix_droptune_trials_study_state"


def test_upgrade_makes_the_trial_states_index_and_the_count_uses_it(db_url: str) -> None:
    upgrade(db_url)  # the fixture's database is migrated already: a second upgrade is harmless
    engine = create_engine(db_url)
    try:
        assert INDEX in {i["name"] for i in sa.inspect(engine).get_indexes("trials")}
        count = sa.select(finished_of(sa.literal("droptune-1")))
        sql = str(count.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            if not is_sqlite(db_url):
                conn.execute(sa.text("SET enable_seqscan = off"))  # an empty table: no seq scan
            plan = " ".join(
                str(r)
                for r in conn.execute(
                    sa.text(f"EXPLAIN QUERY PLAN {sql}" if is_sqlite(db_url) else f"EXPLAIN {sql}")
                )
            )
    finally:
        engine.dispose()
    assert INDEX in plan, plan
