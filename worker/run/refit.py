"""The final refit: the recommended rate (and the best, and no dropout as a baseline) trained on
every training row for the study's epochs, scored once on rows the search never saw, exported.
A study that held no rows out refits too, on every row: its model has no test score (and no
baseline is trained: there is nothing to compare it on).

A leased job like a trial (storage/jobs/refits.py): heartbeat by the worker's LeaseHeartbeat,
stopped
at an epoch boundary by a shutdown, a cancel or a lost lease, retried on an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch
from optuna.trial import FrozenTrial
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from droptune.core.answer.rates import primary_rate
from droptune.core.answer.rules import answer
from droptune.core.errors import StorageError
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue, refits
from droptune.storage.jobs.lifecycle import Why
from droptune.storage.jobs.refits import ModelFile, RefitClaim
from droptune.storage.optuna_bridge import study_id_of
from droptune.worker.engine.data import Dataset, FoldData, fold_data
from droptune.worker.engine.stacked import OnEpoch, StackedRun, TrainConfig, TrialRates
from droptune.worker.run import heldout
from droptune.worker.run.batch import Interrupted
from droptune.worker.run.context import BatchContext
from droptune.worker.run.datasets import FileCache, load_named, load_uploaded, search_rows
from droptune.worker.run.export import export_program, take_home_module
from droptune.worker.run.heartbeat import LeaseHeartbeat
from droptune.worker.run.plugins import model_config, model_kind

log = logging.getLogger("droptune.worker")


@dataclass
class RefitData:
    data: FoldData  # one split: every training row against the unseen ones
    transformer: Any  # fitted on the training rows
    y_test: np.ndarray  # the unseen rows' targets (labels, or values on the data's scale)
    source: str  # "holdout" | "test_dataset" | "none" (no unseen rows: y_test is empty)
    held: list[int]  # the held-out rows' numbers in the uploaded file ([] for a test data set)
    classes: list[str] | None
    columns: list[str] | None


def rates_of(params: dict[str, Any], spec: StudySpec) -> TrialRates:
    """A trial's parameters as the engine's rates."""
    names = [n for n in spec.param_names() if n != "input_dropout"]
    hidden = tuple(float(params[n]) for n in names)
    return TrialRates(hidden=hidden, input=float(params.get("input_dropout", 0.0)))


def refit_data(files: FileCache, spec: StudySpec, device: torch.device) -> RefitData:
    ds = load_named(files, spec.dataset)
    classes, columns = _labels(files, spec, ds)
    if spec.evaluation.test_dataset is not None:
        test = load_uploaded(files, spec.evaluation.test_dataset)
        test_y = _same_codes(files, spec, test)
        n, m = len(ds.y), len(test.y)
        ds = Dataset(
            _stack(ds.X, test.X),
            np.concatenate([ds.y, test_y]),
            ds.n_classes,
            ds.image_shape,
            ds.task,
            ds.preprocess,
        )
        train, held, source = np.arange(n), np.arange(n, n + m), "test_dataset"
        rows: list[int] = []
    else:
        train, held = search_rows(ds, spec)
        source, rows = ("holdout" if len(held) else "none"), held.tolist()
    # Without unseen rows the engine still validates every epoch: on a few training rows,
    # whose scores nobody reads.
    val = held if len(held) else train[:NO_UNSEEN_VAL_ROWS]
    data, fitted = fold_data(ds, [(train, val)], device)
    return RefitData(data, fitted[0], ds.y[held], source, rows, classes, columns)


NO_UNSEEN_VAL_ROWS = 64


def _stack(a: Any, b: Any) -> Any:
    if hasattr(a, "iloc"):
        import pandas as pd

        return pd.concat([a, b], ignore_index=True)
    return np.concatenate([a, b])


def _labels(files: FileCache, spec: StudySpec, ds: Dataset) -> tuple[list[str] | None, Any]:
    if spec.dataset.id is None:
        return ([str(c) for c in range(ds.n_classes)] if ds.task != "regression" else None), None
    summary = files.path(spec.dataset.id)[1]
    return summary.classes, [c.name for c in summary.columns] or None


def _same_codes(files: FileCache, spec: StudySpec, test: Dataset) -> np.ndarray:
    """The test data set's labels in the search data set's codes (its classes are a subset)."""
    if test.task == "regression":
        return test.y
    assert spec.dataset.id is not None and spec.evaluation.test_dataset is not None
    train_classes = files.path(spec.dataset.id)[1].classes or []
    test_classes = files.path(spec.evaluation.test_dataset)[1].classes or []
    code = {c: i for i, c in enumerate(train_classes)}
    remap = np.array([code[c] for c in test_classes], dtype=np.int64)
    codes: np.ndarray = remap[test.y]
    return codes


@dataclass
class Member:
    role: str  # "recommended" | "best" | "baseline" (the same network without dropout)
    trial: FrozenTrial | None
    rates: TrialRates
    dropout: float


def choose(trials: list[FrozenTrial], spec: StudySpec, baseline: bool = True) -> list[Member]:
    """What the refit trains: the recommended rate, the best when it differs, and (`baseline`)
    no dropout."""
    a = answer(trials, spec)  # the answer /best gives: the same rule, the same trial
    best = a.best
    if best is None or a.recommended is None:
        return []
    rec = next(t for t in trials if t.number == a.recommended.trial)
    out = [Member("recommended", rec, rates_of(rec.params, spec), primary_rate(rec.params) or 0.0)]
    if best.number != rec.number:
        out.append(
            Member("best", best, rates_of(best.params, spec), primary_rate(best.params) or 0.0)
        )
    if baseline and any(r > 0 for m in out for r in (*m.rates.hidden, m.rates.input)):
        out.append(Member("baseline", None, TrialRates(hidden=(0.0,)), 0.0))
    return out


@torch.no_grad()
def predictions(run: StackedRun, d: FoldData, rows: int = 8192) -> np.ndarray:
    """Every member's outputs on the unseen rows, [M, n, C], regression on the data's scale."""
    net = run.net.eval()
    idx = d.val_idx[0, : d.val_len_host[0]]
    parts = []
    for a in range(0, len(idx), rows):
        x = d.X_std[0, idx[a : a + rows]]
        parts.append(net(x.unsqueeze(0).expand(net.n_members, -1, -1).contiguous()).double())
    out = torch.cat(parts, dim=1)
    if d.task == "regression":
        assert d.y_shift is not None and d.y_scale is not None
        out = out * d.y_scale[0] + d.y_shift[0]
    arr: np.ndarray = out.cpu().numpy()
    return arr


def _retrying(end: Callable[[], bool]) -> bool:
    """End the refit's lease, retrying while the database is away; False when it could not
    (the lease then goes stale and recovery gives the refit back, counting an attempt)."""
    try:
        return bool(
            Retrying(
                retry=retry_if_exception_type(StorageError),
                stop=stop_after_attempt(5),
                wait=wait_exponential(multiplier=0.5, max=5),
                reraise=True,
            )(end)
        )
    except StorageError as exc:
        log.warning("could not end the refit's lease (%s); left to recovery", exc)
        return False


class RefitRunner:
    def __init__(self, ctx: BatchContext, hb: LeaseHeartbeat, files: FileCache) -> None:
        self.ctx, self.hb, self.files = ctx, hb, files

    def run(self, claim: RefitClaim) -> None:
        """Refit, score and store; every way out ends the lease (or leaves it to recovery)."""
        ctx = self.ctx
        self.hb.hold({claim.lease_id})
        ctx.on_current(claim.study_id, [])
        log.info("worker %s: refit of study %s", ctx.worker_id, claim.study_id)
        engine, me = ctx.engine, ctx.worker_id
        try:
            result, models = self._refit(claim)
        except Interrupted as stop:
            if stop.why is not Why.LOST:  # a lost lease is recovery's to end
                _retrying(lambda: refits.give_back(engine, claim, me, failed=False, reason=None))
        except Exception as exc:
            log.exception("worker %s: refit of study %s failed", me, claim.study_id)
            reason = f"{type(exc).__name__}: " + (
                "a database error (see the worker's log)"
                if isinstance(exc, StorageError | sa.exc.SQLAlchemyError)
                else str(exc)
            )
            _retrying(lambda: refits.give_back(engine, claim, me, failed=True, reason=reason))
        else:
            # Hours of training end here: a database blip must not throw them away.
            if not _retrying(lambda: refits.complete(engine, claim, me, result, models)):
                log.warning(
                    "refit of study %s: not stored (lease lost or study ended)", claim.study_id
                )
        finally:
            self.hb.hold(set())
            ctx.on_current(None, [])
            self.hb.beat()
            ctx.publish(claim.study_id)  # the note gains the test score

    def _refit(self, claim: RefitClaim) -> tuple[dict[str, Any] | None, list[ModelFile]]:
        spec, ctx = claim.spec, self.ctx
        oid = study_id_of(ctx.optuna, claim.optuna_study)
        trials = list(ctx.optuna.get_all_trials(oid, deepcopy=False)) if oid is not None else []
        unseen = spec.evaluation.has_unseen  # rows held out, or a test data set
        members = choose(trials, spec, baseline=unseen)
        if not members:  # no trial completed: the study ends without a test score
            return None, []
        t0 = time.perf_counter()
        rd = refit_data(self.files, spec, ctx.device)
        cfg = TrainConfig(
            epochs=spec.training.epochs,
            batch_size=spec.training.batch_size,
            lr=spec.training.lr,
            weight_decay=spec.training.weight_decay,
            metric=spec.cv.metric or "accuracy",
            seed=spec.cv.seed,
        )

        def on_epoch(_epoch: int, _active: list[int], _scores: np.ndarray) -> Iterable[int]:
            self._check(claim)
            return ()

        run = self._fit(spec, rd.data, cfg, [m.rates for m in members], on_epoch)
        points, result = self._score(run, rd, cfg.metric, members, t0)
        log.info(
            "study %s: refit %s in %.1f s%s",
            claim.study_id,
            ", ".join(m.role for m in members),
            time.perf_counter() - t0,
            "" if result else " (no unseen rows: no test score)",
        )
        files = []
        for i, m in enumerate(members):
            if m.role == "baseline":
                continue
            try:
                files.append(self._export(claim, run, i, m, rd, points[i]))
            except Exception as exc:
                if model_kind(spec).export_required:
                    raise
                # A user's module torch.export cannot trace: the study keeps its test score
                # and has no file to download.
                log.warning(
                    "study %s: the %s model cannot be exported (%s: %s); no file stored",
                    claim.study_id,
                    m.role,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
        return result, files

    def _score(
        self, run: StackedRun, rd: RefitData, metric: str, members: list[Member], t0: float
    ) -> tuple[list[dict[str, Any] | None], dict[str, Any] | None]:
        """Each member's point on the unseen rows, and the study's test result; (Nones, None)
        without unseen rows: the models, without a test score."""
        if not len(rd.y_test):
            return [None] * len(members), None
        out = predictions(run, rd.data)
        points = [self._point(metric, m, out[i], rd.y_test) for i, m in enumerate(members)]
        by_role = {m.role: p for m, p in zip(members, points, strict=True)}
        result = {
            **points[0],
            "n": len(rd.y_test),
            "source": rd.source,
            "metric": metric,
            "best": by_role.get("best"),
            "baseline": by_role.get("baseline"),
            "refit_seconds": round(time.perf_counter() - t0, 3),
        }
        return list(points), result

    def _fit(
        self,
        spec: StudySpec,
        data: FoldData,
        cfg: TrainConfig,
        rates: list[TrialRates],
        on_epoch: OnEpoch,
    ) -> StackedRun:
        """The refit's members trained together, as the spec's model kind trains them."""
        model = model_config(spec, self.ctx.models)
        return model_kind(spec).fit(data, model, cfg, rates, self.ctx.device, on_epoch)[1]

    @staticmethod
    def _point(metric: str, m: Member, out: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        pred = out[:, 0] if out.shape[-1] == 1 and metric in ("rmse", "mae", "r2") else out
        lo, hi = heldout.ci95(metric, pred, y)
        return {"dropout": m.dropout, "score": heldout.score(metric, pred, y), "ci95": [lo, hi]}

    def _check(self, claim: RefitClaim) -> None:
        """Stop at an epoch boundary: a shutdown, a cancel, a lost lease."""
        if self.ctx.stop.is_set():
            raise Interrupted(Why.SHUTDOWN.value, Why.SHUTDOWN)
        status = self.hb.ended.get(claim.study_id)
        if status is None:
            try:
                status = queue.ended_status(self.ctx.engine, claim.study_id)
            except StorageError:
                status = None  # the heartbeat will tell
        if status is not None:
            raise Interrupted(f"study {status}", Why.STUDY_ENDED)
        if claim.lease_id in self.hb.lost:
            raise Interrupted(Why.LOST.value, Why.LOST)

    def _export(
        self, claim: RefitClaim, run: StackedRun, i: int, m: Member, rd: RefitData, point: Any
    ) -> ModelFile:
        d = rd.data
        shift = float(d.y_shift[0]) if d.y_shift is not None else 0.0
        scale = float(d.y_scale[0]) if d.y_scale is not None else 1.0
        module = take_home_module(run.net, i, rd.transformer, shift, scale)
        spec = claim.spec
        params = {k: float(v) for k, v in (m.trial.params if m.trial else {}).items()}
        meta = {
            "study_id": claim.study_id,
            "role": m.role,
            "dropout": m.dropout,
            "params": params,
            "task": d.task,
            "metric": spec.cv.metric,
            "classes": rd.classes,
            "columns": rd.columns,
            "image_shape": list(d.image_shape) if d.image_shape else None,
            "input": "raw features" if module.standardise else "preprocess.skops output",
            "output": "class logits" if d.task == "classification" else "predictions",
            "test": {**point, "n": len(rd.y_test), "source": rd.source} if point else None,
            "holdout": {
                "fraction": spec.evaluation.holdout or 0.0,
                "seed": spec.cv.seed,
                "rows": rd.held,  # row numbers in the data set's file, from 0
            },
        }
        data = export_program(module, d.n_features, meta, rd.transformer)
        return ModelFile(m.role, m.dropout, params, data)
