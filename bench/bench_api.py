"""Read latency of a real `droptune serve` under polling load, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_api.py [--backend sqlite postgres] [--seconds 20]
        [--pollers 200] [--every 0.2 [0.5 ...]] [--trials 5000] [--studies 1000] [--out FILE]
        [--hey [--serve-workers N] [--token] [--port P]]  (--hey: bench/api_hey.py's cases instead)

The database is filled directly (bulk inserts into droptune's and Optuna's tables): one running
study with `--trials` finished trials, and `--studies` - 1 others with a few trials each. Then
`droptune serve` starts on 127.0.0.1 (a subprocess, as users run it) and, per backend, for
`--seconds` each:

* `--pollers` pollers, each one keep-alive connection asking `/studies/{id}/best` every
  `--every` seconds (200 x 0.2 s = 1 000 requests/s offered), once per `--every` value; then,
  at the first rate, `/studies/{id}` and the `/best` of a small study (the same work but the
  trial count: what is left is the HTTP stack's);
* 100 requests held open with `?wait=` (each asked again when answered) while one poller asks
  `/best` every 50 ms.

Latency is measured from the moment a request was due, not from when it could be sent, so a
server that falls behind is not flattered (no coordinated omission); `late` counts requests
sent over 50 ms after they were due, and a poller stops at the end of the run even when behind
(req/s is what was answered, over the time to the last answer). `server CPU ms/req` is the
`serve` process's CPU time (SQLite's work included, PostgreSQL's not) per answered poll. The
load generator is asyncio on raw sockets (HTTP/1.1 keep-alive, one connection per poller):
tens of microseconds of CPU per request, so that the server, not the client, is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from api_hey import HEADER, hey_rows, started  # noqa: E402
from optuna.storages._rdb import models  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from proc_cpu import cpu_s  # noqa: E402

from droptune.core.spec.study import StudySpec  # noqa: E402
from droptune.storage.access import tokens  # noqa: E402
from droptune.storage.jobs.queue import optuna_study_name  # noqa: E402
from droptune.storage.optuna_bridge import optuna_storage  # noqa: E402
from droptune.storage.sql.db import create_engine  # noqa: E402
from droptune.storage.sql.migrate import upgrade  # noqa: E402
from droptune.storage.sql.tables import studies  # noqa: E402
from tests import procs  # noqa: E402
from tests.integration.test_reads import insert_rows, scored_trial  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SPEC = StudySpec.model_validate(
    {"dataset": {"builtin": "iris"}, "cv": {"folds": 5}, "search": {"n_trials": 10000}}
)
OTHER_TRIALS = 5  # trials of each of the other studies
LATE_S = 0.05
TABLE = "| db | case | req/s | p50 ms | p95 ms | p99 ms | max ms | p99 from send ms | server CPU "
TABLE += "ms/req | late | errors |\n" + "|---" * 11 + "|"


def fresh_database(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench_api.db'}"
    import psycopg

    name = f"droptune_bench_api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def fill(url: str, n_studies: int, n_trials: int) -> tuple[int, int]:
    """`n_studies` running studies straight into the tables; the first one has `n_trials`
    trials, the others OTHER_TRIALS. Returns the big study's id and a small one's."""
    upgrade(url)
    engine = create_engine(url)
    storage = optuna_storage(url)
    rng = random.Random(0)
    spec = SPEC.model_dump(mode="json")
    o_studies = models.BaseModel.metadata.tables["studies"]
    o_directions = models.BaseModel.metadata.tables["study_directions"]
    try:
        with engine.begin() as conn:
            result = conn.execute(
                studies.insert().returning(studies.c.id, sort_by_parameter_order=True),
                [
                    {
                        "owner": "local",
                        "spec": spec,
                        "status": "running",
                        "n_trials": SPEC.search.n_trials,
                        "max_retries": 1,
                        "max_failed": 10,
                    }
                    for _ in range(n_studies)
                ],
            )
            ids = list(result.scalars())
            conn.execute(
                studies.update().where(studies.c.id == sa.bindparam("sid")),
                [{"sid": i, "optuna_study": optuna_study_name(i)} for i in ids],
            )
        with storage.engine.begin() as conn:
            result = conn.execute(
                o_studies.insert().returning(o_studies.c.study_id, sort_by_parameter_order=True),
                [{"study_name": optuna_study_name(i)} for i in ids],
            )
            oids = list(result.scalars())
            conn.execute(
                o_directions.insert(),
                [
                    {"study_id": o, "objective": 0, "direction": StudyDirection.MAXIMIZE}
                    for o in oids
                ],
            )
            for k, oid in enumerate(oids):
                n = n_trials if k == 0 else OTHER_TRIALS
                insert_rows(conn, oid, [scored_trial(rng) for _ in range(n)])
    finally:
        engine.dispose()
        storage.engine.dispose()
    return int(ids[0]), int(ids[1])


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, from when each was due
    service: list[float] = field(default_factory=list)  # seconds, from when each was sent
    errors: int = 0
    late: int = 0


async def _get(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str
) -> tuple[int, bytes]:
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"
    )
    return status, await reader.readexactly(length)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def poller(port: int, path: str, every: float, until: float, stats: Stats) -> None:
    """Ask `path` every `every` seconds until `until` on one keep-alive connection."""
    conn = await _connect(port)
    due = time.monotonic() + random.random() * every  # spread the pollers over one period
    try:
        while due < until and time.monotonic() < until:  # behind: stops on time
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sent = time.monotonic()
            if sent - due > LATE_S:
                stats.late += 1
            try:
                status, _ = await asyncio.wait_for(_get(conn, path), 10)
                ok = status == 200
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
                conn[1].close()
                conn = await _connect(port)
            done = time.monotonic()
            if ok:
                stats.latencies.append(done - due)
                stats.service.append(done - sent)
            else:
                stats.errors += 1
            due += every
    finally:
        conn[1].close()


async def long_poll(port: int, path: str, until: float, stats: Stats) -> None:
    """Hold a `?wait=` request open (up to 15 s, never past `until`), again and again."""
    conn = await _connect(port)
    try:
        while (left := until - time.monotonic()) > 0.5:
            try:
                status, _ = await _get(conn, f"{path}?wait={min(15.0, left):.1f}")
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = 0
            if status == 200:
                stats.latencies.append(0.0)  # counts the holds answered
            else:
                stats.errors += 1
                return
    finally:
        conn[1].close()


async def load(
    port: int, path: str, pollers: int, every: float, seconds: float, holds: int = 0
) -> tuple[Stats, Stats, float]:
    """`pollers` pollers of `path` (and `holds` held long-polls) for `seconds`: (pollers'
    stats, long-polls' stats, the seconds until the pollers' last answer)."""
    stats, held = Stats(), Stats()
    start = time.monotonic()
    until = start + seconds
    waits = asyncio.gather(*(long_poll(port, path, until, held) for _ in range(holds)))
    await asyncio.gather(*(poller(port, path, every, until, stats) for _ in range(pollers)))
    wall = time.monotonic() - start  # the last answers may come after `until`
    await waits
    return stats, held, wall


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def row(backend: str, case: str, s: Stats, wall: float, cpu: float, held: Stats | None) -> str:
    """One line of the table; `cpu`: the server process's CPU seconds over the run."""
    ms = [x * 1000 for x in s.latencies]
    svc = [x * 1000 for x in s.service]
    errors = s.errors + (held.errors if held else 0)
    per = cpu * 1000 / max(1, len(ms))
    return (
        f"| {backend} | {case} | {len(ms) / wall:.0f} | {quantile(ms, 0.5):.1f} "
        f"| {quantile(ms, 0.95):.1f} | {quantile(ms, 0.99):.1f} | {max(ms, default=0):.0f} "
        f"| {quantile(svc, 0.99):.1f} | {per:.2f} | {s.late} | {errors} |"
    )


