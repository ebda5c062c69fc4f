"""The built-in CNN kind: [conv3x3, ReLU, Dropout2d, maxpool] per block, then one fully
connected hidden layer (worker.models.StackedCNN); image data only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from droptune.core import memory
from droptune.worker.engine.kinds.base import ModelKind
from droptune.worker.engine.models import StackedCNN


@dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128

    def layers(
        self, n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None
    ) -> list[memory.Layer]:
        return memory.cnn_layers(_image(image_shape), self.channels, self.hidden, n_classes)

    def build(
        self,
        n_members: int,
        n_features: int,
        n_classes: int,
        image_shape: tuple[int, int, int] | None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> StackedCNN:
        return StackedCNN(
            n_members,
            _image(image_shape),
            self.channels,
            self.hidden,
            n_classes,
            generator=generator,
            device=device,
        )


def _image(image_shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if image_shape is None:
        raise ValueError("CNNConfig needs an image dataset (image_shape is None)")
    return image_shape


def _config(fields: Mapping[str, Any]) -> CNNConfig:
    # the spec's `hidden` is the fully connected layer's width (its first entry)
    return CNNConfig(channels=tuple(fields["channels"]), hidden=fields["hidden"][0])


KIND = ModelKind("cnn", _config)
