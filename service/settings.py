"""API settings, from DROPTUNE_* environment variables and `droptune serve` flags."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.settings import DEFAULT_DATABASE_URL


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DROPTUNE_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    lease_grace_seconds: float = 30.0
    recover_every_seconds: float = 5.0  # the API recovers stale leases too, in the background
    dashboard: bool = True
    max_wait_seconds: float = 600.0  # longest `?wait=` a request may hold
    # Uploads: the largest file (413 beyond it, before the body is read where its length is
    # declared) and the shape a data set may have.
    max_upload_mb: float = 256.0
    max_columns: int = 10_000
    max_cells: int = 500_000_000
    max_categories: int = 256
