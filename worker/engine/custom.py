"""Bring your own model: B trials x K folds of a user's nn.Module trained as one stacked model.

The user gives a factory, `factory(n_inputs, n_outputs, **options) -> nn.Module`, where n_inputs
is the data's (C, H, W) for image data sets and its feature count otherwise, and the module maps
a batch [b, *n_inputs] to [b, n_outputs]. Its nn.Dropout / Dropout1d / 2d / 3d layers are what a
trial tunes: TrialRates.hidden is one rate for all of them, or one per dropout module in
named_modules order (`dropout_layers`). Input dropout (TrialRates.input) is MLP-only.

As in the built-in engine: member m = b * K + k is trial b on fold k; fold k's initial weights come
from the factory called under the seed fold_seed(cfg.seed, k), shared by every trial on that fold;
batches, losses, optimizers, pruning and scoring are the engine's own (`CustomRun` is a
`StackedRun`); dropout masks depend only on (seed, fold, dropout module). How the members are
stacked (vmap, or member by member when vmap cannot run the module) is worker.custom_stack.

Imports only torch, numpy and the stdlib (plus the engine's modules): bench/ runs on bare GPU boxes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from droptune.worker.engine.custom_stack import (
    PERF_DROP,
    StackedModule,
    find_dropouts,
    run_members,
    run_vmapped,
    untuned_dropout,
)
from droptune.worker.engine.data import FoldData
from droptune.worker.engine.kinds.mlp import MLPConfig
from droptune.worker.engine.scoring import check_metric
from droptune.worker.engine.sizing import is_oom
from droptune.worker.engine.stacked import (
    OnEpoch,
    StackedRun,
    TrainConfig,
    TrialRates,
    TrialResult,
    _seed,
    _trial_rate_rows,
    fit,
    make_optimizer,
    member_folds,
)

__all__ = [
    "CustomModel",
    "CustomRun",
    "FactoryError",
    "StackedModule",
    "fit_custom",
    "train_custom_trials",
]


class FactoryError(ValueError):
    """The user's factory raised, or returned something that is not a module: every trial of
    the study would fail the same way, so its trials are failed without retrying."""


@dataclass(frozen=True)
class CustomModel:
    """A user's model: factory(n_inputs, n_outputs, **options) -> nn.Module."""

    factory: Callable[..., nn.Module]
    options: Mapping[str, Any] = field(default_factory=dict)
    # With search.per_layer: the dropout modules the spec says it has (model.dropout_layers).
    dropout_layers: int | None = None

    @property
    def name(self) -> str:
        return getattr(self.factory, "__name__", type(self.factory).__name__)


def model_inputs(data: FoldData) -> int | tuple[int, int, int]:
    """What the factory is told the input is: (C, H, W) for images, else the feature count."""
    return data.image_shape if data.image_shape is not None else data.n_features


def fold_seed(seed: int, fold: int) -> int:
    """The torch seed fold `fold`'s module is built under (the built-ins' init stream, per fold)."""
    return (_seed(seed, 1) + 104_729 * (fold + 1)) % 2**63


def init_module(spec: CustomModel, n_inputs: Any, n_outputs: int, seed: int) -> nn.Module:
    """factory(...) with torch's CPU generator seeded `seed` (restored afterwards), on the CPU,
    so every device starts from identical weights. A standalone copy of member m is
    init_module(spec, ..., fold_seed(cfg.seed, fold of m))."""
    # torch.manual_seed seeds every device: fork the CUDA ones too, or building a model would
    # reset a GPU worker's own random stream.
    initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda = list(range(torch.cuda.device_count())) if initialized else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        try:
            module = spec.factory(n_inputs, n_outputs, **dict(spec.options))
        except Exception as exc:  # the user's code: its message is the trial's reason
            if is_oom(exc):
                raise
            raise FactoryError(f"model {spec.name!r} could not be built: {_reason(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise FactoryError(
            f"model {spec.name!r}: the factory returned {type(module).__name__}, not an nn.Module"
        )
    return module


def dropout_layers(module: nn.Module) -> list[str]:
    """Names of the dropout modules a per-layer TrialRates.hidden addresses, in order."""
    return [name for name, _ in find_dropouts(module)]


