"""The model kinds the engine trains, by the spec's model.kind: each built-in is one module
(mlp.py, cnn.py) providing a `ModelConfig` (its layers for core.memory, its stacked network) and
a `ModelKind` record; adding a kind is one module and one `register` line below (or, for a kind
of a test or a bench script, one `register` call). A user's registered module is the third such
module (custom.py): its config carries the factory the worker loaded (worker.run.plugins)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droptune.worker.engine.kinds import cnn, custom, mlp
from droptune.worker.engine.kinds.base import ModelConfig, ModelKind
from droptune.worker.engine.kinds.cnn import CNNConfig
from droptune.worker.engine.kinds.mlp import MLPConfig

__all__ = [
    "KINDS",
    "CNNConfig",
    "MLPConfig",
    "ModelConfig",
    "ModelKind",
    "config",
    "get",
    "register",
]

KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Make `kind` trainable by its name (a later registration of the same name replaces it)."""
    KINDS[kind.name] = kind
    return kind


def get(kind: str) -> ModelKind:
    """The registered kind of that name."""
    if kind not in KINDS:
        raise ValueError(f"no model kind {kind!r} in this worker (known: {sorted(KINDS)})")
    return KINDS[kind]


def config(kind: str, fields: Mapping[str, Any]) -> Any:
    """The engine's config of a model spec's kind, from its fields (a `ModelConfig` for the
    built-ins; a `CustomModel` for a user's module)."""
    return get(kind).config(fields)


register(mlp.KIND)
register(cnn.KIND)
register(custom.KIND)
