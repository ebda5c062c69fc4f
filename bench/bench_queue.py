"""Queue throughput, claim latency and connections, with real or light worker processes.

    .venv/bin/python bench/bench_queue.py [--backend postgres|sqlite] [--workers 1 2 4]
    .venv/bin/python bench/bench_queue.py --light 8 32 128 [--server URL] [--pgbouncer PORT]

Real workers (default): for each worker count, start that many `droptune worker --threads 1`
processes on a fresh database, let them go idle, submit a fixed tiny study, and measure
  * claim latency: from the submit returning to the first trial's start (Optuna's
    datetime_start; both clocks are this machine's),
  * trials per minute: finished trials over the time from the first start to the last end,
  * connections (PostgreSQL): the most backends one worker held at once (pg_stat_activity by
    application_name, which each worker takes from PGAPPNAME).
PostgreSQL wakes idle workers with LISTEN/NOTIFY; SQLite polls every 0.25 s.

Light workers (`--light`, PostgreSQL): droptune's own Worker loop (recovery, refit claim, peek,
claim, Optuna trial, link, heartbeat thread, per-epoch report and status read, tell, end of
lease, LISTEN while idle) in N forked processes, with training replaced by a sleep and the
dashboard publish left out (see `light_worker`). They idle for `--idle` s (measured), one big
study is submitted, and after `--warmup` s a window of `--window` s is measured: claims/s,
trials told/s, heartbeats/s, the wall time of each `queue.claim` call as the worker sees it,
connections (pg_stat_activity, each pool named by application_name), CPU of the database server,
the workers and the whole machine (/proc), and, when pg_stat_statements is loaded, statements.
`--pgbouncer PORT` starts a PgBouncer (transaction pooling) in front of `--server`; with
`--alternate` each count runs direct, then through it, `--repeats` times.
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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from droptune.storage.submit import submits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TINY: dict[str, Any] = {
    "dataset": {"builtin": "digits"},
    "model": {"hidden": [32]},
    "training": {"epochs": 2},
    "cv": {"folds": 3},
    "search": {"strategy": "optuna", "sampler": "random", "pruner": "none", "batch_trials": 1},
}


def fresh_database(kind: str, tmp: Path, admin: str = ADMIN) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'{uuid.uuid4().hex[:6]}.db'}"
    import psycopg

    name = f"droptune_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return str(sa.make_url(admin).set(drivername="postgresql+psycopg", database=name))


def drop_database(url: str, admin: str = ADMIN) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)')


def libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def activity(mon: Any, db: str) -> dict[str, int]:
    """The database's backends by application_name (the asking one left out)."""
    rows = mon.execute(
        "SELECT application_name, count(*) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY 1",
        (db,),
    )
    return {str(a): int(c) for a, c in rows}


class ConnectionSampler(threading.Thread):
    """The most backends any application named `worker…` held at once, sampled every 0.25 s."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.most, self.halt = url, 0, threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(libpq(self.url), autocommit=True) as mon:
            while not self.halt.wait(0.25):
                now = activity(mon, str(sa.make_url(self.url).database))
                self.most = max([self.most, *(n for a, n in now.items() if a[:6] == "worker")])


def run_once(url: str, n_workers: int, n_trials: int, tmp: Path) -> dict[str, float]:
    import optuna

    from droptune.core.spec.study import StudySpec
    from droptune.storage.jobs import queue, registry
    from droptune.storage.sql.db import create_engine
    from droptune.storage.sql.migrate import upgrade

    upgrade(url)
    sampler = None if url.startswith("sqlite") else ConnectionSampler(url)
    if sampler:
        sampler.start()
    env = {**os.environ, "DROPTUNE_DATABASE_URL": url, "DROPTUNE_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "droptune.client.cli", "worker", "--device", "cpu"],
            env={**env, "PGAPPNAME": f"worker{i}"},
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
    sid = submits.enqueue(engine, spec, "bench")
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
    engine.dispose()
    if sampler:
        sampler.halt.set()
        sampler.join()
    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds()
    return {
        "workers": n_workers,
        "claim_latency_s": (min(starts) - submitted).total_seconds(),
        "trials_per_min": 60 * len(done) / span,
        "span_s": span,
        "conns_per_worker": sampler.most if sampler else 0,
    }


def real_workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in args.workers:
            runs = []
            for _ in range(args.repeats):
                url = fresh_database(args.backend, Path(d), args.server)
                runs.append(run_once(url, n, args.trials, Path(d)))
                if args.backend == "postgres":
                    drop_database(url, args.server)
            keys = ("claim_latency_s", "trials_per_min", "span_s", "conns_per_worker")
            row: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
            row["workers"] = n
            rows.append(row)
            print(
                f"{args.backend:8s} workers={n}  trials/min={row['trials_per_min']:7.1f}  "
                f"claim latency={row['claim_latency_s'] * 1000:6.0f} ms  "
                f"({args.trials} trials in {row['span_s']:.1f} s)  "
                f"connections/worker (most)={row['conns_per_worker']}",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--server", default=ADMIN, help="PostgreSQL admin URL (databases made here)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=1)
    light = ap.add_argument_group("light workers")
    light.add_argument("--light", type=int, nargs="+", help="light worker counts, e.g. 8 32 128")
    light.add_argument("--train-s", type=float, default=0.5, help="sleep per batch")
    light.add_argument("--epochs", type=int, default=2)
    light.add_argument("--batch", type=int, default=1, help="trials per claim")
    light.add_argument("--heartbeat-s", type=float, default=1.0)
    light.add_argument("--idle", type=float, default=10.0, help="idle window before the submit")
    light.add_argument("--warmup", type=float, default=5.0)
    light.add_argument("--window", type=float, default=40.0)
    light.add_argument("--publish", action="store_true", help="keep the dashboard publish")
    light.add_argument("--pgbouncer", type=int, help="run PgBouncer on this port in front")
    light.add_argument("--pool", type=int, default=20, help="PgBouncer default_pool_size")
    light.add_argument("--alternate", action="store_true", help="direct and PgBouncer in turn")
    light.add_argument(
        "--no-prepare", action="store_true", help="psycopg prepare_threshold=None (every run)"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.light:
        from bench_queue_light import light_workers  # here: it imports this module's helpers

        rows = light_workers(args)
    else:
        rows = real_workers(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
