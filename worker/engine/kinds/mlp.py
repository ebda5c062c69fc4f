"""The built-in MLP kind: Linear -> ReLU -> Dropout per hidden layer (worker.models.StackedMLP);
the only kind with input dropout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from droptune.core import memory
from droptune.worker.engine.kinds.base import ModelKind
from droptune.worker.engine.models import StackedMLP


@dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...] = (256, 256)

    def layers(
        self, n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None
    ) -> list[memory.Layer]:
        return memory.mlp_layers(n_features, self.hidden, n_classes)

    def build(
        self,
        n_members: int,
        n_features: int,
        n_classes: int,
        image_shape: tuple[int, int, int] | None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> StackedMLP:
        return StackedMLP(
            n_members, n_features, self.hidden, n_classes, generator=generator, device=device
        )


def _config(fields: Mapping[str, Any]) -> MLPConfig:
    return MLPConfig(hidden=tuple(fields["hidden"]))


KIND = ModelKind("mlp", _config)
