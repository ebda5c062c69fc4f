"""A worker as the deployments launch it with `--exit-when-idle` (a SLURM array task, a KEDA
ScaledJob's pod): it runs a tiny queued study on a real PostgreSQL and exits 0 once the queue is
empty; launched again on the empty queue, it exits 0 at once. test_slurm.py and test_k8s_jobs.py
launch it their way and check it here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from droptune.core.spec.study import StudySpec
from droptune.storage.sql.db import create_engine
from droptune.storage.submit import submits
from tests.queueing import study_row

TINY = {
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"n_trials": 3},
}
Launch = Callable[[], subprocess.CompletedProcess[str]]


def clean_env(tmp_path: Path, drop: tuple[str, ...] = ("DROPTUNE_",)) -> dict[str, str]:
    """This process's environment without the variables the launcher sets (prefixes `drop`),
    with this venv's `droptune` first on PATH and a cache of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return env | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DROPTUNE_CACHE_DIR": str(tmp_path / "cache"),
    }


def runs_the_queue_and_exits_0(pg_url: str, launch: Launch) -> subprocess.CompletedProcess[str]:
    """Queue the tiny study, launch a worker: it runs every trial and the refit, and exits 0;
    launch another on the empty queue: it exits 0 and runs nothing. The first run's result."""
    engine = create_engine(pg_url)
    try:
        sid = submits.enqueue(engine, StudySpec.model_validate(TINY), "alice")
        done = launch()
        assert done.returncode == 0, done.stderr[-3000:]
        row = study_row(engine, sid)
        assert (row.status, row.n_done, row.slots_claimed) == ("succeeded", 3, 3)
        # The queue is empty now: another worker finds nothing, and exits 0 at once.
        again = launch()
        assert again.returncode == 0, again.stderr[-3000:]
        assert study_row(engine, sid).n_done == 3
    finally:
        engine.dispose()
    return done
