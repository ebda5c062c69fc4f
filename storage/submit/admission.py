"""Admission control: refuse at submit a study no worker could ever run, rather than fail it after
hours of out-of-memory attempts (issue 11: hidden [8192]x8 on iris was accepted, and a worker
capped at 6 GiB spent 13 minutes on 33 such attempts before the study failed).

The estimate is the memory of the smallest batch a worker trains: one trial on every split
(cv.folds x cv.repeats members, stacked). Its arithmetic is core/memory.py, the same functions the
worker's batch sizing (worker/engine/sizing.py) calls; tests/integration/test_admission.py checks
that the estimate is within a factor 2 of the tensors a built StackedMLP / StackedCNN holds.

Torch-free, and sqlalchemy only for the two small queries (the limit a live worker advertises,
and the lease a trial that ran out of memory must not retry).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core import catalogue, memory
from droptune.core.errors import Invalid
from droptune.core.schemas import DataSummary
from droptune.core.spec.kinds import SPEC_KINDS
from droptune.core.spec.model import ModelSpec
from droptune.core.spec.study import StudySpec
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import leases, studies

GIB = 2**30


@dataclass(frozen=True)
class DataShape:
    """What the estimate needs of a data set, known at submit without loading it."""

    rows: int  # rows cross-validated (after the holdout)
    features: int  # network inputs (after one-hot encoding); C*H*W for images
    classes: int  # network outputs: 1 for regression
    image_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Estimate:
    """Bytes one batch needs on a worker's device, by what they are for."""

    state: int  # parameters x STATE_COPIES
    activations: int  # the larger of a training step's and a validation chunk's
    data: int  # the folds (FoldData) kept on the device
    conv_share: float = 0.0  # the share of `state` in convolutions (CNN)
    eval_bound: bool = False  # validation, not a training step, sets `activations`

    @property
    def total(self) -> int:
        return self.state + self.activations + self.data


def layer_shapes(model: ModelSpec, shape: DataShape) -> list[memory.Layer]:
    """(fan_in, fan_out, positions) per layer of the study's network (its kind's, core.memory)."""
    layers = SPEC_KINDS[model.kind].layers
    if layers is None:  # submits.submit skips the check for such kinds (a user's module)
        raise ValueError(f"model kind {model.kind!r} has no memory estimate")
    return layers(model, shape.features, shape.classes, shape.image_shape)


def fold_bytes(shape: DataShape, splits: int) -> int:
    """FoldData on the device (core.memory.fold_bytes)."""
    return memory.fold_bytes(shape.rows, shape.features, splits)


def estimate(spec: StudySpec, shape: DataShape, trials: int = 1) -> Estimate:
    """The memory of a batch of `trials` trials of this study (every split of each stacked)."""
    m = spec.model
    layers = layer_shapes(m, shape)
    members = trials * spec.cv.splits
    params = memory.param_count(layers)
    train = members * memory.FLOAT * memory.SAVED * memory.activation_values(layers, shape.features)
    train *= spec.training.batch_size
    val_rows = math.ceil(shape.rows / spec.cv.folds)
    evals = memory.eval_bytes(layers, shape.features, members, val_rows)
    return Estimate(
        state=members * memory.FLOAT * memory.STATE_COPIES * params,
        activations=max(train, evals),
        data=fold_bytes(shape, spec.cv.splits),
        conv_share=memory.param_count(layers[:-2]) / params if m.kind == "cnn" else 0.0,
        eval_bound=evals > train,
    )


def data_shape(spec: StudySpec, summary: DataSummary | None = None) -> DataShape:
    """The rows, inputs and outputs of the study's data set, from the catalogue (built-in), the
    synthetic options, or the uploaded data set's summary (which the queue has read)."""
    ds = spec.dataset
    image: tuple[int, int, int] | None = None
    if ds.builtin == catalogue.SYNTHETIC:
        o = ds.synthetic_options()
        rows, features, classes = o["n_samples"], o["n_features"], o["n_classes"]
    elif ds.builtin is not None:
        b = catalogue.BUILTINS[ds.builtin]
        rows, features, classes, image = b.rows, b.features, b.classes, b.image_shape
    elif summary is None:
        raise ValueError("an uploaded data set's shape needs its summary")
    else:
        rows, features = summary.rows, summary.encoded_features
        classes = 1 if summary.task == "regression" else len(summary.classes or (0, 0))
        if summary.image_shape:
            c, h, w = summary.image_shape
            image = (c, h, w)
    held_out = math.ceil(rows * (spec.evaluation.holdout or 0.0))
    return DataShape(rows - held_out, features, classes, image)


