"""Queue throughput and claim latency with real worker processes.

    .venv/bin/python bench/bench_queue.py [--database-url URL] [--workers 1 2 4] [--trials 48]

For each worker count: start that many `droptune worker --threads 1` processes on a fresh
database, let them go idle, submit a fixed tiny study, and measure
  * claim latency: from the submit returning to the first trial's start (Optuna's
    datetime_start; both clocks are this machine's),
  * trials per minute: finished trials over the time from the first start to the last end.
PostgreSQL wakes idle workers with LISTEN/NOTIFY; SQLite polls every 0.25 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY: dict[str, Any] = {
    "dataset": {"builtin": "digits"},
    "model": {"hidden": [32]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"sampler": "random", "pruner": "none", "batch_trials": 1},
}


def fresh_database(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'{uuid.uuid4().hex[:6]}.db'}"
    import psycopg

    name = f"droptune_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def run_once(url: str, n_workers: int, n_trials: int, tmp: Path) -> dict[str, float]:
    import optuna

    from droptune.storage import queue, registry
    from droptune.storage.db import create_engine
    from droptune.storage.migrate import upgrade
    from droptune.storage.spec import StudySpec

    upgrade(url)
    env = {**os.environ, "DROPTUNE_DATABASE_URL": url, "DROPTUNE_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "droptune.client.cli", "worker", "--device", "cpu"],
            env=env,
            stdout=(tmp / f"w{i}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(n_workers)
    ]
    engine = create_engine(url)
    while registry.count_live(engine, 30) < n_workers:  # imports done, registered
        time.sleep(0.5)
    time.sleep(2)  # past their first (empty) claim, idle and listening
    spec = StudySpec.model_validate({**TINY, "search": {**TINY["search"], "n_trials": n_trials}})
    submitted = dt.datetime.now()
    sid = queue.enqueue(engine, spec, "bench")
    name = queue.optuna_study_name(sid)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=name, storage=url).trials
        except KeyError:
            trials = []
        done = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
        if len(done) >= n_trials:
            break
        time.sleep(0.5)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=60)
    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds()
    return {
        "workers": n_workers,
        "claim_latency_s": (min(starts) - submitted).total_seconds(),
        "trials_per_min": 60 * len(done) / span,
        "span_s": span,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in args.workers:
            runs = [
                run_once(fresh_database(args.backend, Path(d)), n, args.trials, Path(d))
                for _ in range(args.repeats)
            ]
            row = {
                k: statistics.median(r[k] for r in runs)
                for k in ("claim_latency_s", "trials_per_min", "span_s")
            }
            row["workers"] = n
            rows.append(row)
            print(
                f"{args.backend:8s} workers={n}  trials/min={row['trials_per_min']:7.1f}  "
                f"claim latency={row['claim_latency_s'] * 1000:6.0f} ms  "
                f"({args.trials} trials in {row['span_s']:.1f} s)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
