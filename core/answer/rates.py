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


def layer_rates(params: dict[str, Any]) -> list[float]:
    """A per-layer trial's rates, layer by layer (`dropout_0`, `dropout_1`, …); [] for a trial
    with one rate for every layer."""
    keyed = [
        (k[len("dropout_") :], float(v)) for k, v in params.items() if k.startswith("dropout_")
    ]
    return [v for k, v in sorted(keyed, key=lambda kv: int(kv[0])) if k.isdigit()]
