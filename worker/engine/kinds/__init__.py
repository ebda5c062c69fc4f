"""The model kinds the engine trains, by the spec's model.kind: each built-in is one module
(mlp.py, cnn.py) providing a `ModelConfig` (its layers for core.memory, its stacked network) and
a `ModelKind` record; adding a kind is one module and one `register` line below (or, for a kind
of a test or a bench script, one `register` call). A user's registered module (`custom`) is not
here: it is stacked by worker.custom from the factories a worker loaded (worker.run.plugins)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droptune.worker.engine.kinds import cnn, mlp
from droptune.worker.engine.kinds.base import ModelConfig, ModelKind
from droptune.worker.engine.kinds.cnn import CNNConfig
from droptune.worker.engine.kinds.mlp import MLPConfig

__all__ = ["KINDS", "CNNConfig", "MLPConfig", "ModelConfig", "ModelKind", "config", "register"]

KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Make `kind` trainable by its name (a later registration of the same name replaces it)."""
    KINDS[kind.name] = kind
    return kind


def config(kind: str, fields: Mapping[str, Any]) -> ModelConfig:
    """The engine's config of a model spec's kind, from its fields."""
    if kind not in KINDS:
        raise ValueError(f"no model kind {kind!r} in this worker (known: {sorted(KINDS)})")
    return KINDS[kind].config(fields)


register(mlp.KIND)
register(cnn.KIND)
