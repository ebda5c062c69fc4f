"""The light-worker half of bench/bench_queue.py (`--light`): droptune's own Worker loop in N
forked processes with training replaced by a sleep, measured over a window (see bench_queue's
docstring for what is measured). Run it through `bench/bench_queue.py --light 8 32 128`."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_queue import TINY, activity, drop_database, fresh_database, libpq
from light_worker import Light, fork_workers, stop_all
from postgres_side import Bouncer, server_cpu_s, statement_stats, statements
from proc_cpu import cpu_s, machine_busy_s, proc_fields

from droptune.storage.submit import submits


@dataclasses.dataclass(frozen=True)
class Snap:
    t: float
    server_cpu: float
    client_cpu: float
    bouncer_cpu: float
    machine_busy: float
    xacts: int  # pg_stat_database.xact_commit
    load: float


def snap(mon: Any, db: str, postmaster: int, pids: list[int], bouncer: Bouncer | None) -> Snap:
    xacts = mon.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (db,))
    return Snap(
        time.time(),
        server_cpu_s(postmaster),
        cpu_s(pids),
        cpu_s([bouncer.proc.pid]) if bouncer else 0.0,
        machine_busy_s(),
        int(xacts.fetchone()[0]),
        os.getloadavg()[0],
    )


def per_s(a: Snap, b: Snap) -> dict[str, float]:
    """Cores busy and transactions per second between two snapshots."""
    span = b.t - a.t
    keys = ("server_cpu", "client_cpu", "bouncer_cpu", "machine_busy")
    out = {f"{k}_cores": round((getattr(b, k) - getattr(a, k)) / span, 3) for k in keys}
    return out | {"xacts_per_s": round((b.xacts - a.xacts) / span, 1)}


def quantiles_ms(seconds: list[float]) -> dict[str, float]:
    if len(seconds) < 2:
        return {}
    q = statistics.quantiles([s * 1000 for s in seconds], n=100)
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1)}


def by_kind(samples: list[dict[str, int]]) -> dict[str, int]:
    """The most connections one worker held at once, per pool (names `w{i}:{kind}`)."""
    most: dict[str, int] = {}
    for s in samples:
        for app, n in s.items():
            if app.startswith("w") and ":" in app:
                kind = app.split(":", 1)[1]
                most[kind] = max(most.get(kind, 0), n)
    return dict(sorted(most.items()))


def submit(engine: Any, o: Light) -> float:
    from droptune.core.spec.study import StudySpec

    search = {
        "strategy": "optuna",  # every trial runs: no early stop, no answer read per batch
        "sampler": "random",
        "pruner": "none",
        "n_trials": 10000,
        "batch_trials": o.batch,
    }
    spec = {**TINY, "model": {"hidden": [8]}, "training": {"epochs": o.epochs}, "search": search}
    submits.enqueue(engine, StudySpec.model_validate(spec), "bench")
    return time.time()


POOL_KEYS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait")


@dataclasses.dataclass
class Window:
    """What the parent sees while the workers run: snapshots, connection samples, statements."""

    postmaster: int
    procs: list[Any]  # the workers' multiprocessing.Process objects
    marks: dict[str, Snap] = dataclasses.field(default_factory=dict)
    backends: list[dict[str, int]] = dataclasses.field(default_factory=list)
    pools: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    submitted: float = 0.0
    started_s: float = 0.0


def measure(args: argparse.Namespace, n: int, o: Light, mon: Any, url: str, w: Window) -> None:
    """Wait for the workers to start; measure them idle; submit, warm up, measure the window."""
    from droptune.storage.jobs import registry
    from droptune.storage.sql.db import create_engine

    engine, bouncer, db = create_engine(url), args.bouncer, str(sa.make_url(url).database)
    t_start = time.time()
    while registry.count_live(engine, 600) < n:
        if time.time() - t_start > 600 or not all(p.is_alive() for p in w.procs):
            raise RuntimeError(f"only {registry.count_live(engine, 600)} of {n} workers started")
        time.sleep(1)
    w.started_s = time.time() - t_start
    time.sleep(2)  # past their first empty peek, LISTENing
    has_stats = bool(statements(mon, db))  # the migration's own statements, when it is loaded
    for phase, seconds in (("idle", args.idle), ("window", args.window)):
        if phase == "window":
            w.submitted = submit(engine, o)
            time.sleep(args.warmup)
        if has_stats:
            mon.execute("SELECT pg_stat_statements_reset()")
        w.marks[phase] = a = snap(mon, db, w.postmaster, [p.pid for p in w.procs], bouncer)
        while time.time() < a.t + seconds:
            if phase == "window":
                w.backends.append(activity(mon, db))
                for p in bouncer.show("POOLS") if bouncer else []:
                    if p.get("database") == db:  # clients: connected, served or waiting
                        got = {k: float(p[k]) for k in POOL_KEYS}
                        w.pools.append(got | {"clients": got["cl_active"] + got["cl_waiting"]})
            time.sleep(1)
        w.marks[phase + "_end"] = b = snap(mon, db, w.postmaster, [p.pid for p in w.procs], bouncer)
        w.stats[phase] = statement_stats(statements(mon, db), b.t - a.t) if has_stats else {}
    engine.dispose()


def light_window(args: argparse.Namespace, n: int, o: Light, tmp: Path) -> dict[str, Any]:
    """Start n light workers on a fresh database, measure, stop them, drop it."""
    import psycopg

    from droptune.storage.sql.migrate import upgrade

    direct = fresh_database("postgres", tmp, args.server)
    out = tmp / f"light{n}-{uuid.uuid4().hex[:4]}"
    out.mkdir()
    upgrade(direct)
    procs = fork_workers(n, args.bouncer.url(direct) if args.bouncer else direct, out, o)
    try:
        with psycopg.connect(libpq(direct), autocommit=True, application_name="bench") as mon:
            mon.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            row = mon.execute("SELECT pg_backend_pid()").fetchone()
            backend = proc_fields(row[0]) if row else []
            w = Window(int(backend[1]) if backend else 0, procs)
            measure(args, n, o, mon, direct, w)
    except RuntimeError:  # workers died: say how, once per distinct last log line
        ends = [f.read_text().strip().splitlines()[-1:] for f in out.glob("w*.log")]
        for line, count in collections.Counter(e[0][:200] for e in ends if e).items():
            print(f"{count} workers' last log line: {line}", file=sys.stderr)
        raise
    finally:
        stop_all(procs)
        drop_database(direct, args.server)
    return summarise(n, out, w, o) | {"via": "pgbouncer" if args.bouncer else "direct"}


def summarise(n: int, out: Path, w: Window, o: Light) -> dict[str, Any]:
    """The window's numbers, from the workers' own reports and the parent's samples."""
    reports = [json.loads(f.read_text()) for f in sorted(out.glob("w*.json"))]
    a, b = w.marks["window"], w.marks["window_end"]
    span = b.t - a.t

    def window(kind: str) -> list[list[Any]]:
        return [e for r in reports for e in r["events"][kind] if a.t <= e[0] < b.t]

    claims, beats, settles = window("claim"), window("beat"), window("settle")
    woke = [
        min(e[0] for e in r["events"]["claim"] if e[0] >= w.submitted) - w.submitted
        for r in reports
        if any(e[0] >= w.submitted for e in r["events"]["claim"])
    ]
    errors: collections.Counter[str] = collections.Counter()
    for r in reports:
        errors.update(r["errors"])
    told = sum(1 for e in settles if e[2] == "done") / span
    totals = [sum(c for app, c in s.items() if app != "bench") for s in w.backends]
    pools = {k: max(p[k] for p in w.pools) for k in ("clients", *POOL_KEYS)} if w.pools else {}
    return {
        "workers": n,
        "reported": len(reports),
        "light": dataclasses.asdict(o),
        "startup_s": round(w.started_s, 1),
        "window_s": round(span, 1),
        "load_1min": [round(a.load, 2), round(b.load, 2)],
        "claims_per_s": round(sum(1 for e in claims if e[2]) / span, 2),
        "empty_claims_per_s": round(sum(1 for e in claims if not e[2]) / span, 2),
        "told_per_s": round(told, 2),
        "outcomes": dict(collections.Counter(str(e[2]) for e in settles)),
        "heartbeats_per_s": round(len(beats) / span, 1),
        "periodic_heartbeats_per_s": round(sum(e[2] for e in beats) / span, 1),
        "heartbeat_statements_per_s": round(3 * len(beats) / span, 1),
        "heartbeat_ms": quantiles_ms([e[1] for e in beats]),
        "claim_ms": quantiles_ms([e[1] for e in claims]),
        "first_claim_after_submit_ms": quantiles_ms(woke),
        **per_s(a, b),
        "backends_max": max(totals, default=0),
        "backends_per_worker_max": by_kind(w.backends),
        "bouncer_pools_max": pools,
        "idle": per_s(w.marks["idle"], w.marks["idle_end"]) | w.stats["idle"],
        **w.stats["window"],
        "errors": dict(errors.most_common(12)),
    }


