"""A user's registered module as a kind: the config is worker.engine.custom's `CustomModel` (the
factory the worker loaded, its options, the dropout modules a per-layer search tunes), trained by
worker.engine.custom (vmapped over members with torch.func, or member by member with a note on the
trials). Its size is unknown until the factory builds it, so a batch trains a few trials at a time
unless search.batch_trials says more; a module torch.export cannot trace leaves the study without
a file to download rather than failing its refit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from droptune.worker.engine.kinds.base import ModelKind

if TYPE_CHECKING:
    # worker.engine.custom imports the built-in kinds (this package): imported where used.
    from droptune.worker.engine.custom import CustomModel, CustomRun
    from droptune.worker.engine.data import FoldData
    from droptune.worker.engine.stacked import OnEpoch, TrainConfig, TrialRates, TrialResult

BATCH_TRIALS = 4  # trials a custom model trains together unless search.batch_trials


def _config(fields: Mapping[str, Any]) -> CustomModel:
    """`factory` (added by the worker from the models it loaded; None when it has none by that
    name), `options`, and `dropout_layers` where `per_layer` is set."""
    from droptune.worker.engine.custom import CustomModel, FactoryError

    factory = fields.get("factory")
    if factory is None:
        raise FactoryError(f"this worker has no model {fields.get('name')!r} (DROPTUNE_MODELS)")
    per_layer = fields.get("dropout_layers") if fields.get("per_layer") else None
    return CustomModel(factory, fields.get("options") or {}, per_layer)


def _fit(
    data: FoldData,
    config: CustomModel,
    cfg: TrainConfig,
    trials: Sequence[TrialRates],
    device: torch.device | str | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[list[TrialResult], CustomRun]:
    from droptune.worker.engine.custom import fit_custom

    return fit_custom(data, config, cfg, trials, device, on_epoch)


KIND = ModelKind("custom", _config, _fit, fixed_batch=BATCH_TRIALS, export_required=False)
