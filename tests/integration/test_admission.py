"""Admission control (issue 11): the submit's 422 (storage.admission, on real databases) and the
estimate against the worker's sizing and real memory. The worker's side (what it advertises, how
it sizes, out of memory) is in test_worker_memory.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from droptune.core.errors import Invalid
from droptune.core.schemas import DataSummary
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import registry
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import workers
from droptune.storage.submit import admission
from droptune.worker.engine import sizing
from droptune.worker.engine.data import load_dataset, prepare_folds
from droptune.worker.engine.stacked import (
    StackedRun,
    TrainConfig,
    TrialRates,
    _generator,
    epoch_order,
)
from droptune.worker.run.plugins import model_config

GIB = 2**30
ISSUE = {"dataset": {"builtin": "iris"}, "model": {"hidden": [8192] * 8}}  # the issue's case


def spec(raw: dict[str, Any]) -> StudySpec:
    return StudySpec.model_validate(raw)


def cnn(channels: list[int], batch_size: int = 64, hidden: int = 128) -> dict[str, Any]:
    model = {"kind": "cnn", "channels": channels, "hidden": [hidden]}
    return {
        "dataset": {"builtin": "digits"},
        "model": model,
        "training": {"batch_size": batch_size},
    }


def admit(url: str, raw: dict[str, Any], gb: float | None) -> None:
    engine = create_engine(url)
    with transaction(engine) as conn:  # as enqueue calls it: inside its transaction
        admission.admit(conn, spec(raw), None, admission.MemoryLimit(gb, 30.0))
    engine.dispose()


def refusal(url: str, raw: dict[str, Any], gb: float | None) -> Invalid:
    with pytest.raises(Invalid) as info:
        admit(url, raw, gb)
    assert info.value.status == 422
    return info.value


# --- the submit's check, on SQLite and PostgreSQL -------------------------------------------


def test_the_issue_case_is_refused_naming_the_field(db_url: str) -> None:
    err = refusal(db_url, ISSUE, 6.0)
    assert err.errors[0]["field"] == "model.hidden"
    # both numbers, in GiB: 8 layers of 8192 x 8192 on 5 folds need ~35 GiB of Adam state alone
    assert "needs about 35.3 GiB" in err.detail
    assert "more than the 6.0 GiB a worker may use (DROPTUNE_WORKER_MEMORY_GB=6)" in err.detail


@pytest.mark.parametrize(
    "raw",
    [
        {"dataset": {"builtin": "iris"}},
        {"dataset": {"builtin": "digits"}, "model": {"kind": "cnn"}},
        {"dataset": {"builtin": "synthetic"}, "cv": {"folds": 10, "repeats": 3}},
    ],
)
def test_a_default_study_is_admitted(db_url: str, raw: dict[str, Any]) -> None:
    admit(db_url, raw, 6.0)
    admit(db_url, raw, 0.1)  # a default study needs a few MiB


def _age(engine: sa.Engine, worker_id: str) -> None:
    """A worker whose last heartbeat was long ago: lost, not live."""
    with transaction(engine) as conn:
        conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(heartbeat_at=dt.datetime(2000, 1, 1))
        )


def test_the_largest_live_worker_sets_the_limit(db_url: str) -> None:
    engine = create_engine(db_url)
    registry.register(engine, "small", "h", 1, "cuda:0", memory_bytes=6 * GIB)
    registry.register(engine, "old", "h", 2, "cpu")  # advertises nothing: not counted
    assert registry.largest_live_memory(engine, 30.0) == 6 * GIB
    err = refusal(db_url, ISSUE, None)
    assert err.errors[0]["field"] == "model.hidden"
    assert "more than the 6.0 GiB the largest live worker has" in err.detail
    admit(db_url, {"dataset": {"builtin": "iris"}}, None)

    registry.register(engine, "big", "h", 3, "cuda:0", memory_bytes=64 * GIB)
    with transaction(engine) as conn:  # through a connection, as enqueue's transaction has
        assert registry.largest_live_memory(conn, 30.0) == 64 * GIB
    admit(db_url, ISSUE, None)  # 35.3 GiB fits the big one
    refusal(db_url, ISSUE, 6.0)  # the configured memory wins over what workers advertise

    registry.stopped(engine, "big")
    refusal(db_url, ISSUE, None)
    registry.register(engine, "gone", "h", 4, "cuda:0", memory_bytes=64 * GIB)
    _age(engine, "gone")
    assert registry.largest_live_memory(engine, 30.0) == 6 * GIB
    refusal(db_url, ISSUE, None)
    _age(engine, "small")
    with transaction(engine) as conn:
        assert admission.MemoryLimit(None, 30.0).limit(conn) is None
    admit(db_url, ISSUE, None)  # no live worker left: nothing known, nothing refused


# --- which field, and the shapes the estimate reads -----------------------------------------


UPLOAD = (  # an uploaded data set's summary, as storage.datasets keeps it
    '{"format": "csv", "rows": 1000, "features": 10, "task": "classification", "target": "y", '
    '"task_inferred": true, "columns": [], "classes": ["a", "b", "c"], "image_shape": null, '
    '"class_counts": [300, 300, 400], "encoded_features": 12}'
)


def _upload(**kw: Any) -> DataSummary:
    return DataSummary.model_validate({**json.loads(UPLOAD), **kw})


@pytest.mark.parametrize(
    ("raw", "summary", "gb", "field"),
    [
        (ISSUE, None, 6.0, "model.hidden"),
        (cnn([1024, 1024], 4096), None, 6.0, "training.batch_size"),  # activations
        (cnn([1024] * 4, 1), None, 1.0, "model.channels"),  # convolutions' parameters
        (  # a million rows, ten copies of them
            {"dataset": {"id": 1}, "model": {"hidden": [16]}, "cv": {"folds": 10}},
            _upload(rows=1_000_000, encoded_features=60),
            1.0,
            "cv.folds",
        ),
    ],
)
def test_the_field_named_is_the_largest_share(
    raw: dict[str, Any], summary: DataSummary | None, gb: float, field: str
) -> None:
    with pytest.raises(Invalid) as info:
        admission.check(spec(raw), summary, int(gb * GIB))
    assert info.value.errors[0]["field"] == field
    assert info.value.detail.startswith(f"{field}: ")


def test_batch_trials_that_do_not_fit_are_refused() -> None:
    raw = {"dataset": {"builtin": "iris"}, "model": {"hidden": [4096, 4096]}}
    sp = spec({**raw, "search": {"batch_trials": 1024}})
    with pytest.raises(Invalid) as info:
        admission.check(sp, None, 6 * GIB)
    assert info.value.errors[0]["field"] == "search.batch_trials"
    shape = admission.data_shape(sp)
    fits = admission.largest_batch(sp, shape, 6 * GIB)
    assert f"at most {fits} fit" in info.value.detail
    assert admission.estimate(sp, shape, fits).total <= 6 * GIB
    assert admission.estimate(sp, shape, fits + 1).total > 6 * GIB
    admission.check(spec({**raw, "search": {"batch_trials": fits}}), None, 6 * GIB)


def test_the_shape_of_an_uploaded_data_set() -> None:
    reg = spec({"dataset": {"id": 1}, "evaluation": {"holdout": 0.2}})
    shape = admission.data_shape(reg, _upload(task="regression", classes=None, class_counts=None))
    assert shape == admission.DataShape(800, 12, 1, None)
    image = _upload(rows=100, features=48, encoded_features=48, image_shape=[3, 4, 4])
    cnn = spec({"dataset": {"id": 1}, "model": {"kind": "cnn"}})
    assert admission.data_shape(cnn, image) == admission.DataShape(100, 48, 3, (3, 4, 4))
    with pytest.raises(ValueError, match="summary"):
        admission.data_shape(cnn, None)


# --- the estimate against real tensors -------------------------------------------------------

SHAPES = [
    {"dataset": {"builtin": "iris"}, "model": {"hidden": [64, 32]}},
    {"dataset": {"builtin": "wine"}, "model": {"hidden": [128]}, "cv": {"folds": 3, "repeats": 2}},
    cnn([8, 16, 4]),
    {"dataset": {"builtin": "synthetic", "options": {"n_samples": 300}}, "training": {"epochs": 1}},
]


@pytest.mark.parametrize("raw", SHAPES)
def test_the_estimate_matches_the_tensors_of_a_real_run(raw: dict[str, Any]) -> None:
    """The submit's estimate (core.memory, which worker.sizing calls too) against a stacked model
    after a real step: its weights, gradients and Adam moments, and the folds FoldData holds."""
    sp = spec({**raw, "evaluation": {"holdout": 0}})
    ds = load_dataset(sp.dataset.builtin or "", {**sp.dataset.options})
    data = prepare_folds(ds, sp.cv.folds, 0, "cpu", sp.cv.repeats)
    shape, cfg, bs = admission.data_shape(sp), model_config(sp), sp.training.batch_size
    assert (shape.rows, shape.features, shape.classes) == (len(ds.y), ds.X.shape[1], ds.n_classes)
    per_trial, evals = sizing.trial_bytes(cfg, data, bs)
    est = admission.estimate(sp, shape)
    assert est.activations == (evals if est.eval_bound else per_trial - est.state)

    run = StackedRun(data, cfg, TrainConfig(epochs=1), [TrialRates((0.5,))])
    run.train_epoch(epoch_order(data, _generator(data.device, 3)), bs)
    params = list(run.net.parameters())
    real = sum(p.nbytes + (0 if p.grad is None else p.grad.nbytes) for p in params)
    real += sum(v.nbytes for st in run.opt.state.values() for v in st.values())
    assert 0 <= real - est.state <= 64 * len(params)  # Adam's step counts
    folds = sum(t.nbytes for t in (data.X_std, data.y, data.train_idx, data.val_idx))
    assert abs(est.data - folds) <= 0.01 * folds


MEASURE = r"""
import ctypes, json, sys
import torch
from droptune.storage.submit import admission
from droptune.core.spec.study import StudySpec
from droptune.worker.run.plugins import model_config
from droptune.worker.engine.data import load_dataset, prepare_folds
from droptune.worker.engine.stacked import (
    StackedRun,
    TrainConfig,
    TrialRates,
    _generator,
    epoch_order,
)

