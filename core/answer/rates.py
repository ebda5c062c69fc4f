"""A trial's dropout rate read from its parameters (stdlib only: the client's curve and report use
it without importing Optuna)."""

from __future__ import annotations

from typing import Any


def primary_rate(params: dict[str, Any]) -> float | None:
    """The trial's dropout rate: `dropout`, or the mean of per-layer rates."""
    if "dropout" in params:
        return float(params["dropout"])
    layers = [float(v) for k, v in params.items() if k.startswith("dropout_")]
    return sum(layers) / len(layers) if layers else None
