"""Create or update the workers' database role: the README's scale-out SQL, idempotent; and,
with DROPTUNE_KEDA_PASSWORD, KEDA's role, which may read only the columns its queue-depth
queries read (storage/jobs/depth.py).

Run by the API's init container after `droptune db upgrade` (the grants cover the tables that
exist, so it runs again on every start, after every upgrade). Needs the database owner's URL in
DROPTUNE_DATABASE_URL (with CREATEROLE, or a role created beforehand by whoever has it) and the
role's password in DROPTUNE_WORKER_PASSWORD; DROPTUNE_WORKER_ROLE names it (droptune_worker),
DROPTUNE_KEDA_ROLE KEDA's (droptune_keda).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# The columns of droptune_studies a worker writes (claims, leases' ends, the refit, the answer
# kept on the row, an early stop): storage/jobs and storage/readmodel/answer_cache.py.
STUDY_COLUMNS = (
    *("status", "reason", "n_trials", "slots_claimed", "last_claim", "n_done", "n_given_up"),
    *("started_at", "ended_at", "refit_state", "refit_attempts", "refit_result"),
    *("answer", "answer_p", "answer_trials"),
)
# After the CREATE ROLE, exactly as README.md's worker-role block (tests/deploy compares them).
GRANTS = [
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    "REVOKE ALL ON droptune_tokens, droptune_idempotency, droptune_sessions FROM {role}",
    # the schema versions: read at start, never written (a worker that wrote one would stop
    # every later API start in its migration)
    "REVOKE INSERT, UPDATE, DELETE ON droptune_alembic_version, alembic_version, version_info "
    "FROM {role}",
    # data sets are read, never written; a study's row only in the columns the queue moves (not
    # its owner, spec or name: a worker that rewrote `owner` would hand a study to another owner)
    "REVOKE INSERT, UPDATE, DELETE ON droptune_datasets, droptune_dataset_chunks, "
    "droptune_studies FROM {role}",
    f"GRANT UPDATE ({', '.join(STUDY_COLUMNS)}) ON droptune_studies TO {{role}}",
]
# KEDA's role: the columns depth_sql() and busy_sql() read, and nothing else (an operator in
# another namespace holds its password).
KEDA_GRANTS = [
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT (status, n_trials, slots_claimed, custom_model, refit_state) "
    "ON droptune_studies TO {role}",
    "GRANT SELECT (worker_id) ON droptune_leases TO {role}",
]


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def statements(
    role: str, password: str, exists: bool = False, grants: list[str] = GRANTS
) -> list[str]:
    """The SQL for `role`: created (or its password set, when it `exists`), then granted."""
    verb = "ALTER" if exists else "CREATE"
    login = "" if exists else " LOGIN"
    first = f"{verb} ROLE {role}{login} PASSWORD {literal(password)}"
    return [first] + [g.format(role=role) for g in grants]


def role_setting(name: str, default: str, password_var: str, required: bool) -> tuple[str, str]:
    """(role, password) from the environment; exit with one line when unusable."""
    role = os.environ.get(name, default)
    password = os.environ.get(password_var, "")
    if not ROLE.fullmatch(role):
        sys.exit(f"worker-role: {name} {role!r} is not a plain role name")
    if (required or password) and (len(password) < 12 or "REPLACE-ME" in password):
        sys.exit(f"worker-role: set {password_var} (12+ characters, not the placeholder)")
    return role, password


def settings() -> tuple[str, str, str]:
    """(libpq URL, role, password) from the environment; exit with one line when unusable."""
    url = os.environ.get("DROPTUNE_DATABASE_URL", "")
    if not url.startswith(("postgresql://", "postgresql+psycopg://")):
        sys.exit("worker-role: DROPTUNE_DATABASE_URL must be a postgresql:// URL")
    role, password = role_setting(
        "DROPTUNE_WORKER_ROLE", "droptune_worker", "DROPTUNE_WORKER_PASSWORD", required=True
    )
    return url.replace("postgresql+psycopg://", "postgresql://", 1), role, password


def ensure(conn: Any, role: str, password: str, grants: list[str]) -> None:
    """Create `role` (or set its password) and apply `grants`, in the caller's transaction."""
    import psycopg

    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    first, *rest = statements(role, password, exists is not None, grants)
    try:
        with conn.transaction():
            conn.execute(first.encode())
    except psycopg.errors.InsufficientPrivilege:
        if exists is None:
            raise
        print(f"worker-role: cannot set {role}'s password (no CREATEROLE); left as it is")
    for grant in rest:
        conn.execute(grant.encode())
    print(f"worker-role: {role} {'updated' if exists else 'created'}; grants applied")


def main() -> None:
    import psycopg

    url, role, password = settings()
    keda, keda_password = role_setting(
        "DROPTUNE_KEDA_ROLE", "droptune_keda", "DROPTUNE_KEDA_PASSWORD", required=False
    )
    with psycopg.connect(url) as conn, conn.transaction():
        # Replicas starting together take turns (CREATE ROLE and GRANT race otherwise).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('droptune_worker_role'))")
        ensure(conn, role, password, GRANTS)
        if keda_password:
            ensure(conn, keda, keda_password, KEDA_GRANTS)


if __name__ == "__main__":
    main()
