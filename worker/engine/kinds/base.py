"""What a model kind gives the engine: a config that knows its layers (for core.memory's
arithmetic: batch sizing and FLOPs) and builds its stacked network, and a record naming the kind,
reading its config from the spec's model fields and saying how its members are trained together
(the built-ins through worker.engine.stacked; a user's module through worker.engine.custom). The
registry is `worker/engine/kinds`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from droptune.core import memory
from droptune.worker.engine.models import Stacked

if TYPE_CHECKING:
    from droptune.worker.engine.data import FoldData
    from droptune.worker.engine.stacked import (
        OnEpoch,
        StackedRun,
        TrainConfig,
        TrialRates,
        TrialResult,
    )


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


Fit = Callable[..., "tuple[list[TrialResult], StackedRun]"]


def fit_stacked(
    data: FoldData,
    config: Any,
    cfg: TrainConfig,
    trials: Sequence[TrialRates],
    device: torch.device | str | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[list[TrialResult], StackedRun]:
    """The built-in kinds' training: worker.engine.stacked.fit with the kind's config."""
    from droptune.worker.engine.stacked import fit  # stacked imports this module

    return fit(data, config, cfg, trials, device, on_epoch)


@dataclass(frozen=True)
class ModelKind:
    """A registered kind: its name (the spec's model.kind), how its config is read from the
    spec's model fields (a plain mapping: the engine does not import the spec's pydantic; the
    worker adds what the spec cannot carry, such as a user's factory), and how its trials are
    trained. `fixed_batch`: the trials one batch trains together when the size cannot be
    estimated before the model is built (None: as many as memory allows, from its layers).
    `export_required`: whether a refit's model that cannot be exported fails the refit (the
    built-ins) or only leaves the study without a file (a module torch.export cannot trace)."""

    name: str
    config: Callable[[Mapping[str, Any]], Any]
    fit: Fit = fit_stacked
    fixed_batch: int | None = None
    export_required: bool = True

    def train(
        self,
        data: FoldData,
        config: Any,
        cfg: TrainConfig,
        trials: Sequence[TrialRates],
        device: torch.device | str | None = None,
        on_epoch: OnEpoch | None = None,
    ) -> tuple[list[TrialResult], str | None, str]:
        """(one TrialResult per trial, the warning to record on them or None: a run's `note`,
        such as a module trained member by member, and how they trained: the run's `engine`,
        "stacked", "stacked (torch.vmap)" or "member by member")."""
        if not trials:
            from droptune.worker.engine.scoring import check_metric

            check_metric(cfg.metric, data.task)
            return [], None, "stacked"
        results, run = self.fit(data, config, cfg, trials, device, on_epoch)
        return results, getattr(run, "note", None), str(getattr(run, "engine", "stacked"))