def build_stacked(
    spec: CustomModel, data: FoldData, fold_of: torch.Tensor, seed: int
) -> StackedModule:
    """The stacked model for members fold_of (fold k's module built under fold_seed(seed, k)),
    probed once: `note` says whether it trains member by member, and why."""
    n_in = model_inputs(data)
    folds = [init_module(spec, n_in, data.n_classes, fold_seed(seed, k)) for k in range(data.k)]
    shape = tuple(n_in) if isinstance(n_in, tuple) else (n_in,)
    net = StackedModule(folds, fold_of, shape, mask_seed=_seed(seed, 2), device=data.device)
    net.note, net.loop = probe(net, _probe_rows(data, fold_of), data.n_classes, spec.name)
    fixed = untuned_dropout(folds[0])
    if fixed:
        extra = f"dropout not tuned, kept at the model's rate: {', '.join(fixed)}"
        net.note = f"{net.note}; {extra}" if net.note else f"module {spec.name}: {extra}"
    return net


def _probe_rows(data: FoldData, fold_of: torch.Tensor) -> torch.Tensor:
    """[m, b, F]: the first training rows of the first (up to) two members' folds."""
    folds = fold_of[:2]
    b = max(2, min(4, *data.train_len_host))
    rows = data.train_idx[folds, :b]
    return data.X_std[folds[:, None], rows]


def _member_slice(net: StackedModule, m: int, rate: float) -> dict[str, torch.Tensor]:
    """Fresh copies of members :m's tensors (so the probe changes nothing), every rate = rate."""
    state = {}
    for name, t in net.state().items():
        c = t[:m].detach().clone()
        state[name] = c.fill_(rate) if name.endswith(".rate") else c
        if t.requires_grad:
            state[name].requires_grad_(True)
    return state


def _run_probe(
    net: StackedModule, x: torch.Tensor, vmapped: bool, train: bool
) -> tuple[torch.Tensor, list[str]]:
    """One forward (and backward when training) of the probe batch on fresh state, with fresh
    dropout generators (the run's own streams are untouched); returns the outputs and vmap's
    performance warnings."""
    saved = [(d.generator, d.active) for d in net.drops]
    dev = x.device
    try:
        for i, d in enumerate(net.drops):
            d.generator = torch.Generator(device=dev)
            d.generator.manual_seed(i)
            d.active = True
        net.base.train(train)
        state = _member_slice(net, x.shape[0], 0.5)
        x = x.view(x.shape[0], x.shape[1], *net.input_shape)
        forked = torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])
        with forked, warnings.catch_warnings(record=True) as caught, torch.set_grad_enabled(train):
            warnings.simplefilter("always")
            if vmapped:
                torch.manual_seed(0)  # the module's own random ops: see run_members' reseed
                out = run_vmapped(net.base, net.drops, state, x, quiet=False)
            else:
                out = run_members(net.base, net.drops, state, x, reseed=0)
            if train:
                torch.autograd.backward(out.float().square().sum())
    finally:
        for d, (gen, active) in zip(net.drops, saved, strict=True):
            d.generator, d.active = gen, active
        net.base.train(net.training)
    perf = [str(w.message) for w in caught if PERF_DROP in str(w.message)]
    return out.detach(), perf


