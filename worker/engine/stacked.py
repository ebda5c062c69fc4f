"""The training engine: B trials x K folds trained as one stacked model.

Member m = b * K + k is trial b on fold k. Every member gets exactly the gradient it would get
alone (the loss is a sum of per-member mean losses) and Adam is elementwise, so one optimizer
over the stacked parameters equals M separate ones. Initial weights and the order of training
samples, and the uniforms dropout masks are cut from, depend only on (cfg.seed, fold): trials of
one fold start from the same weights, see the same batches and draw nested masks, so they differ
only by their dropout rates (common random numbers, which makes comparing rates less noisy), and
a trial's scores do not depend on which trials share its batch or are pruned from it.

The loss and the metrics (classification and regression) are `worker.scoring`.

Imports only torch, numpy and the stdlib (plus worker.data/models/optim): bench/ runs on bare GPU
boxes. How many trials to stack and how many FLOPs they cost is `worker.sizing`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from droptune.worker.engine.data import FoldData
from droptune.worker.engine.kinds.base import ModelConfig
from droptune.worker.engine.models import MaskRNG
from droptune.worker.engine.optim import MemberAdam, keep_members
from droptune.worker.engine.scoring import (
    DEFAULT_METRIC,
    METRICS,
    TASK_METRICS,
    StackedModel,
    check_metric,
    evaluate,
    metric_direction,
    sample_loss,
    targets,
)

# Scoring lives in worker.scoring; these names stay importable from the engine.
__all__ = ["DEFAULT_METRIC", "METRICS", "TASK_METRICS", "evaluate", "metric_direction"]

OnEpoch = Callable[[int, list[int], np.ndarray], Iterable[int] | None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    # classification: "accuracy" or "log_loss" (mean cross-entropy, lower is better);
    # regression: "rmse", "mae" (lower is better) or "r2" (higher is better)
    metric: str = "accuracy"
    seed: int = 0


@dataclass(frozen=True)
class TrialRates:
    hidden: tuple[float, ...]  # one per hidden layer / conv block (+ FC); length 1 broadcasts
    input: float = 0.0  # input-feature dropout (MLP only)


@dataclass
class TrialResult:
    fold_scores: list[float]  # last evaluated epoch's validation score per fold
    epochs_run: int
    stopped: bool  # on_epoch asked to stop it (pruned / cancelled) before the last epoch ended
    train_seconds: float  # wall time from the start of the batch until this trial finished

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))


def _seed(seed: int, stream: int) -> int:
    # distinct, reproducible streams (init / order / dropout) from one user seed
    return (seed * 1_000_003 + stream * 7_919) % (2**63)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def setup_device(device: torch.device) -> None:
    """Per-device speed settings; CPU-only runs never touch CUDA state."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def member_folds(n_trials: int, k: int, device: torch.device) -> torch.Tensor:
    return torch.arange(k, device=device).repeat(n_trials)


def epoch_order(data: FoldData, gen: torch.Generator) -> torch.Tensor:
    """[K, Ltr] sample indices: row k is a fresh permutation of fold k's training part.

    Padding slots sort last (key 2 > any uniform key), so the first train_len[k] entries of
    row k are exactly fold k's training samples, each once.
    """
    k, ltr = data.train_idx.shape
    keys = torch.rand(k, ltr, generator=gen, device=data.device)
    pos = torch.arange(ltr, device=data.device)
    keys = torch.where(pos < data.train_len[:, None], keys, 2.0)
    return data.train_idx.gather(1, keys.argsort(dim=1))


def sample_weights(lens: Sequence[int], batch_size: int, device: torch.device) -> torch.Tensor:
    """[M, max(lens)] weights that turn a sum over an epoch's per-sample losses into, per step, a
    sum of member means: 1 / (member m's samples in that step) for its real samples, 0 past
    lens[m]. The gradient each member gets is then its standalone mean loss's, bit for bit (a
    mean's backward also hands each sample 1 / count), whichever members run short."""
    lens_t = torch.tensor(lens, device=device)
    pos = torch.arange(max(lens), device=device)
    start = pos - pos % batch_size  # first position of each position's step
    counts = (lens_t[:, None] - start).clamp(0, batch_size)
    return (pos < lens_t[:, None]) / counts.clamp(min=1)


