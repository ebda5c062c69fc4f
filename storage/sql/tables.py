"""droptune's own tables. Optuna keeps its tables (trials, params, values) in the same database."""

from __future__ import annotations

import sqlalchemy as sa

from droptune.core.states import LeaseKind
from droptune.storage.sql.db import Id, db_now

metadata = sa.MetaData()

# A study is the unit of queueing: queued -> running -> succeeded | failed | cancelled.
# `slots_claimed` counts trial slots handed to workers and not given back; `n_done` counts trials
# finished COMPLETE or PRUNED. The study succeeds when n_done reaches n_trials.
studies = sa.Table(
    "droptune_studies",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("n_trials", sa.Integer, nullable=False),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("max_failed", sa.Integer, nullable=False),
    sa.Column("slots_claimed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_claim", sa.Integer, nullable=False, server_default="0"),
    sa.Column("n_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("n_given_up", sa.Integer, nullable=False, server_default="0"),
    sa.Column("optuna_study", sa.String(200), nullable=True, unique=True),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
    sa.Column("started_at", sa.DateTime, nullable=True),
    sa.Column("ended_at", sa.DateTime, nullable=True),
    # The uploaded data set it trains on (no foreign key: an ended study's answer outlives it).
    sa.Column("dataset_id", Id, nullable=True, index=True),
    # The final refit (evaluation.holdout / test_dataset): NULL when the study has none, else
    # waiting (the search runs) -> ready (claimable) -> running (leased) -> done. The study
    # succeeds only when it is done; `refit_result` is the test score (schemas.TestScore).
    sa.Column("refit_state", sa.String(16), nullable=True),
    sa.Column("refit_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("refit_result", sa.JSON, nullable=True),
    sa.Column("test_dataset_id", Id, nullable=True, index=True),  # evaluation's
    # The answer computed from the trials (storage/readmodel/answer_cache.py): `answer` is BestOut's
    # trial-dependent part, `answer_p` each COMPLETE trial's p_vs_best by number, and
    # `answer_trials` how many finished trials they were computed from (NULL: never computed).
    # A read uses them while that count is the study's current one; a writer only replaces
    # them with an answer from more finished trials.
    sa.Column("answer", sa.JSON, nullable=True),
    sa.Column("answer_p", sa.JSON, nullable=True),
    sa.Column("answer_trials", sa.Integer, nullable=True),
    # The registered model (`model.kind: custom`) a worker must have to claim it; NULL for the
    # built-in MLP and CNN, which every worker has.
    sa.Column("custom_model", sa.String(64), nullable=True),
    sa.Index("ix_droptune_studies_queue", "status", "priority", "id"),
    sqlite_autoincrement=True,
)

# One row per claimed trial slot while a worker holds it. `trial_id` is Optuna's trial id, set
# once the worker has created the trial; `params` is set when the slot retries earlier parameters.
leases = sa.Table(
    "droptune_leases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", Id, sa.ForeignKey("droptune_studies.id"), nullable=False, index=True),
    sa.Column("worker_id", sa.String(64), nullable=False, index=True),
    sa.Column("trial_id", sa.Integer, nullable=True),
    sa.Column("trial_number", sa.Integer, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("params", sa.JSON, nullable=True),
    sa.Column("claimed_at", sa.DateTime, nullable=False, server_default=db_now()),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False, server_default=db_now()),
    # a trial slot or the study's final refit (no trial, no slot): core.states.LeaseKind
    sa.Column("kind", sa.String(16), nullable=False, server_default=LeaseKind.TRIAL.value),
    sqlite_autoincrement=True,
)

# Parameters waiting to be retried after their trial failed or its worker was lost.
retries = sa.Table(
    "droptune_retries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", Id, sa.ForeignKey("droptune_studies.id"), nullable=False, index=True),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("origin_trial", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
    sqlite_autoincrement=True,
)

workers = sa.Table(
    "droptune_workers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False, server_default=db_now()),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False, server_default=db_now()),
    sa.Column("study_id", Id, nullable=True),
    sa.Column("trials", sa.JSON, nullable=True),
    # What the worker can take: the memory one batch may use (DROPTUNE_WORKER_MEMORY_GB, else
    # the device's), and the custom models it can load (entry points, DROPTUNE_MODELS).
    sa.Column("memory_bytes", sa.BigInteger, nullable=True),
    sa.Column("models", sa.JSON, nullable=True),
)

# An uploaded data set: its record here, its bytes in `dataset_chunks`. The same bytes with the
# same target and task are stored once per owner (`target`/`task` as asked: '' when not given).
datasets = sa.Table(
    "droptune_datasets",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("features", sa.Integer, nullable=False),
    sa.Column("task", sa.String(16), nullable=False),
    sa.Column("asked_target", sa.String(200), nullable=False, server_default=""),
    sa.Column("asked_task", sa.String(16), nullable=False, server_default=""),
    sa.Column("summary", sa.JSON, nullable=False),  # columns, classes and counts, image shape
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
    # What the workers hold once it is decompressed and read (NPZ members, Parquet column
    # chunks): the dataset quota counts this, never less than `bytes` (NULL before 0006).
    sa.Column("held_bytes", sa.BigInteger, nullable=True),
    sa.UniqueConstraint(
        "owner", "sha256", "asked_target", "asked_task", name="uq_droptune_dataset"
    ),
    sqlite_autoincrement=True,
)

# The file's bytes in order, CHUNK_BYTES a row, so neither side ever holds the whole file.
dataset_chunks = sa.Table(
    "droptune_dataset_chunks",
    metadata,
    sa.Column(
        "dataset_id",
        Id,
        sa.ForeignKey("droptune_datasets.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# The refit's models, as downloaded by GET /studies/{id}/model: a torch.export program (.pt2)
# with its metadata and any non-numeric preprocessing inside it (worker/run/export.py).
models = sa.Table(
    "droptune_models",
    metadata,
    sa.Column(
        "study_id",
        Id,
        sa.ForeignKey("droptune_studies.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("role", sa.String(16), primary_key=True),  # "recommended" | "best"
    sa.Column("dropout", sa.Float, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("file", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
)

# API tokens (storage/access/tokens.py): only the SHA-256 of a token is stored, with its first
# characters (`prefix`) so a person can tell tokens apart in `droptune token list`. A token is
# never deleted, only revoked: once one has existed, the API needs one on every route.
tokens = sa.Table(
    "droptune_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
    sa.Column("revoked_at", sa.DateTime, nullable=True),
    sqlite_autoincrement=True,
)

# `POST /studies` with an `Idempotency-Key`: the study the first request with that key made,
# and the hash of its body (the same key with another body is refused). Kept for a day.
idempotency = sa.Table(
    "droptune_idempotency",
    metadata,
    sa.Column("owner", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("body_sha256", sa.String(64), nullable=False),
    sa.Column("study_id", Id, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
)

# Dashboard sessions (service/middleware/auth.py): the browser's cookie holds a random id; only its
# SHA-256
# is stored, with the token it was opened with. A session ends when it expires, at /logout, or
# when that token is revoked; the cookie never holds the API token itself.
sessions = sa.Table(
    "droptune_sessions",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.Integer, nullable=False, index=True),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=db_now()),
    sa.Column("expires_at", sa.DateTime, nullable=False),
    sa.Column("revoked_at", sa.DateTime, nullable=True),
)