libc = ctypes.CDLL("libc.so.6")

def status(key):
    return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(key))

def reset():
    libc.malloc_trim(0)  # what the last run freed goes back to the system
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM (peak resident) starts again from here
    return status("VmRSS")

def peak(raw, train):
    spec = StudySpec.model_validate(raw)
    data = prepare_folds(load_dataset(spec.dataset.builtin, spec.dataset.options),
                         spec.cv.folds, 0, "cpu", spec.cv.repeats)
    cfg = TrainConfig(epochs=1, batch_size=spec.training.batch_size)
    base = reset()
    run = StackedRun(data, model_config(spec), cfg, [TrialRates((0.5,))])
    if train:
        run.train_epoch(epoch_order(data, _generator(data.device, 3)), cfg.batch_size)
    else:
        base = reset()  # validation alone
    run.scores("accuracy")
    return status("VmHWM") - base

torch.set_num_threads(1)
peak({"dataset": {"builtin": "iris"}}, True)  # warm-up: what torch sets up once
print(json.dumps([peak(raw, train) for raw, train in json.loads(sys.argv[1])]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_the_estimate_is_within_a_factor_2_of_real_memory(tmp_path: Path) -> None:
    """Peak resident memory of a real B=1 run (a fresh process, peak reset before each) against
    the estimate: parameters-bound, activations-bound, and a validation chunk alone."""
    wide = {"dataset": {"builtin": "iris"}, "model": {"hidden": [1024] * 4}}
    data = {"builtin": "synthetic", "options": {"n_samples": 100_000}}
    tall = {"dataset": data, "model": {"hidden": [512, 512]}, "cv": {"folds": 2}}
    cases = [(wide, True), (cnn([64, 128], 256, 256), True), (tall, False)]
    cases = [({**raw, "evaluation": {"holdout": 0}}, train) for raw, train in cases]
    cmd, env = [sys.executable, "-c", MEASURE, json.dumps(cases)], {"MALLOC_ARENA_MAX": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ | env)
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.splitlines()[-1])
    kinds = []
    for (raw, train), real in zip(cases, peaks, strict=True):
        est = admission.estimate(spec(raw), admission.data_shape(spec(raw)))
        figure = est.state + est.activations if train else est.activations
        kinds.append("eval" if est.eval_bound else est.state > est.activations)
        print(f"{raw['model']}: estimate {figure / 2**20:.0f} MiB, real {real / 2**20:.0f} MiB")
        assert real / 2 <= figure <= 2 * real
    # each share of the estimate was put to the test: parameters, activations, validation
    assert kinds == [True, False, "eval"]


# --- a public bind with nothing known about the workers (issue 19, item 7) -----------------


def test_the_api_hosts_memory_bounds_a_public_server_with_no_worker(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Served on a public address with no DROPTUNE_WORKER_MEMORY_GB and no live worker, a
    355 GiB-per-batch study was accepted: now the API host's memory bounds it (said in the log).
    On loopback nothing changes: no limit is known, nothing is refused."""
    from fastapi.testclient import TestClient

    from droptune.service.app import create_app
    from droptune.service.settings import ServiceSettings

    huge = {**ISSUE, "cv": {"folds": 10, "repeats": 10}}  # ~700 GiB in one batch
    with caplog.at_level("WARNING", logger="droptune.api"):
        app = create_app(ServiceSettings(database_url=sqlite_url, host="0.0.0.0", insecure=True))
    assert "DROPTUNE_WORKER_MEMORY_GB is unset" in caplog.text
    ram = admission.host_memory_bytes()
    assert ram is not None and app.state.memory.fallback_bytes == ram
    with TestClient(app, base_url="http://localhost") as api:
        r = api.post("/studies", json=huge)
        assert r.status_code == 422, r.text
        assert "the API host has (no worker is live" in r.json()["detail"]
        assert r.json()["errors"][0]["field"] == "model.hidden"
        assert api.get("/studies").json()["total"] == 0
        assert api.post("/studies", json={"dataset": {"builtin": "iris"}}).status_code == 201
        # a live worker's advertised memory wins over the host's
        registry.register(app.state.engine, "big", "h", 1, "cuda:0", memory_bytes=2**50)
        assert api.post("/studies", json=huge).status_code == 201
    local = create_app(ServiceSettings(database_url=sqlite_url))
    assert local.state.memory.fallback_bytes is None
