"""A model kind is one module (issue 20): the built-in kinds come from the registry, and a new
kind, here a toy one-hidden-layer "linear" network defined below, is trained by the engine once
it is registered with one line, with no change to the engine, its sizing or its scoring."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from droptune.core import memory
from droptune.worker.engine import kinds
from droptune.worker.engine.custom import FactoryError
from droptune.worker.engine.data import load_dataset, prepare_folds
from droptune.worker.engine.kinds import CNNConfig, MLPConfig
from droptune.worker.engine.models import Stacked, dropout_members
from droptune.worker.engine.sizing import flops_per_trial, trial_bytes
from droptune.worker.engine.stacked import TrainConfig, TrialRates, train_trials


class StackedLinear(Stacked):
    """M networks features -> hidden (ReLU, dropout) -> classes, weights [M, in, out] (no
    biases: a toy; `Stacked` gives it the rates, member slicing and masks)."""

    def __init__(
        self,
        n_members: int,
        n_features: int,
        hidden: int,
        n_classes: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        w1 = torch.randn(n_members, n_features, hidden, generator=generator) / n_features**0.5
        w2 = torch.randn(n_members, hidden, n_classes, generator=generator) / hidden**0.5
        self.w1, self.w2 = nn.Parameter(w1.to(device)), nn.Parameter(w2.to(device))
        self._init_rates(n_members, 1, torch.device(device) if device is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.bmm(x, self.w1).relu()
        if self.training and self._layer_active[0]:
            h = dropout_members(h, self.rates[:, 0], self._rng())
        return torch.bmm(h, self.w2)


@dataclass(frozen=True)
class LinearConfig:
    hidden: int = 16

    def layers(
        self, n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None
    ) -> list[memory.Layer]:
        return [(n_features, self.hidden, 1), (self.hidden, n_classes, 1)]

    def build(
        self,
        n_members: int,
        n_features: int,
        n_classes: int,
        image_shape: tuple[int, int, int] | None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> StackedLinear:
        return StackedLinear(
            n_members, n_features, self.hidden, n_classes, generator=generator, device=device
        )


def _linear(fields: Mapping[str, Any]) -> LinearConfig:
    return LinearConfig(hidden=fields["hidden"][0])


@pytest.fixture
def linear_kind() -> Iterator[None]:
    kinds.register(kinds.ModelKind("linear", _linear))  # the one line a new kind needs
    yield
    del kinds.KINDS["linear"]


def test_the_built_in_kinds_come_from_the_registry() -> None:
    assert {"mlp", "cnn", "custom"} <= set(kinds.KINDS)
    assert kinds.config("mlp", {"hidden": [8, 4]}) == MLPConfig((8, 4))
    assert kinds.config("cnn", {"hidden": [32], "channels": [4]}) == CNNConfig((4,), 32)
    with pytest.raises(ValueError, match="no model kind 'nope'"):
        kinds.config("nope", {})


def test_a_toy_kind_registered_with_one_line_trains_on_iris(linear_kind: None) -> None:
    data = prepare_folds(load_dataset("iris"), 3, 0, "cpu")
    model = kinds.config("linear", {"hidden": [16]})
    cfg = TrainConfig(epochs=2, batch_size=16, seed=0)
    results = train_trials(data, model, cfg, [TrialRates((0.0,)), TrialRates((0.3,))])
    assert len(results) == 2
    assert all(r.epochs_run == 2 and len(r.fold_scores) == 3 for r in results)
    assert all(0.0 <= s <= 1.0 for r in results for s in r.fold_scores)
    # the engine's sizing and FLOP count work from the kind's layers alone
    per_trial, evals = trial_bytes(model, data, 16)
    params = memory.param_count(model.layers(4, 3, None))  # counts biases: an upper bound
    assert per_trial >= data.k * memory.FLOAT * memory.STATE_COPIES * params and evals > 0
    assert flops_per_trial(model, data, cfg) > 0


def _two_layer(n_inputs: int, n_outputs: int, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_inputs, width), nn.ReLU(), nn.Dropout(), nn.Linear(width, n_outputs)
    )


def test_a_users_module_is_the_third_kind_trained_through_the_same_record() -> None:
    """The custom kind: its config holds the factory the worker loaded (none: the kind says
    which model the worker lacks), it trains through the kind's own `fit`, a fixed batch stands
    in for the estimate its unknown size cannot give, and an export it cannot make is allowed."""
    custom = kinds.get("custom")
    assert custom.fixed_batch and not custom.export_required
    assert kinds.get("mlp").fixed_batch is None and kinds.get("mlp").export_required
    with pytest.raises(FactoryError, match="no model 'tiny'"):
        kinds.config("custom", {"name": "tiny", "factory": None, "options": {}})
    model = kinds.config("custom", {"name": "tiny", "factory": _two_layer, "options": {"width": 4}})
    data = prepare_folds(load_dataset("iris"), 3, 0, "cpu")
    cfg = TrainConfig(epochs=2, batch_size=16, seed=0)
    results, note, engine = custom.train(data, model, cfg, [TrialRates((0.0,)), TrialRates((0.5,))])
    assert engine == "stacked (torch.vmap)"
    assert len(results) == 2 and all(len(r.fold_scores) == 3 for r in results)
    assert note is None  # vmapped: nothing to warn about
    assert all(r.epochs_run == 2 for r in results)