def light_workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = Light(
        args.train_s, args.epochs, args.batch, args.heartbeat_s, args.publish, args.no_prepare
    )
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)  # pgbouncer runs as postgres and reads its files here
        bouncer = Bouncer(args.server, args.pgbouncer, args.pool, tmp) if args.pgbouncer else None
        vias = [None, bouncer] if bouncer and args.alternate else [bouncer]
        try:
            for n in args.light:
                for _ in range(args.repeats):
                    for via in vias:
                        args.bouncer = via
                        o = base if via is None else dataclasses.replace(base, named=False)
                        rows.append(light_window(args, n, o, tmp))
                        print(light_line(rows[-1]), flush=True)
        finally:
            if bouncer:
                bouncer.close()
    return rows


def light_line(r: dict[str, Any]) -> str:
    lat, fc = r["claim_ms"], r["first_claim_after_submit_ms"]
    return (
        f"light {r['via']:9s} workers={r['workers']:<4d} claims/s={r['claims_per_s']:6.2f} "
        f"told/s={r['told_per_s']:6.2f} hb stmts/s={r['heartbeat_statements_per_s']:6.1f} "
        f"claim ms p50/p95/p99={lat.get('p50')}/{lat.get('p95')}/{lat.get('p99')} "
        f"first claim p50={fc.get('p50')} ms backends={r['backends_max']} "
        f"per worker={r['backends_per_worker_max']} cpu server/workers/machine="
        f"{r['server_cpu_cores']}/{r['client_cpu_cores']}/{r['machine_busy_cores']} "
        f"load={r['load_1min']} errors={sum(r['errors'].values())}"
    )
