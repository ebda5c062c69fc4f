"""Scoring the stacked members: the training loss per sample, and the validation metrics.

Classification trains on cross-entropy and is scored by accuracy or log loss; regression has one
output, trains on the squared error to targets standardised per fold (FoldData) and is scored
on the original scale (rmse, mae) or by r2. Imports only torch and the engine's own modules:
bench/ runs on bare GPU boxes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from droptune.core import catalogue
from droptune.worker.engine.data import FoldData
from droptune.worker.engine.models import Stacked

StackedModel = Stacked  # any kind's stacked network (worker/engine/kinds)
TASK_METRICS = catalogue.METRICS
METRICS = (*TASK_METRICS["classification"], *TASK_METRICS["regression"])
DEFAULT_METRIC = catalogue.DEFAULT_METRIC


def metric_direction(metric: str) -> Literal["maximize", "minimize"]:
    """Which way a metric's scores get better (what an Optuna study's direction must be)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return catalogue.metric_direction(metric)


def check_metric(metric: str, task: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric not in TASK_METRICS[task]:
        raise ValueError(
            f"metric {metric!r} does not fit a {task} data set: use one of {TASK_METRICS[task]}"
        )


def sample_loss(out: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample training loss [M, b] of outputs [M, b, C] against targets [M, b]: cross-entropy
    on labels, or the squared error of the one output against standardised targets."""
    if task == "regression":
        return (out[..., 0] - target).square()
    ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1), reduction="none")
    return ce.view(target.shape)


def targets(
    data: FoldData, rows: torch.Tensor, flat_rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, index into them) for rows [M, L] of the members' folds (flat_rows: the same
    rows offset by fold * N, as for X_std)."""
    if data.task == "regression":
        return data.y.view(-1), flat_rows
    return data.y, rows


@torch.no_grad()
def evaluate(
    model: StackedModel, data: FoldData, fold_of: torch.Tensor, metric: str, max_rows: int = 1 << 16
) -> torch.Tensor:
    """Validation score per member ([M], on device); chunked over members to bound memory."""
    check_metric(metric, data.task)
    model.eval()
    n, lva = data.X_std.shape[1], data.val_idx.shape[1]
    x_flat = data.X_std.view(-1, data.X_std.shape[2])
    n_members = fold_of.shape[0]
    chunk = max(1, max_rows // max(lva, 1))
    valid = torch.arange(lva, device=data.device) < data.val_len[:, None]  # [K, Lva]
    out = []
    for c0 in range(0, n_members, chunk):
        f = fold_of[c0 : c0 + chunk]
        rows = data.val_idx[f]
        flat_rows = rows + (f * n)[:, None]
        y_flat, y_idx = targets(data, rows, flat_rows)
        pred = forward_slice(model, x_flat[flat_rows], c0, c0 + f.shape[0])
        yb, vmask, count = y_flat[y_idx], valid[f], data.val_len[f]
        if data.task == "regression":
            assert data.y_scale is not None
            score = _regression_score(pred[..., 0], yb, vmask, count, metric)
            if metric != "r2":  # errors are in fold-standardised units: back to the data's
                score = score * data.y_scale[f]
        else:
            score = _classification_score(pred, yb, vmask, count, metric)
        out.append(score.float())
    return torch.cat(out)


def _classification_score(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vmask: torch.Tensor,
    count: torch.Tensor,
    metric: str,
) -> torch.Tensor:
    """accuracy or log_loss per member of logits [M, Lva, C]."""
    if metric == "accuracy":
        hit = (logits.argmax(-1) == labels) & vmask
        return hit.sum(1) / count
    ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    return (ce * vmask).sum(1) / count


def _regression_score(
    pred: torch.Tensor, target: torch.Tensor, vmask: torch.Tensor, count: torch.Tensor, metric: str
) -> torch.Tensor:
    """rmse / mae in standardised units, or r2, per member of predictions [M, Lva].

    Working in the fold's standardised units is exact algebra (the error on the original scale
    is the standardised error times the fold's std; r2 is scale-free) and keeps float32 precise
    for targets far from zero. r2 is sklearn's r2_score: SST around the validation part's own
    mean, 1 for a perfect fit of constant targets and 0 otherwise.
    """
    err = (pred - target) * vmask
    if metric == "rmse":
        return (err.square().sum(1) / count).sqrt()
    if metric == "mae":
        return err.abs().sum(1) / count
    mean = (target * vmask).sum(1) / count
    sst = ((target - mean[:, None]) * vmask).square().sum(1)
    sse = err.square().sum(1)
    constant = torch.where(sse == 0, 1.0, 0.0)
    return torch.where(sst > 0, 1.0 - sse / sst.clamp(min=torch.finfo(sst.dtype).tiny), constant)


def forward_slice(model: StackedModel, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
    if a == 0 and b == model.n_members:
        out: torch.Tensor = model(x)
        return out
    # members a..b only, through sliced views of the parameters (nothing is copied)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    sliced = {name: t[a:b] for name, t in tensors.items()}
    return torch.func.functional_call(model, sliced, (x,))  # type: ignore[no-any-return]
