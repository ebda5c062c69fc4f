"""API settings, from DROPTUNE_* environment variables and `droptune serve` flags."""

from __future__ import annotations

from pydantic import Field

from droptune.core.settings import StorageSettings


class ServiceSettings(StorageSettings):
    """The shared settings (database URL, lease grace, recovery period) plus the API's own."""

    host: str = "127.0.0.1"
    port: int = 8000
    # `droptune serve --workers N`: uvicorn processes on the one port (the API holds no state
    # between requests). Not `up --workers`, which counts training workers.
    api_workers: int = Field(1, ge=1)
    dashboard: bool = True
    max_wait_seconds: float = 600.0  # longest `?wait=` a request may hold
    # Held `?wait=` requests and event streams one owner may have open at once (service/held.py)
    max_held_per_owner: int = Field(64, ge=1)
    # Uploads: the largest file (413 beyond it, before the body is read where its length is
    # declared) and the shape a data set may have.
    max_upload_mb: float = 256.0
    max_columns: int = 10_000
    max_cells: int = 500_000_000
    max_categories: int = 256
    # The largest body of any other request (JSON): 413 beyond it.
    max_body_mb: float = 1.0
    # Access (service/middleware/auth.py). Host names the API answers to besides the loopback names
    # and the
    # bind address (comma-separated; `*` for any); origins a browser page may call it from
    # (CORS, comma-separated; none by default); `insecure` lets `serve` bind a public address
    # with no token created (everyone who can reach the port can do everything).
    allowed_hosts: str = ""
    cors_origins: str = ""
    insecure: bool = False
    # How long a dashboard sign-in lasts (service/middleware/sessions.py): the session and its
    # cookie.
    session_hours: float = Field(7 * 24.0, gt=0)
    # Per-owner quotas: active (queued or running) studies, trial-epochs still to run over them
    # (trials x epochs x repeats), and bytes of stored data sets.
    quota_active_studies: int = 100
    quota_trial_epochs: int = 1_000_000
    quota_dataset_mb: float = 20_480.0
