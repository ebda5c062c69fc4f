"""Two factories in droptune's model contract: `factory(n_inputs, n_outputs, **options)`.

`n_inputs` is the number of features (a table) or the image shape `(C, H, W)`; `n_outputs` the
number of classes (1 for regression). Every `nn.Dropout*` inside is a rate droptune tunes: one
rate for all of them, or one each with `search.per_layer`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Block(nn.Module):
    """conv-relu-conv plus the input: a residual block that keeps the shape."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def resnet_tiny(
    n_inputs: int | tuple[int, ...], n_outputs: int, width: int = 16, blocks: int = 2
) -> nn.Module:
    """A small residual CNN for image arrays (N, C, H, W): a stem, `blocks` residual blocks,
    2-D dropout on the feature maps, global average pooling, dropout, a linear head."""
    if not isinstance(n_inputs, tuple) or len(n_inputs) != 3:
        raise ValueError(f"resnet_tiny needs images (C, H, W), got inputs {n_inputs!r}")
    return nn.Sequential(
        nn.Conv2d(n_inputs[0], width, 3, padding=1),
        nn.ReLU(),
        *[_Block(width) for _ in range(blocks)],
        nn.Dropout2d(0.1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(width, n_outputs),
    )


class _ResMLP(nn.Module):
    def __init__(self, n_inputs: int, n_outputs: int, width: int, depth: int) -> None:
        super().__init__()
        self.stem = nn.Linear(n_inputs, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(0.1))
            for _ in range(depth)
        )
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def res_mlp(
    n_inputs: int | tuple[int, ...], n_outputs: int, width: int = 64, depth: int = 2
) -> nn.Module:
    """A residual MLP with layer norm for tables (or flattened images): `depth` pre-norm blocks,
    each with dropout."""
    if isinstance(n_inputs, tuple):  # an image (C, H, W): flattened
        return nn.Sequential(nn.Flatten(), res_mlp(math.prod(n_inputs), n_outputs, width, depth))
    return _ResMLP(n_inputs, n_outputs, width, depth)
