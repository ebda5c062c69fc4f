"""droptune's settings, read from DROPTUNE_* environment variables.

`StorageSettings` is the one base: it holds what the API and the workers share, and
`ServiceSettings` (service/settings.py) and `WorkerSettings` (worker/run/settings.py) extend it with
their own fields, so no setting is declared twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Self

from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "DROPTUNE_"
DEFAULT_DATABASE_URL = "sqlite:///./droptune.db"


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # A lease whose heartbeat is older than this (database clock) is stale and its trial retried.
    lease_grace_seconds: float = 30.0
    # Both the API (in the background) and every worker recover stale leases, this often.
    recover_every_seconds: float = 5.0
    # psycopg's server-side prepared statements; off behind PgBouncer older than 1.21 in
    # transaction pooling, which cannot carry them (docs/scale-out.md).
    pg_prepared_statements: bool = True
    # Where a worker LISTENs for new work: the database directly when database_url goes through
    # PgBouncer's transaction pooling, which accepts LISTEN but delivers nothing.
    listen_url: str | None = None
    # The memory one worker's batch may use, in GiB. The API refuses a study whose smallest batch
    # would need more (admission control); a worker advertises it (else its device's memory).
    worker_memory_gb: float | None = None

    @classmethod
    def from_flags(cls, **flags: Any) -> Self:
        """Settings from the environment, with the command-line flags that were given (not None)
        taking precedence over the DROPTUNE_* variables."""
        return cls(**{k: v for k, v in flags.items() if v is not None})

    @classmethod
    def env_names(cls) -> set[str]:
        return {ENV_PREFIX + name.upper() for name in cls.model_fields}

    def to_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment a child process reads these same settings back from: `base`
        (os.environ by default, for PATH and the like) with every variable of these settings
        replaced by this object's values. A field that is None is left out, not inherited, so the
        child gets None too."""
        names = self.env_names()
        # pydantic-settings matches names case-insensitively: drop `droptune_port` as well.
        env = {
            k: v
            for k, v in (os.environ if base is None else base).items()
            if k.upper() not in names
        }
        for name, value in self.model_dump().items():
            if value is not None:
                env[ENV_PREFIX + name.upper()] = _env_value(value)
        return env


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # str, int, float (repr: round-trips exactly), Path
