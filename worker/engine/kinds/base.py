"""What a model kind gives the engine: a config that knows its layers (for core.memory's
arithmetic: batch sizing and FLOPs) and builds its stacked network, and a record naming the kind
and reading its config from the spec's model fields. The registry is `worker/engine/kinds`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from droptune.core import memory
from droptune.worker.engine.models import Stacked


class ModelConfig(Protocol):
    """A kind's sizes, as the engine trains it (frozen: trials of a batch share it)."""

    def layers(
        self, n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None
    ) -> list[memory.Layer]:
        """(fan_in, fan_out, output positions) per layer: core.memory sizes batches from it."""
        ...

    def build(
        self,
        n_members: int,
        n_features: int,
        n_classes: int,
        image_shape: tuple[int, int, int] | None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Stacked:
        """`n_members` networks stacked as one (members first in every parameter)."""
        ...


@dataclass(frozen=True)
class ModelKind:
    """A registered kind: its name (the spec's model.kind) and how its config is read from the
    spec's model fields (a plain mapping: the engine does not import the spec's pydantic)."""

    name: str
    config: Callable[[Mapping[str, Any]], ModelConfig]
