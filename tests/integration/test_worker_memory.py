"""Out-of-memory handling on the worker (issue 11): what it advertises, how it sizes batches
to its memory, what counts as out of memory, and a real worker process whose allocations fail
(RLIMIT_AS). The submit's admission check is in test_admission.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import torch
from optuna.trial import TrialState

from droptune.storage.jobs import queue
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import retries, workers
from droptune.storage.submit import admission, submits
from droptune.worker.engine import sizing
from droptune.worker.engine.data import load_dataset, prepare_folds
from droptune.worker.run.loop import Worker
from droptune.worker.run.plugins import model_config
from droptune.worker.run.settings import WorkerSettings
from tests.integration.test_admission import GIB, ISSUE, spec
from tests.queueing import study_row


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
