"""Alembic migrations for droptune's own tables (Optuna migrates its own)."""
