"""Upload time and memory for a large data set, and the worker's first and cached load.

    .venv/bin/python bench/bench_upload.py [--backend both|sqlite|postgres] [--mb 100]

Generates a ~100 MB CSV (12 numeric columns, a categorical string column, an integer label with
5 classes) and a ~100 MB NPZ (float32 X [N, 64], int64 y, uncompressed `np.savez`) in a temp dir,
then for each backend (SQLite: a temp file; PostgreSQL: a fresh database on
postgresql://postgres@127.0.0.1:5432/postgres, dropped afterwards, skipped if unreachable) and
each file measures
  * upload: wall time of `Client.upload_dataset` against a real `droptune serve` subprocess,
  * API memory: VmRSS of that process after startup and one warm-up upload (a small file of the
    same format, so the readers' imports are paid before), and its peak RSS (VmHWM) during the
    upload; one fresh process per file, and VmHWM is also reset just before the upload where
    the kernel allows (/proc/<pid>/clear_refs), so the peak is this upload's,
  * worker load (in this process): `load_uploaded` on an empty cache (fetches the bytes from the
    database, then reads them into arrays) and again with a new `FileCache` on the same
    directory, with the chunk rows read from the database each time.
Prints a table and appends the raw numbers to bench/results/upload_<date>.log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from droptune.client.api import Client  # noqa: E402
from droptune.storage.sql.db import create_engine  # noqa: E402
from droptune.storage.sql.tables import dataset_chunks  # noqa: E402
from droptune.worker.run.datasets import FileCache, load_uploaded  # noqa: E402
from tests import procs  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FORMATS = ("csv", "npz")
MiB = 1 << 20
# The chunk fetch selects the `data` column; `\b` keeps `dataset_id` (the count query) out.
CHUNK_SELECT = re.compile(r"^\s*SELECT\b.*\bdroptune_dataset_chunks\.data\b", re.I | re.S)


# ---------------------------------------------------------------------------- data files


def write_csv(path: Path, target_bytes: int, seed: int = 0) -> None:
    """Blocks of rows until the file reaches `target_bytes`: the size is what is benchmarked,
    and the bytes per row depend on the float formatting."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    cities = np.array([f"city_{i:02d}" for i in range(12)])
    block = min(100_000, max(100, target_bytes // 100))
    header = True
    while not path.exists() or path.stat().st_size < target_bytes:
        frame = pd.DataFrame(
            rng.standard_normal((block, 12)).astype(np.float32),
            columns=[f"f{i}" for i in range(12)],
        )
        frame["city"] = cities[rng.integers(0, len(cities), block)]
        frame["label"] = rng.integers(0, 5, block)
        frame.to_csv(path, mode="a", header=header, index=False, float_format="%.6g")
        header = False


def write_npz(path: Path, target_bytes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = max(100, target_bytes // (64 * 4 + 8))  # float32 X row + int64 label
    X = rng.standard_normal((n, 64), dtype=np.float32)
    y = rng.integers(0, 5, n)
    with path.open("wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, X=X, y=y)


WRITERS: dict[str, Callable[[Path, int], None]] = {"csv": write_csv, "npz": write_npz}


# ---------------------------------------------------------------------------- databases


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh, empty database's URL; a PostgreSQL one is dropped on the way out."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'upload-{uuid.uuid4().hex[:6]}.db'}"
        return
    import psycopg

    name = f"droptune_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            # FORCE: a pooled connection left behind by an error must not keep it alive.
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_reachable() -> str | None:
    """None if PostgreSQL answers, else why not (one line)."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------- API side


def vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024  # the kernel reports kB
    return out


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0, own processes). Without it
    the peak could be the startup's, not the upload's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Upload:
    seconds: float
    dataset_id: int
    rss_base: int  # after startup and the warm-up upload
    hwm_base: int  # the peak so far (startup, warm-up), before any reset
    hwm_peak: int  # the peak after the upload
    rss_after: int
    peak_reset: bool


def upload(url: str, path: Path, warm: Path, log: Path) -> Upload:
    # Room above the file for the form's overhead, whatever --mb asks for.
    limit = {"DROPTUNE_MAX_UPLOAD_MB": str(max(256, 2 * path.stat().st_size // MiB))}
    port = procs.free_port()
    try:
        proc = procs.serve(url, port, log, limit)
    except AssertionError:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    try:
        with Client(f"http://127.0.0.1:{port}", timeout=60) as client:
            client.upload_dataset(warm)
            time.sleep(0.5)  # let the allocator settle after the warm-up answer
            base = vm(proc.pid)
            reset = reset_peak(proc.pid)
            t0 = time.perf_counter()
            record = client.upload_dataset(path, timeout=1200)
            seconds = time.perf_counter() - t0
            after = vm(proc.pid)
    except Exception:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        procs.stop(proc)
    return Upload(
        seconds=seconds,
        dataset_id=record.id,
        rss_base=base["VmRSS"],
        hwm_base=base["VmHWM"],
        hwm_peak=after["VmHWM"],
        rss_after=after["VmRSS"],
        peak_reset=reset,
    )


# ---------------------------------------------------------------------------- worker side


@dataclass
class Load:
    seconds: float
    chunk_queries: int
    chunk_rows: int
    fetched: int  # files FileCache read from the database (1 on a miss, 0 on a hit)
    rows: int


@dataclass
class Loads:
    first: Load
    cached: Load
    chunks_stored: int


def worker_loads(url: str, dataset_id: int, cache_dir: Path) -> Loads:
    import sqlalchemy as sa

    engine = create_engine(url)
    counts = {"queries": 0, "rows": 0}

    def count(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if CHUNK_SELECT.match(statement):
            counts["queries"] += 1
            # psycopg knows how many rows a SELECT returned; sqlite3 says -1, and each fetch
            # query names one (dataset_id, seq) primary key, so it read at most one row.
            counts["rows"] += cursor.rowcount if cursor.rowcount >= 0 else 1

    def timed(cache: FileCache) -> Load:
        counts.update(queries=0, rows=0)
        t0 = time.perf_counter()
        data = load_uploaded(cache, dataset_id)
        seconds = time.perf_counter() - t0
        return Load(seconds, counts["queries"], counts["rows"], cache.fetched, len(data.y))

    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.select(sa.func.count()).where(dataset_chunks.c.dataset_id == dataset_id)
            ).scalar_one()
        sa.event.listen(engine, "after_cursor_execute", count)
        # A new FileCache for each load, as a new worker process on this machine would have.
        first = timed(FileCache(engine, cache_dir, 1 << 40))
        cached = timed(FileCache(engine, cache_dir, 1 << 40))
    finally:
        engine.dispose()
    return Loads(first, cached, int(stored))


# ---------------------------------------------------------------------------- report


def mib(n: float) -> str:
    return f"{n / MiB:.0f}"


HEADER = (
    f"{'backend':8s} {'file':4s} {'MiB':>4s} {'upload s':>8s} {'base MiB':>8s} "
    f"{'peak MiB':>8s} {'+MiB':>5s} {'peak/file':>9s} {'+/file':>6s} {'first s':>7s} "
    f"{'cached s':>8s} {'chunks read':>12s}"
)


def row(backend: str, fmt: str, size: int, up: Upload, loads: Loads) -> str:
    rise = up.hwm_peak - up.rss_base
    chunks = f"{loads.first.chunk_rows}/{loads.cached.chunk_rows} of {loads.chunks_stored}"
    return (
        f"{backend:8s} {fmt:4s} {mib(size):>4s} {up.seconds:8.2f} {mib(up.rss_base):>8s} "
        f"{mib(up.hwm_peak):>8s} {mib(rise):>5s} {up.hwm_peak / size:9.2f} {rise / size:6.2f} "
        f"{loads.first.seconds:7.2f} {loads.cached.seconds:8.2f} {chunks:>12s}"
    )


def raw(backend: str, fmt: str, size: int, up: Upload, loads: Loads) -> str:
    """Every number, in bytes and seconds, as key=value (the table rounds)."""
    fields: dict[str, object] = {
        "backend": backend,
        "format": fmt,
        "file_bytes": size,
        "upload_s": round(up.seconds, 3),
        "api_rss_base": up.rss_base,
        "api_hwm_base": up.hwm_base,
        "api_hwm_peak": up.hwm_peak,
        "api_rss_after": up.rss_after,
        "api_peak_reset": up.peak_reset,
        "peak_over_file": round(up.hwm_peak / size, 3),
        "rise_over_file": round((up.hwm_peak - up.rss_base) / size, 3),
        "first_load_s": round(loads.first.seconds, 3),
        "cached_load_s": round(loads.cached.seconds, 3),
        "chunk_rows_first": loads.first.chunk_rows,
        "chunk_rows_cached": loads.cached.chunk_rows,
        "chunk_queries_first": loads.first.chunk_queries,
        "chunk_queries_cached": loads.cached.chunk_queries,
        "chunks_stored": loads.chunks_stored,
        "fetched_first": loads.first.fetched,
        "fetched_cached": loads.cached.fetched,
        "rows_loaded": loads.first.rows,
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--backend", choices=["both", "sqlite", "postgres"], default="both")
    ap.add_argument("--mb", type=float, default=100.0, help="size of each file, in MB (1e6)")
    ap.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    ap.add_argument("--log", type=Path, help="default: bench/results/upload_<date>.log")
    args = ap.parse_args()
    log = args.log or ROOT / "bench" / "results" / f"upload_{dt.date.today().isoformat()}.log"
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and (why := postgres_reachable()) is not None:
        print(f"skipping PostgreSQL: {PG_ADMIN} is unreachable ({why})", flush=True)
        backends.remove("postgres")

    lines = [
        f"# {dt.datetime.now().isoformat(timespec='seconds')}  "
        f"{shlex.join([Path(sys.executable).name, *sys.argv])}",
        f"# {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
    ]
    with tempfile.TemporaryDirectory(prefix="droptune-bench-upload-") as d:
        tmp = Path(d)
        files: dict[str, tuple[Path, Path]] = {}
        for fmt in args.formats:
            big, warm = tmp / f"big.{fmt}", tmp / f"warm.{fmt}"
            t0 = time.perf_counter()
            WRITERS[fmt](big, int(args.mb * 1e6))
            WRITERS[fmt](warm, 64 * 1024)
            files[fmt] = (big, warm)
            print(
                f"generated {big.name}: {big.stat().st_size / 1e6:.1f} MB "
                f"in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        print(HEADER, flush=True)
        table = [HEADER]
        for backend in backends:
            with database(backend, tmp) as url:
                for fmt, (big, warm) in files.items():
                    serve_log = tmp / f"serve-{backend}-{fmt}.log"
                    up = upload(url, big, warm, serve_log)
                    loads = worker_loads(url, up.dataset_id, tmp / f"cache-{backend}-{fmt}")
                    size = big.stat().st_size
                    table.append(row(backend, fmt, size, up, loads))
                    lines.append(raw(backend, fmt, size, up, loads))
                    print(table[-1], flush=True)
    lines += [f"#   {t}" for t in table]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"raw numbers appended to {log.relative_to(ROOT) if log.is_relative_to(ROOT) else log}")


if __name__ == "__main__":
    main()
