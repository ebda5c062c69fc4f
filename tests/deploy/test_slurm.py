"""deploy/slurm/droptune-worker.sbatch, run with bash as SLURM would run one array task: a
worker that runs a tiny queued study on a real PostgreSQL and exits 0 once the queue is empty;
with no database URL, one clear line and a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from droptune.core.spec.study import StudySpec
from droptune.storage.sql.db import create_engine
from droptune.storage.submit import submits
from tests.queueing import study_row

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "deploy" / "slurm" / "droptune-worker.sbatch"
TINY = {
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"n_trials": 3},
}


def _task(tmp_path: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    """The sbatch file as array task 3 of job 4242, with this venv's `droptune` on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DROPTUNE_", "SLURM_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_JOB_ID": "4242",
        "DROPTUNE_CACHE_DIR": str(tmp_path / "cache"),
        "DROPTUNE_THREADS": "1",  # the suite's machine: one compute thread per process
    }
    if url is not None:
        env["DROPTUNE_DATABASE_URL"] = url
    return subprocess.run(
        ["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=150
    )


def test_the_directives_ask_for_an_array_of_one_gpu_tasks() -> None:
    lines = SBATCH.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    directives = [line.split()[1] for line in lines[:first_command] if line.startswith("#SBATCH")]
    assert "--gres=gpu:1" in directives  # sbatch reads #SBATCH only before the first command
    assert any(d.startswith("--array=") for d in directives)
    assert "exec droptune worker" in SBATCH.read_text()
    assert "--exit-when-idle" in lines[-1]


@pytest.mark.postgres
@pytest.mark.slow
def test_an_array_task_runs_the_queue_and_exits_0_when_it_is_empty(
    pg_url: str, tmp_path: Path
) -> None:
    engine = create_engine(pg_url)
    sid = submits.enqueue(engine, StudySpec.model_validate(TINY), "alice")
    done = _task(tmp_path, pg_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "array task 3 of job 4242" in done.stdout
    row = study_row(engine, sid)
    assert (row.status, row.n_done, row.slots_claimed) == ("succeeded", 3, 3)
    # The queue is empty now: another task finds nothing, and exits 0 at once.
    again = _task(tmp_path, pg_url)
    assert again.returncode == 0, again.stderr[-3000:]
    assert study_row(engine, sid).n_done == 3


def test_without_a_database_url_it_fails_with_one_clear_line(tmp_path: Path) -> None:
    done = _task(tmp_path, None)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "droptune-worker.sbatch: DROPTUNE_DATABASE_URL is not set: "
        "export the database URL before sbatch"
    ]
    assert done.stdout == ""
