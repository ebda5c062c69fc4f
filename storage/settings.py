"""Storage settings, read from DROPTUNE_* environment variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./droptune.db"


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DROPTUNE_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # A lease whose heartbeat is older than this (database clock) is stale and its trial retried.
    lease_grace_seconds: float = 30.0
