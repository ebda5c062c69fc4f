"""The memory and FLOP arithmetic of a stacked model, written once: the submit's admission
(storage/submit/admission.py, which must not import torch) and the worker's batch sizing
(worker/engine/sizing.py) both call it, so the two cannot drift apart (they used to be two
hand-kept copies with a test that they agree).

Standard library only: the engine imports it (see the engine's contract in pyproject.toml), and
bench/ runs the engine on bare GPU boxes. A network is described by its layers as
(fan_in, fan_out, output positions): fan_in * fan_out * positions is a layer's multiply-adds per
sample, which is all the arithmetic below needs. tests/integration/test_admission.py checks the
figures against the tensors of real stacked models (within a factor 2 of peak memory).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

FLOAT = 4  # bytes: the engine trains in float32
INDEX = 8  # bytes: int64 labels and fold index tables
STATE_COPIES = 4  # per parameter: the weight, its gradient, Adam's two moments
# float32 tensors training keeps per activation value: the layer's output (which ReLU saves),
# dropout's mask and its product, and the gradient flowing back through it
SAVED = 4
EVAL_COPIES = 3  # validation runs without autograd: a layer's input, output and a temporary
EVAL_ROWS = 1 << 16  # worker.scoring.evaluate's chunk: members x validation rows at a time

Layer = tuple[int, int, int]  # (fan_in, fan_out, output positions)


def pools(h: int, w: int) -> bool:
    """The CNN's pooling rule, the one place it is written: a block max-pools 2x2 while both
    sides of its feature map are at least 2 (small images keep their last pixels)."""
    return h >= 2 and w >= 2


def mlp_layers(features: int, hidden: Sequence[int], classes: int) -> list[Layer]:
    """The MLP's layers: features -> hidden... -> classes."""
    dims = [features, *hidden, classes]
    return [(a, b, 1) for a, b in itertools.pairwise(dims)]


def cnn_layers(
    image_shape: tuple[int, int, int], channels: Sequence[int], hidden: int, classes: int
) -> list[Layer]:
    """The CNN's layers: a 3x3 convolution per block (pooling by `pools`), then the fully
    connected hidden layer and the output layer (always the last two)."""
    c, h, w = image_shape
    out = []
    for co in channels:
        out.append((c * 9, co, h * w))
        c = co
        if pools(h, w):
            h, w = h // 2, w // 2
    return [*out, (c * h * w, hidden, 1), (hidden, classes, 1)]


def param_count(layers: Sequence[Layer]) -> int:
    """Weights and biases: one bias per output channel of a convolution, too."""
    return sum(b * (a + 1) for a, b, _ in layers)


def activation_values(layers: Sequence[Layer], features: int) -> int:
    """Activation values one sample leaves in a member: its input and every layer's output."""
    return features + sum(b * p for _, b, p in layers)


def forward_flops(layers: Sequence[Layer]) -> float:
    """Nominal FLOPs of one sample's forward pass: 2 per multiply-add."""
    return sum(2.0 * a * b * p for a, b, p in layers)


def member_train_bytes(layers: Sequence[Layer], features: int, batch_size: int) -> int:
    """One member's share of a training step: its parameter state and saved activations."""
    state = STATE_COPIES * param_count(layers)
    return FLOAT * (state + SAVED * activation_values(layers, features) * batch_size)


def eval_bytes(layers: Sequence[Layer], features: int, members: int, val_rows: int) -> int:
    """The largest validation chunk: up to EVAL_ROWS rows (members x val_rows) go through the
    network at once, without autograd, so only the widest layer's input and output are alive."""
    rows = min(members, max(1, EVAL_ROWS // max(val_rows, 1))) * val_rows
    widest = max([features, *(b * p for _, b, p in layers)])
    return FLOAT * rows * EVAL_COPIES * widest


def fold_bytes(rows: int, features: int, splits: int) -> int:
    """FoldData on the device: every split's standardised copy of the rows [K, N, F], the
    fold index tables (about K x N int64) and the targets."""
    return splits * rows * (FLOAT * features + INDEX) + INDEX * rows