def train_epoch(
    model: StackedModel,
    opt: torch.optim.Optimizer,
    data: FoldData,
    fold_of: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    lens: Sequence[int],
) -> None:
    """One epoch for all members: member m walks order[fold_of[m]] in batches of batch_size.

    lens[m] is member m's training length (host ints, so planning needs no device sync). Every
    step's loss weighs samples by sample_weights, so a member whose fold ends early gets no
    gradient from the padding and the others get exactly their own mean loss's.
    """
    model.train()
    n = data.X_std.shape[1]
    x_flat = data.X_std.view(-1, data.X_std.shape[2])
    member_order = order[fold_of]  # [M, Ltr]
    flat_idx = member_order + (fold_of * n)[:, None]
    # labels [N] are the same for every fold; standardised targets [K, N] are per fold
    y_flat, y_idx = targets(data, member_order, flat_idx)
    lo, hi = min(lens), max(lens)
    weights = sample_weights(lens, batch_size, data.device)
    for start in range(0, hi, batch_size):
        end = min(start + batch_size, hi)
        xb = x_flat[flat_idx[:, start:end]]
        yb = y_flat[y_idx[:, start:end]]
        per_sample = sample_loss(model(xb), yb, data.task)  # [M, end - start]
        loss = (per_sample * weights[:, start:end]).sum()
        empty = [m for m, ln in enumerate(lens) if ln <= start] if start >= lo else []
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        if isinstance(opt, MemberAdam):
            opt.step(frozen=empty)
        elif empty:
            raise ValueError(
                "members without samples in a step need MemberAdam: pass make_optimizer the "
                "members' training lengths and the batch size"
            )
        else:
            opt.step()


def _trial_rate_rows(
    trials: Sequence[TrialRates], n_layers: int
) -> tuple[list[list[float]], list[float]]:
    rows, inputs = [], []
    for t in trials:
        if len(t.hidden) == 1:
            rows.append([float(t.hidden[0])] * n_layers)
        elif len(t.hidden) == n_layers:
            rows.append([float(r) for r in t.hidden])
        else:
            raise ValueError(
                f"TrialRates.hidden has {len(t.hidden)} rates; the model has {n_layers}"
            )
        inputs.append(float(t.input))
    return rows, inputs


