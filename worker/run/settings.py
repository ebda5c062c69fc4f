"""Worker settings, from DROPTUNE_* environment variables and `droptune worker` flags."""

from __future__ import annotations

from pathlib import Path

from droptune.core.settings import StorageSettings


class WorkerSettings(StorageSettings):
    """The shared settings (database URL, lease grace, recovery period) plus the worker's own."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    heartbeat_seconds: float = 5.0
    idle_wait_seconds: float = 2.0
    max_batch_trials: int | None = None  # cap on trials trained together; None: from memory
    exit_when_idle: bool = False  # stop once the queue is empty (for scripts and tests)
    # Uploaded data sets, fetched from the database once per machine (least recently used out).
    cache_dir: Path = Path.home() / ".cache" / "droptune" / "datasets"
    cache_mb: float = 4096.0
    # Custom models for development, besides the installed entry points `droptune.models`:
    # "name=package.module:function,..." (worker/run/plugins.py).
    models: str = ""
