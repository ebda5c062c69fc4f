"""How big a batch of trials to stack, and what one trial costs (FLOPs, for the benchmark).

Imports only torch and the stdlib (plus worker.data/models): bench/ runs on bare GPU boxes.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

import torch

from droptune.worker.data import FoldData
from droptune.worker.models import CNNConfig, MLPConfig, pools

if TYPE_CHECKING:
    from droptune.worker.engine import TrainConfig


def param_count(
    model: MLPConfig | CNNConfig,
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, int, int] | None,
) -> int:
    return sum(
        w * (fi + 1) for fi, w, _ in _layer_shapes(model, n_features, n_classes, image_shape)
    )


def _layer_shapes(
    model: MLPConfig | CNNConfig,
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, int, int] | None,
) -> list[tuple[int, int, int]]:
    """(fan_in, fan_out, output positions) per layer; fan_in * fan_out * positions = MACs."""
    if isinstance(model, MLPConfig):
        dims = [n_features, *model.hidden, n_classes]
        return [(a, b, 1) for a, b in itertools.pairwise(dims)]
    assert image_shape is not None
    c, h, w = image_shape
    shapes = []
    for co in model.channels:
        shapes.append((c * 9, co, h * w))
        c = co
        if pools(h, w):
            h, w = h // 2, w // 2
    shapes += [(c * h * w, model.hidden, 1), (model.hidden, n_classes, 1)]
    return shapes


def flops_per_trial(model: MLPConfig | CNNConfig, data: FoldData, cfg: TrainConfig) -> float:
    """Nominal FLOPs of one trial (all K folds, all epochs): 2*in*out per sample per layer
    forward, backward = 2x forward, plus the forward pass of each epoch's validation."""
    fwd = sum(
        2.0 * a * b * p
        for a, b, p in _layer_shapes(model, data.n_features, data.n_classes, data.image_shape)
    )
    n_train = sum(data.train_len_host)
    n_val = sum(data.val_len_host)
    return cfg.epochs * fwd * (3.0 * n_train + n_val)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_batch_trials(
    model: MLPConfig | CNNConfig,
    data: FoldData,
    n_available: int,
    device: torch.device | str,
    batch_size: int = 64,
) -> int:
    """How many trials to stack: as many as memory allows, capped where speed stops improving."""
    dev = torch.device(device)
    k = data.k
    params = param_count(model, data.n_features, data.n_classes, data.image_shape)
    shapes = _layer_shapes(model, data.n_features, data.n_classes, data.image_shape)
    acts = sum(b * p for _, b, p in shapes) + data.n_features
    # param + grad + 2 Adam moments, plus ~4 saved tensors per activation for the largest of a
    # training batch and a validation chunk
    rows = max(batch_size, int(data.val_idx.shape[1]))
    per_trial = k * 4 * (4 * params + 4 * acts * rows)
    budget = _free_bytes(dev) // (2 if dev.type == "cuda" else 4)
    # CPU: past ~16 trials the stacked weights fall out of cache and s/trial stops improving
    cap = 256 if dev.type == "cuda" else 16
    return max(1, min(n_available, cap, budget // max(per_trial, 1)))