def warm_up() -> None:
    """What a worker's first batch would otherwise pay inside a study's time: torch imports
    torch._dynamo the first time an optimizer is built (1.4 s of a 10 s digits study's first
    batch under py-spy), so a worker builds one before it registers."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def make_optimizer(
    model: StackedModel, cfg: TrainConfig, lens: Sequence[int] | None = None
) -> torch.optim.Optimizer:
    """Adam over the stacked parameters. lens[m] = member m's training length: where members
    take different numbers of steps per epoch, MemberAdam (a step count per member); else
    torch's fused Adam (one pass over each parameter tensor, on CPU and CUDA for float32)."""
    if lens is not None and len({-(-n // cfg.batch_size) for n in lens}) > 1:
        return MemberAdam(
            model.parameters(), model.n_members, lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )


class StackedRun:
    """The trials of one batch while they train: the stacked model, its optimizer and which member
    is whom. Member i * K + k is trial active[i] on fold k. `engine` says how the members train
    (recorded on every trial: /best states it per study). Stopping trials goes through `stop`,
    which drops their members from the model and from the optimizer state together, so member m
    means the same trial in both, and fold_of and lens follow.
    """

    def __init__(
        self,
        data: FoldData,
        model: ModelConfig,
        cfg: TrainConfig,
        trials: Sequence[TrialRates],
        *,
        compile_model: bool = False,
    ) -> None:
        self.data, self.k = data, data.k
        self.engine = "stacked"
        self.active = list(range(len(trials)))  # indices into `trials` still training
        self.fold_of = member_folds(len(trials), self.k, data.device)
        net = model.build(
            self.k,
            data.n_features,
            data.n_classes,
            data.image_shape,
            generator=_generator(torch.device("cpu"), _seed(cfg.seed, 1)),
            device=data.device,
        )
        # one initialisation per fold, shared by every trial (member b*K+k <- fold k's weights)
        net.select_members(self.fold_of)
        rows, inputs = _trial_rate_rows(trials, net.n_layers)
        if not net.takes_input_dropout and any(inputs):
            raise ValueError("input dropout is only supported for MLP models")
        k = self.k
        net.set_rates([r for r in rows for _ in range(k)], [i for i in inputs for _ in range(k)])
        net.mask_rng = MaskRNG(_seed(cfg.seed, 2), data.device, folds=k)
        self.net = net
        self.opt = make_optimizer(net, cfg, self.lens)
        # compiled or not, the forward shares net's parameters, so stop() slices both
        compiled = torch.compile(net) if compile_model else net
        self.forward: StackedModel = compiled  # type: ignore[assignment]

    @property
    def lens(self) -> list[int]:
        """Each member's training length (host ints)."""
        return [self.data.train_len_host[f] for _ in self.active for f in range(self.k)]

    def train_epoch(self, order: torch.Tensor, batch_size: int) -> None:
        train_epoch(self.forward, self.opt, self.data, self.fold_of, order, batch_size, self.lens)

    def scores(self, metric: str) -> np.ndarray:
        """Validation scores [len(active), K] on the host: the one device sync per epoch."""
        scores = evaluate(self.net, self.data, self.fold_of, metric)
        return scores.view(len(self.active), self.k).double().cpu().numpy()

    def stop(self, trials: Iterable[int]) -> None:
        """Stop trials (indices into `trials`, as in `active`): their members leave the model and
        the optimizer state."""
        gone = set(trials)
        kept = [i for i, t in enumerate(self.active) if t not in gone]
        if len(kept) == len(self.active):
            return
        self.active = [self.active[i] for i in kept]
        if not self.active:
            return  # nothing trains on; slicing to zero members would buy nothing
        dev = self.data.device
        keep = torch.tensor([i * self.k + f for i in kept for f in range(self.k)], device=dev)
        self.net.select_members(keep)
        keep_members(self.opt, keep)
        self.fold_of = member_folds(len(self.active), self.k, dev)


def _check_device(data: FoldData, device: torch.device | str | None) -> None:
    if device is None:
        return
    dev, asked = data.device, torch.device(device)
    if asked.type != dev.type or asked.index not in (None, dev.index):
        raise ValueError(f"data lives on {dev}, training asked for {asked}")


def train_trials(
    data: FoldData,
    model: ModelConfig,
    cfg: TrainConfig,
    trials: Sequence[TrialRates],
    device: torch.device | str | None = None,
    on_epoch: OnEpoch | None = None,
    *,
    compile_model: bool = False,
) -> list[TrialResult]:
    """Train len(trials) trials x K folds as one stacked model; one TrialResult per trial.

    on_epoch(epoch, active_trials, scores[B_active, K]) runs after each epoch's validation and
    returns trial indices to stop; it may raise to abort the whole batch. compile_model =
    torch.compile the forward (pays only for long runs). CUDA runs in float32 with TF32 matmuls;
    bf16 autocast was tried and stopped learning (log loss 1.94 vs 0.12 after 5 epochs on an
    H100), so it is not offered.
    """
    if not trials:
        check_metric(cfg.metric, data.task)
        return []
    return fit(data, model, cfg, trials, device, on_epoch, compile_model=compile_model)[0]


def fit(
    data: FoldData,
    model: ModelConfig,
    cfg: TrainConfig,
    trials: Sequence[TrialRates],
    device: torch.device | str | None = None,
    on_epoch: OnEpoch | None = None,
    *,
    compile_model: bool = False,
    make_run: Callable[[], StackedRun] | None = None,
) -> tuple[list[TrialResult], StackedRun]:
    """train_trials, returning the trained run too (the refit exports its members).
    `make_run` builds another StackedRun (worker.custom's, around a user's module)."""
    check_metric(cfg.metric, data.task)
    if not trials:
        raise ValueError("fit needs at least one trial")
    _check_device(data, device)
    setup_device(data.device)
    t0 = time.perf_counter()
    if make_run is not None:
        run = make_run()
    else:
        run = StackedRun(data, model, cfg, trials, compile_model=compile_model)
    order_gen = _generator(data.device, _seed(cfg.seed, 3))

    results: list[TrialResult | None] = [None] * len(trials)
    last = np.zeros((len(trials), data.k))  # each trial's latest scores
    for epoch in range(1, cfg.epochs + 1):
        run.train_epoch(epoch_order(data, order_gen), cfg.batch_size)
        scores = run.scores(cfg.metric)
        last[run.active] = scores
        stop = set(on_epoch(epoch, list(run.active), scores) or ()) if on_epoch else set()
        stop &= set(run.active)
        now = time.perf_counter() - t0
        for t in stop:
            results[t] = TrialResult(last[t].tolist(), epoch, True, now)
        run.stop(stop)
        if not run.active:
            break

    now = time.perf_counter() - t0
    for t in run.active:
        results[t] = TrialResult(last[t].tolist(), cfg.epochs, False, now)
    return [r for r in results if r is not None], run
