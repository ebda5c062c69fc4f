"""Worker settings, from DROPTUNE_* environment variables and `droptune worker` flags."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.settings import DEFAULT_DATABASE_URL


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DROPTUNE_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    heartbeat_seconds: float = 5.0
    lease_grace_seconds: float = 30.0
    idle_wait_seconds: float = 2.0
    recover_every_seconds: float = 5.0
    max_batch_trials: int | None = None  # cap on trials trained together; None: from memory
    exit_when_idle: bool = False  # stop once the queue is empty (for scripts and tests)
    # Uploaded data sets, fetched from the database once per machine (least recently used out).
    cache_dir: Path = Path.home() / ".cache" / "droptune" / "datasets"
    cache_mb: float = 4096.0
