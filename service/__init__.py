"""droptune's REST API: studies, workers, health, the read-only Optuna dashboard."""
