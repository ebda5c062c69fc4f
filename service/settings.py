"""API settings, from DROPTUNE_* environment variables and `droptune serve` flags."""

from __future__ import annotations

from droptune.storage.settings import StorageSettings


class ServiceSettings(StorageSettings):
    """The shared settings (database URL, lease grace, recovery period) plus the API's own."""

    host: str = "127.0.0.1"
    port: int = 8000
    dashboard: bool = True
    max_wait_seconds: float = 600.0  # longest `?wait=` a request may hold
    # Uploads: the largest file (413 beyond it, before the body is read where its length is
    # declared) and the shape a data set may have.
    max_upload_mb: float = 256.0
    max_columns: int = 10_000
    max_cells: int = 500_000_000
    max_categories: int = 256