def probe(
    net: StackedModule, x: torch.Tensor, n_outputs: int, name: str
) -> tuple[str | None, bool]:
    """Run the module member by member and vmapped, training and evaluating, on a tiny batch.
    A failure member by member is the module's own (ValueError); a vmapped failure or a
    different result means the members train one by one. Returns (the trial-record note,
    whether to train member by member)."""
    ref = {}
    for train in (True, False):
        try:
            ref[train], _ = _run_probe(net, x, vmapped=False, train=train)
        except Exception as e:
            if is_oom(e):  # the worker's out-of-memory handling, not the model's fault
                raise
            raise ValueError(f"model {name} failed on a batch of the data: {_reason(e)}") from e
        want = (x.shape[0], x.shape[1], n_outputs)
        if tuple(ref[train].shape) != want:
            raise ValueError(
                f"model {name} returned shape {tuple(ref[train].shape[1:])} for a batch of"
                f" {x.shape[1]}; expected ({x.shape[1]}, {n_outputs})"
            )
    perf: list[str] = []
    for train in (True, False):
        try:
            out, warned = _run_probe(net, x, vmapped=True, train=train)
        except Exception as e:
            if is_oom(e):
                raise
            why = _reason(e)
            return f"module {name} cannot be vmapped ({why}); members trained one by one", True
        perf += warned
        diff = float((out - ref[train]).abs().max())
        if not diff <= 1e-4 * (1.0 + float(ref[train].abs().max())):
            mode = "training" if train else "evaluation"
            why = f"its vmapped {mode} outputs differ from member-by-member ones by {diff:.2g}"
            return f"module {name} cannot be vmapped ({why}); members trained one by one", True
    if perf:
        ops = sorted({w.split("aten::")[-1].split(".")[0] for w in perf if "aten::" in w})
        return f"module {name}: vmap has no batching rule for {', '.join(ops)} (slower)", False
    return None, False


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(e).__name__}: {first[:160]}"


class CustomRun(StackedRun):
    """StackedRun over a user's module: the engine's training, scoring and stopping as they are.
    `note`: None or the one-line warning to record on every trial of the batch."""

    def __init__(
        self,
        data: FoldData,
        model: CustomModel,
        cfg: TrainConfig,
        trials: Sequence[TrialRates],
    ) -> None:
        self.data, self.k = data, data.k
        self.engine = "stacked (torch.vmap)"
        self.active = list(range(len(trials)))
        self.fold_of = member_folds(len(trials), self.k, data.device)
        try:
            net = build_stacked(model, data, self.fold_of, cfg.seed)
        except (ValueError, TypeError) as exc:  # no dropout to tune, a shape that does not fit
            if isinstance(exc, FactoryError):
                raise
            raise FactoryError(f"model {model.name!r}: {_reason(exc)}") from exc
        said = {len(t.hidden) for t in trials if len(t.hidden) > 1}
        if model.dropout_layers is not None:
            said.add(model.dropout_layers)
        if said - {net.n_layers}:
            raise FactoryError(
                f"model {model.name!r} has {net.n_layers} dropout modules (nn.Dropout, "
                f"Dropout1d/2d/3d); model.dropout_layers says {min(said)}"
            )
        rows, inputs = _trial_rate_rows(trials, net.n_layers)
        k = self.k
        net.set_rates([r for r in rows for _ in range(k)], [i for i in inputs for _ in range(k)])
        self.net = net
        self.note = net.note
        # how /best states it: the reason is the note's (which also names slow vmap ops)
        self.engine = "member by member" if net.loop else "stacked (torch.vmap)"
        self.opt = make_optimizer(net, cfg, self.lens)
        self.forward = net

    def train_epoch(self, order: torch.Tensor, batch_size: int) -> None:
        self.net.plan_epoch(self.lens, batch_size)  # type: ignore[operator]
        super().train_epoch(order, batch_size)


def fit_custom(
    data: FoldData,
    model: CustomModel,
    cfg: TrainConfig,
    trials: Sequence[TrialRates],
    device: torch.device | str | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[list[TrialResult], CustomRun]:
    """engine.fit for a user's module (same loop, same on_epoch contract); the run's `note`
    is the warning to record on the trials."""
    results, run = fit(
        data,
        MLPConfig(),  # unused: make_run builds the run
        cfg,
        trials,
        device,
        on_epoch,
        make_run=lambda: CustomRun(data, model, cfg, trials),
    )
    assert isinstance(run, CustomRun)
    return results, run


def train_custom_trials(
    data: FoldData,
    model: CustomModel,
    cfg: TrainConfig,
    trials: Sequence[TrialRates],
    device: torch.device | str | None = None,
    on_epoch: OnEpoch | None = None,
) -> tuple[list[TrialResult], str | None]:
    """engine.train_trials for a user's module: (one TrialResult per trial, the warning to
    record on them, or None)."""
    if not trials:
        check_metric(cfg.metric, data.task)
        return [], None
    results, run = fit_custom(data, model, cfg, trials, device, on_epoch)
    return results, run.note
