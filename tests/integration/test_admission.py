"""Admission control and out-of-memory handling (issue 11): the submit's 422 (storage.admission,
on real databases), the estimate against the worker's sizing and real memory, and a real worker
process whose allocations fail (RLIMIT_AS)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
import torch
from optuna.trial import TrialState

from droptune.core.errors import Invalid
from droptune.core.schemas import DataSummary
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue, registry
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import retries, workers
from droptune.storage.submit import admission, submits
from droptune.worker.engine import sizing
from droptune.worker.engine.data import load_dataset, prepare_folds
from droptune.worker.engine.stacked import (
    StackedRun,
    TrainConfig,
    TrialRates,
    _generator,
    epoch_order,
)
from droptune.worker.run.loop import Worker
from droptune.worker.run.plugins import model_config
from droptune.worker.run.settings import WorkerSettings
from tests.queueing import study_row

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


# --- the worker: what it advertises, how it sizes, out of memory ----------------------------


def test_a_worker_advertises_its_memory(sqlite_url: str) -> None:
    for wid, gb in (("configured", 1.5), ("device", None)):
        w = Worker(WorkerSettings(database_url=sqlite_url, device="cpu", worker_memory_gb=gb))
        w.id, w.settings.exit_when_idle = wid, True
        assert w.run() == 0
    with transaction(w.engine) as conn:
        rows = {r.id: r.memory_bytes for r in conn.execute(sa.select(workers))}
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert rows == {"configured": int(1.5 * GIB), "device": ram}


def test_batch_sizing_respects_the_configured_memory() -> None:
    data = prepare_folds(load_dataset("iris"), 5, 0)
    cfg = model_config(spec({"dataset": {"builtin": "iris"}}))
    per_trial, evals = sizing.trial_bytes(cfg, data, 64, 16)
    held = sizing._data_bytes(data)
    three = held + 2 * (evals + 3 * per_trial)
    assert sizing.auto_batch_trials(cfg, data, 16, "cpu", 64, three) == 3
    assert sizing.auto_batch_trials(cfg, data, 16, "cpu", 64, held) == 1  # never below one
    assert sizing.auto_batch_trials(cfg, data, 16, "cpu", 64, None) > 3


def test_what_counts_as_out_of_memory() -> None:
    with pytest.raises(RuntimeError) as real:  # 4 PiB: no machine maps it, whatever overcommit
        torch.empty(2**50, dtype=torch.float32)
    assert sizing.is_oom(real.value)
    reason = sizing.oom_reason(real.value)
    assert reason.startswith("out of memory: DefaultCPUAllocator: can't allocate memory")
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore")
    assert sizing.is_oom(cuda) and sizing.is_oom(MemoryError())
    assert sizing.oom_reason(cuda) == "out of memory: CUDA out of memory. Tried to allocate 2 GiB"
    assert not sizing.is_oom(RuntimeError("shape mismatch"))
    assert not sizing.is_oom(ValueError("can't allocate memory"))


def test_no_retry_gives_a_failed_trial_up(db_url: str) -> None:
    engine = create_engine(db_url)
    sid = submits.enqueue(engine, spec({"dataset": {"builtin": "iris"}}), "a")
    claim = queue.claim(engine, "w", 2)
    assert claim is not None
    for lease in claim.leases:
        assert queue.link_trial(engine, lease.id, lease.id, lease.id, {"dropout": 0.5}, "w")
    first, second = claim.leases
    admission.no_retry(engine, first.id)
    queue.finish(engine, first.id, queue.Outcome.FAILED, "out of memory: x")
    queue.finish(engine, second.id, queue.Outcome.FAILED, "another error")  # retried
    with transaction(engine) as conn:
        assert conn.execute(sa.select(retries.c.origin_trial)).scalars().all() == [second.id]
    row = study_row(engine, sid)
    assert (row.n_given_up, row.slots_claimed, row.status) == (1, 0, "running")


RUNNER = r"""
import resource, sys
from droptune.worker.run.loop import Worker
from droptune.worker.run.settings import WorkerSettings

worker = Worker(WorkerSettings(device="cpu", threads=1, exit_when_idle=True))
size = next(int(ln.split()[1]) << 10 for ln in open("/proc/self/status") if "VmSize" in ln)
limit = size + int(sys.argv[1])  # torch and the rest are loaded: room for the batches
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
assert resource.getrlimit(resource.RLIMIT_AS)[0] == limit
sys.exit(worker.run())
"""
ROOM = 680 * 2**20  # one [2048]x4 trial on 2 folds fits (~480 MiB), two do not (~870 MiB)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_out_of_memory_fails_the_trial_without_retry(sqlite_url: str, tmp_path: Path) -> None:
    """A real worker process whose address space is capped (RLIMIT_AS), so allocations truly
    fail: the issue's study runs out alone (failed, not retried; max_failed=0 fails the study),
    then a batch of two that runs out is trained one trial at a time, and both complete."""
    engine = create_engine(sqlite_url)
    short = {"training": {"epochs": 1}, "priority": 1}
    alone = {**ISSUE, **short, "search": {"n_trials": 1, "batch_trials": 1, "max_failed": 0}}
    both = {"n_trials": 2, "batch_trials": 2, "pruner": "none"}
    two = {"dataset": {"builtin": "iris"}, "model": {"hidden": [2048] * 4}, "cv": {"folds": 2}}
    two |= {"search": both, "training": short["training"]}
    first = submits.enqueue(engine, spec(alone), "a")  # priority 1: runs first
    second = submits.enqueue(engine, spec(two), "a")
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPTUNE_")}
    env |= {"DROPTUNE_DATABASE_URL": sqlite_url, "MALLOC_ARENA_MAX": "1"}
    with log.open("wb") as out:
        run = [sys.executable, "-c", RUNNER, str(ROOM)]
        code = subprocess.run(run, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert code.returncode == 0, text[-3000:]

    row = study_row(engine, first)
    assert row.status == "failed" and row.n_given_up == 1, text[-3000:]
    assert "out of memory: DefaultCPUAllocator: can't allocate memory" in row.reason
    trials = _trials(sqlite_url, first)
    assert [t.state for t in trials] == [TrialState.FAIL]  # one attempt, not max_retries more
    assert trials[0].user_attrs["reason"].startswith("out of memory: ")
    with transaction(engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(retries)).scalar_one() == 0

    assert "a batch of 2 trials ran out of memory" in text and "one at a time" in text
    assert study_row(engine, second).status == "succeeded", text[-3000:]
    done = _trials(sqlite_url, second)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2


def _trials(url: str, study_id: int) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=queue.optuna_study_name(study_id), storage=url).trials


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