def largest_batch(spec: StudySpec, shape: DataShape, limit: int, most: int = 1024) -> int:
    """The most trials (up to `most`) whose batch fits in `limit` bytes; 0 when none does."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(spec, shape, mid).total <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / GIB:.3f} GiB"


def _shrink(spec: StudySpec, est: Estimate) -> tuple[str, str]:
    """The field whose share of the estimate is largest, and how to shrink it."""
    cnn = spec.model.kind == "cnn"
    parts = {"state": est.state, "activations": est.activations, "data": est.data}
    part = max(parts, key=lambda k: parts[k])
    if part == "data":
        return "cv.folds", "fewer folds or repeats, or a smaller data set"
    if part == "activations" and not est.eval_bound:
        return "training.batch_size", "a smaller training.batch_size, or narrower layers"
    if cnn and (part == "activations" or est.conv_share > 0.5):
        return "model.channels", "fewer or narrower convolution channels"
    if cnn:
        return "model.hidden", "a narrower fully connected layer"
    return "model.hidden", "fewer or narrower hidden layers"


def check(
    spec: StudySpec,
    summary: DataSummary | None,
    limit_bytes: int,
    source: str = "a worker has",
) -> None:
    """Raise Invalid (422) naming the field to shrink when the smallest batch of this study (one
    trial on each of its splits) needs more than `limit_bytes`, or when the batch_trials it
    asks for does (a worker trains exactly that many together, so every batch would run out of
    memory first). `source` says where the limit comes from, for the message."""
    shape = data_shape(spec, summary)
    est = estimate(spec, shape)
    splits = spec.cv.splits
    if est.total > limit_bytes:
        field, advice = _shrink(spec, est)
        raise Invalid(
            f"{field}: the smallest batch of this study (one trial on each of its {splits} "
            f"cross-validation splits) needs about {_gib(est.total)} (parameters, gradients and "
            f"Adam state {_gib(est.state)}, activations {_gib(est.activations)}, fold data "
            f"{_gib(est.data)}), more than the {_gib(limit_bytes)} {source}: use {advice}, or "
            "fewer cv.folds",
            field=field,
        )
    asked = spec.search.batch_trials or 1
    if asked > 1 and estimate(spec, shape, asked).total > limit_bytes:
        fits = largest_batch(spec, shape, limit_bytes, asked)
        raise Invalid(
            f"search.batch_trials: {asked} trials trained together need about "
            f"{_gib(estimate(spec, shape, asked).total)}, more than the {_gib(limit_bytes)} "
            f"{source}: at most {fits} fit (or leave batch_trials unset to size it from memory)",
            field="search.batch_trials",
        )


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory_bytes() -> int | None:
    """The memory this process may use: the machine's physical memory, or a container's cgroup
    limit where that is lower (in a container the machine's is not what it gets). None where
    the OS says neither."""
    try:
        ram: int | None = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        ram = None
    for path in CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (ram is None or int(text) < ram):
            ram = int(text)
    return ram


@dataclass(frozen=True)
class MemoryLimit:
    """What a submit's memory is checked against: DROPTUNE_WORKER_MEMORY_GB; else the largest
    memory a worker alive within `grace_seconds` advertises; else `fallback_bytes` (the API
    host's memory, used when the API serves a public address: issue 19 found a 355 GiB batch
    accepted there while no worker was up), else nothing."""

    configured_gb: float | None
    grace_seconds: float
    fallback_bytes: int | None = None

    def limit(self, conn: Connection) -> tuple[int, str] | None:
        """The limit in bytes and where it comes from (for the message), or None."""
        if self.configured_gb is not None:
            gb = self.configured_gb
            return int(gb * GIB), f"a worker may use (DROPTUNE_WORKER_MEMORY_GB={gb:g})"
        from droptune.storage.jobs import registry

        live = registry.largest_live_memory(conn, self.grace_seconds)
        if live is not None:
            return live, "the largest live worker has"
        if self.fallback_bytes is not None:
            return self.fallback_bytes, (
                "the API host has (no worker is live and DROPTUNE_WORKER_MEMORY_GB is unset)"
            )
        return None


def admit(
    conn: Connection, spec: StudySpec, summary: DataSummary | None, memory: MemoryLimit
) -> None:
    """The submit's check (submits.submit calls it in its transaction, once the data set is
    resolved): raise Invalid (422) naming the field to shrink when the study's smallest batch
    needs more memory than a worker has; no check when no limit is known (see MemoryLimit)."""
    found = memory.limit(conn)
    if found is not None:
        check(spec, summary, *found)


def no_retry(engine: Engine, lease_id: int) -> None:
    """Make the lease's next FAILED end give its trial up (queue._give_back: the slot goes back
    with fresh parameters and counts against max_failed) instead of retrying its parameters:
    a trial that ran out of memory would run out again with them. Its attempt becomes the
    study's max_retries; a lease already gone is left alone."""
    most = sa.select(studies.c.max_retries).where(studies.c.id == leases.c.study_id)
    with transaction(engine) as conn:
        conn.execute(
            leases.update().where(leases.c.id == lease_id).values(attempt=most.scalar_subquery())
        )
