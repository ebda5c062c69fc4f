"""`droptune db upgrade`: migrate droptune's tables and let Optuna create or migrate its own."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from droptune.core.errors import StorageError
from droptune.storage.optuna_bridge import optuna_storage
from droptune.storage.sql.db import create_engine, is_sqlite, normalise_url

log = logging.getLogger("droptune.migrate")

MIGRATIONS = Path(__file__).parent / "migrations"
# Every read of a study counts its finished trials (storage/readmodel/answer_cache.py), and the
# study watcher its trials by state: with this index the count reads the index alone, not each
# trial's row (a study of 5 000 trials on SQLite: 0.14 ms instead of 0.62 ms per poll). Optuna's
# own index on `study_id` stays; this one is droptune's, beside it, made once Optuna's tables
# exist (Optuna's migrations never touch an index they do not know).
TRIAL_STATES_INDEX_NAME = "ix_droptune_trials_study_state"
TRIAL_STATES_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {TRIAL_STATES_INDEX_NAME} ON trials (study_id, state)"
)


def upgrade(url: str, attempts: int = 5, *, revision: str = "head") -> None:
    """Bring the database to the newest schema (or to `revision`, which the tests' upgrade
    assets are made at: tests/assets/make_upgrade_assets.py); safe when several processes start
    at once."""
    url = normalise_url(url)  # refuses what is not a SQLite or PostgreSQL URL, with the reason
    for attempt in range(1, attempts + 1):
        try:
            _upgrade_once(url, revision)
            return
        except Exception as exc:  # SQLite: two first starts race on CREATE TABLE
            if attempt == attempts or not is_sqlite(url):
                first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[0]
                raise StorageError(f"could not migrate the database: {first}") from exc
            log.info("migration attempt %d failed (%s); retrying", attempt, exc)
            time.sleep(0.5 * attempt)


def _upgrade_once(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()
    if revision != "head":
        return  # an older schema (the tests' upgrade assets): as it was, without today's index
    # Optuna creates (or checks) its own tables when its storage opens.
    storage = optuna_storage(url)
    try:
        _index_trial_states(storage.engine)
    finally:
        storage.engine.dispose()


def _index_trial_states(engine: sa.Engine) -> None:
    """The index, where it is missing. A worker on the restricted role (README, Scale-out) may
    not create one on Optuna's table, even with IF NOT EXISTS (PostgreSQL checks ownership
    first): it looks before, and one it cannot make is left to the API's upgrade (the index
    only speeds reads up)."""
    with engine.begin() as conn:
        names = {i["name"] for i in sa.inspect(conn).get_indexes("trials")}
    if TRIAL_STATES_INDEX_NAME in names:
        return
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(TRIAL_STATES_INDEX))
    except sa.exc.ProgrammingError as exc:  # InsufficientPrivilege
        log.warning(
            "the index on Optuna's trials was not made (%s); the API's upgrade makes it",
            str(getattr(exc, "orig", exc)).strip().splitlines()[0],
        )