def serve(url: str, port: int, log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPTUNE_")}
    env |= {"DROPTUNE_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    more = ["--workers", str(workers)] if workers > 1 else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "droptune.client.cli", "serve", "--port", str(port), *more],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    healthz = f"http://127.0.0.1:{port}/healthz"
    return started(proc, lambda r: r.status_code == 200, healthz, f"droptune serve (log: {log})")


def sequential(port: int, path: str, n: int = 20) -> float:
    """The median of `n` sequential requests, in ms (no load)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        c.get(path).raise_for_status()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            c.get(path).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def bench(backend: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    url = fresh_database(backend, tmp)
    try:
        t = time.perf_counter()
        big, small = fill(url, args.studies, args.trials)
        if args.token and args.hey:  # an admin's token for the owner: every request sends it
            engine = create_engine(url)
            args.token_value = tokens.create(engine, "local", admin=True)
            engine.dispose()
        print(f"{backend}: filled in {time.perf_counter() - t:.1f}s", flush=True)
        port = args.port or procs.free_port()
        proc = serve(url, port, tmp / f"serve-{backend}.log", args.serve_workers)
        try:
            if args.hey:
                return hey_rows(backend, f"/studies/{big}/best", (proc.pid, port), args, tmp)
            return _cases(backend, args, port, proc.pid, big, small)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        drop_database(url)


def _cases(
    backend: str, args: argparse.Namespace, port: int, pid: int, big: int, small: int
) -> list[str]:
    t = time.perf_counter()
    httpx.get(f"http://127.0.0.1:{port}/studies/{big}/best", timeout=300).raise_for_status()
    first = (time.perf_counter() - t) * 1000
    blank = "| | | | | | | |"
    lines = [
        f"| {backend} | first /best of the big study (computes, keeps the answer) | | "
        f"{first:.0f} {blank}",
        f"| {backend} | sequential GET /studies?limit=50 | | "
        f"{sequential(port, '/studies?limit=50'):.1f} {blank}",
        f"| {backend} | sequential GET /studies/{{id}}/trials (limit 100) | | "
        f"{sequential(port, f'/studies/{big}/trials'):.1f} {blank}",
    ]
    n, e0 = args.pollers, args.every[0]
    # (what, path, pollers, every, held ?wait= requests)
    cases = [
        (f"/studies/{{id}}/best, {n} pollers every {e:g} s", f"/studies/{big}/best", n, e, 0)
        for e in args.every
    ]
    cases += [
        (
            f"/studies/{{id}}, {n} pollers every {e0:g} s",
            f"/studies/{big}",
            n,
            e0,
            0,
        ),
        (
            f"/best of a {OTHER_TRIALS}-trial study, {n} pollers every {e0:g} s",
            f"/studies/{small}/best",
            n,
            e0,
            0,
        ),
        ("/best, 1 poller every 0.05 s + 100 held ?wait=", f"/studies/{big}/best", 1, 0.05, 100),
    ]
    for case, path, pollers, every, holds in cases:
        c0 = cpu_s([pid])
        s, held, wall = asyncio.run(load(port, path, pollers, every, args.seconds, holds))
        if holds:
            case += f" ({len(held.latencies)} answered)"
        lines.append(row(backend, case, s, wall, cpu_s([pid]) - c0, held if holds else None))
        print(lines[-1], flush=True)
    return lines


def machine() -> str:
    load1 = os.getloadavg()
    top = subprocess.run(["top", "-bn1"], capture_output=True, text=True).stdout.splitlines()
    busy = [ln for ln in top[7:12] if ln.strip()]
    return f"load average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; top:\n" + "\n".join(
        f"    {ln}" for ln in busy
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", nargs="+", default=["sqlite", "postgres"])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--pollers", type=int, default=200)
    p.add_argument(
        "--every", type=float, nargs="+", default=[0.2], help="seconds between a poller's asks"
    )
    p.add_argument("--trials", type=int, default=5000)
    p.add_argument("--studies", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    p.add_argument("--hey", action="store_true", help="bench/api_hey.py's cases (needs hey)")
    p.add_argument("--serve-workers", type=int, default=1, help="`serve --workers` (and bare)")
    p.add_argument("--token", action="store_true", help="--hey: with a bearer token (not open)")
    p.add_argument("--port", type=int, default=0, help="serve's port (the bare app's: +1)")
    args = p.parse_args()
    before = machine()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backend:
            lines += bench(backend, args, Path(tmp))
    command = shlex.join([".venv/bin/python", "bench/bench_api.py", *sys.argv[1:]])
    header = [
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, `{command}`",
        f"{os.cpu_count()} CPUs; before the run: {before}",
        "",
        *(HEADER if args.hey else TABLE.split("\n")),
    ]
    text = "\n".join([*header, *lines]) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
