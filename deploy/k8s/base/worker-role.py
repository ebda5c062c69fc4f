"""Create or update the workers' database role: the README's scale-out SQL, idempotent.

Run by the API's init container after `droptune db upgrade` (the grants cover the tables that
exist, so it runs again on every start, after every upgrade). Needs the database owner's URL in
DROPTUNE_DATABASE_URL (with CREATEROLE, or a role created beforehand by whoever has it) and the
role's password in DROPTUNE_WORKER_PASSWORD; DROPTUNE_WORKER_ROLE names it (droptune_worker).
"""

from __future__ import annotations

import os
import re
import sys

ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# After the CREATE ROLE, exactly as README.md's worker-role block (tests/deploy compares them).
GRANTS = [
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    "REVOKE ALL ON droptune_tokens, droptune_idempotency FROM {role}",
]


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def statements(role: str, password: str, exists: bool = False) -> list[str]:
    """The SQL for `role`: created (or its password set, when it `exists`), then granted."""
    verb = "ALTER" if exists else "CREATE"
    login = "" if exists else " LOGIN"
    first = f"{verb} ROLE {role}{login} PASSWORD {literal(password)}"
    return [first] + [g.format(role=role) for g in GRANTS]


def settings() -> tuple[str, str, str]:
    """(libpq URL, role, password) from the environment; exit with one line when unusable."""
    url = os.environ.get("DROPTUNE_DATABASE_URL", "")
    role = os.environ.get("DROPTUNE_WORKER_ROLE", "droptune_worker")
    password = os.environ.get("DROPTUNE_WORKER_PASSWORD", "")
    if not url.startswith(("postgresql://", "postgresql+psycopg://")):
        sys.exit("worker-role: DROPTUNE_DATABASE_URL must be a postgresql:// URL")
    if not ROLE.fullmatch(role):
        sys.exit(f"worker-role: DROPTUNE_WORKER_ROLE {role!r} is not a plain role name")
    if len(password) < 12 or "REPLACE-ME" in password:
        sys.exit("worker-role: set DROPTUNE_WORKER_PASSWORD (12+ characters, not the placeholder)")
    return url.replace("postgresql+psycopg://", "postgresql://", 1), role, password


def main() -> None:
    import psycopg

    url, role, password = settings()
    with psycopg.connect(url) as conn, conn.transaction():
        # Replicas starting together take turns (CREATE ROLE and GRANT race otherwise).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('droptune_worker_role'))")
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        first, *grants = statements(role, password, exists=exists is not None)
        try:
            with conn.transaction():
                conn.execute(first.encode())
        except psycopg.errors.InsufficientPrivilege:
            if exists is None:
                raise
            print(f"worker-role: cannot set {role}'s password (no CREATEROLE); left as it is")
        for grant in grants:
            conn.execute(grant.encode())
    print(f"worker-role: {role} {'updated' if exists else 'created'}; grants applied")


if __name__ == "__main__":
    main()
