"""Factories the custom-model tests register on workers through DROPTUNE_MODELS."""

from __future__ import annotations

from torch import nn


def broken(n_inputs: int | tuple[int, ...], n_outputs: int, **options: object) -> nn.Module:
    raise RuntimeError("this factory is broken on purpose (tests/custom_factories.py)")


def bn_mlp(n_inputs: int | tuple[int, ...], n_outputs: int, width: int = 16) -> nn.Module:
    """BatchNorm with a cumulative average (momentum None) calls .item(): vmap refuses it, so
    its members train one by one."""
    assert isinstance(n_inputs, int)
    return nn.Sequential(
        nn.Linear(n_inputs, width),
        nn.BatchNorm1d(width, momentum=None),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(width, n_outputs),
    )
