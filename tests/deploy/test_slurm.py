"""deploy/slurm/droptune-worker.sbatch, run with bash as SLURM would run one array task: a
worker that runs a tiny queued study on a real PostgreSQL and exits 0 once the queue is empty;
with no database URL, one clear line and a failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.idle_exit import clean_env, runs_the_queue_and_exits_0

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "deploy" / "slurm" / "droptune-worker.sbatch"


def _task(tmp_path: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    """The sbatch file as array task 3 of job 4242, with this venv's `droptune` on PATH."""
    env = clean_env(tmp_path, ("DROPTUNE_", "SLURM_"))
    env |= {
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_JOB_ID": "4242",
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
    done = runs_the_queue_and_exits_0(pg_url, lambda: _task(tmp_path, pg_url))
    assert "array task 3 of job 4242" in done.stdout


def test_without_a_database_url_it_fails_with_one_clear_line(tmp_path: Path) -> None:
    done = _task(tmp_path, None)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "droptune-worker.sbatch: DROPTUNE_DATABASE_URL is not set: "
        "export the database URL before sbatch"
    ]
    assert done.stdout == ""
