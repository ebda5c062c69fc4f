"""The model to take home: one refit member as a torch.export program (.pt2).

Why torch.export rather than TorchScript: TorchScript is in maintenance in PyTorch 2.x and
torch.export is its successor; a .pt2 loads with `torch.export.load` alone (no droptune, no
Python class to import) and keeps a dynamic batch dimension. Its `extra_files` carry what is not
a tensor program:

- `droptune.json`: what the model is (task, metric, classes in output order, input layout, the
  rate, the test score) — see `metadata` below;
- `preprocess.skops` (base64 text), only where the preprocessing is not plain standardisation:
  the fitted scikit-learn ColumnTransformer of an uploaded table, saved with skops (no pickle).

Where the preprocessing is a StandardScaler (built-in data sets, NPZ arrays) it is inside the
program: it takes raw features. Regression outputs are on the data's own scale.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from typing import Any

import numpy as np
import torch
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from droptune.worker.engine.custom_stack import StackedModule
from droptune.worker.engine.models import Stacked
from droptune.worker.engine.preprocess import _as_float, _as_object

META = "droptune.json"
PREPROCESS = "preprocess.skops"


class TakeHome(nn.Module):
    """Raw features [N, F] -> class logits [N, C], or predictions [N, 1] on the data's scale."""

    def __init__(
        self,
        net: nn.Module,
        mean: torch.Tensor | None,
        scale: torch.Tensor | None,
        y_shift: float,
        y_scale: float,
    ) -> None:
        super().__init__()
        self.net = net
        self.standardise = mean is not None
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1))
        self.register_buffer("scale", scale if scale is not None else torch.ones(1))
        self.y_shift, self.y_scale = y_shift, y_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardise:  # in float64, as the training data was standardised
            mean, scale = self.get_buffer("mean"), self.get_buffer("scale")
            x = ((x.double() - mean) / scale).float()
        out: torch.Tensor = self.net(x)
        if self.y_scale != 1.0 or self.y_shift != 0.0:
            out = out * self.y_scale + self.y_shift
        return out


def take_home_module(
    net: Stacked,
    member: int,
    transformer: Any,
    y_shift: float,
    y_scale: float,
) -> TakeHome:
    """Member `member` of a trained stacked net as a plain eval-mode module on the CPU, with a
    StandardScaler's statistics folded in front of it."""
    plain = net.export_member(member).to("cpu").eval()
    if isinstance(net, StackedModule) and len(net.input_shape) > 1:
        # A user's image model takes (N, C, H, W); the download takes flat rows, as the
        # built-in CNN's does (the data set's image shape is in droptune.json).
        plain = nn.Sequential(nn.Unflatten(1, net.input_shape), plain)
    mean = scale = None
    if isinstance(transformer, StandardScaler):
        mean = torch.tensor(transformer.mean_, dtype=torch.float64)
        scale = torch.tensor(transformer.scale_, dtype=torch.float64)
    return TakeHome(plain, mean, scale, y_shift, y_scale).eval()


def portable(transformer: Any) -> Any:
    """A copy of a fitted table transformer that needs scikit-learn and numpy only: droptune's
    own column conversions (which also accept pandas' nullable dtypes while training) become
    `numpy.asarray` with the same dtype. The copy expects missing values as NaN, as
    pandas.read_csv gives them."""
    out = copy.deepcopy(transformer)
    swaps = {_as_object: "object", _as_float: "float64"}
    blocks = [*getattr(out, "transformers", []), *getattr(out, "transformers_", [])]
    for _, block, _ in blocks:  # the fitted blocks, and the unfitted ones they were cloned from
        for _, step in getattr(block, "steps", []):
            if isinstance(step, FunctionTransformer) and step.func in swaps:
                step.kw_args = {"dtype": swaps[step.func]}
                step.func = np.asarray
    return out


def export_program(
    module: TakeHome, n_features: int, meta: dict[str, Any], transformer: Any
) -> bytes:
    """The module as .pt2 bytes with its metadata, and the transformer (skops) when it is not
    folded into the program."""
    example = torch.zeros(2, n_features)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    extra = {META: json.dumps(meta, indent=1)}
    if not module.standardise:
        import skops.io  # lazily: importing it takes seconds

        blob = skops.io.dumps(portable(transformer))
        extra[PREPROCESS] = base64.b64encode(blob).decode("ascii")
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files=extra)
    return buf.getvalue()
