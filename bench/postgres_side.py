"""The PostgreSQL side of the queue benchmarks: a local server's CPU, its statements
(pg_stat_statements), and a PgBouncer in front of it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from proc_cpu import cpu_s, proc_fields


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds of a local PostgreSQL so far: the postmaster, the backends it has reaped
    (cutime, cstime) and those still alive (found by their parent in /proc)."""
    alive = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]
    backends = [p for p in alive if (f := proc_fields(p)) and int(f[1]) == postmaster]
    return cpu_s([postmaster], reaped=True) + cpu_s(backends)


class Bouncer:
    """A PgBouncer in transaction pooling mode in front of `server`, for the bench's lifetime."""

    def __init__(self, server: str, port: int, pool: int, tmp: Path) -> None:
        u = sa.make_url(server)
        self.port, self.dir = port, tmp / "pgbouncer"
        self.dir.mkdir(mode=0o777)
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            f"[databases]\n* = host={u.host} port={u.port or 5432}\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\nadmin_users = postgres\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool}\nmax_client_conn = 4000\n"
        )
        as_root = ["-u", "postgres"] if os.geteuid() == 0 else []  # it refuses to run as root
        log = (self.dir / "pgbouncer.log").open("w")
        self.proc = subprocess.Popen(["pgbouncer", *as_root, str(ini)], stderr=log, stdout=log)
        for _ in range(50):
            time.sleep(0.1)
            if self.show("VERSION"):
                return
        raise RuntimeError(f"pgbouncer did not start: see {self.dir / 'pgbouncer.log'}")

    def url(self, database_url: str) -> str:
        return str(sa.make_url(database_url).set(host="127.0.0.1", port=self.port))

    def show(self, what: str) -> list[dict[str, str]]:
        """`SHOW what` on the admin console (simple query protocol only, hence psql)."""
        cmd = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "pgbouncer"]
        cmd += ["-AF|", "-P", "footer=off", "-c", f"SHOW {what}"]
        lines = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
        head = lines[0].split("|") if lines else []
        return [dict(zip(head, ln.split("|"), strict=False)) for ln in lines[1:]]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def statements(mon: Any, db: str) -> list[tuple[int, float, str]]:
    """pg_stat_statements of `db` (calls, total ms, query), most called first; [] without it."""
    try:
        return [
            (int(c), float(t), str(q))
            for c, t, q in mon.execute(
                "SELECT calls, total_exec_time, query FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY calls DESC",
                (db,),
            )
        ]
    except Exception:  # not in shared_preload_libraries: the numbers that need it are left out
        return []


def statement_stats(stats: list[tuple[int, float, str]], span: float) -> dict[str, Any]:
    """Statements per second (BEGIN and COMMIT included), the server's execution time, and the
    most called and most costly statements."""

    def top(rows: list[tuple[int, float, str]]) -> list[dict[str, Any]]:
        return [
            {"per_s": round(c / span, 1), "ms_per_s": round(t / span, 2), "query": q[:160]}
            for c, t, q in rows[:12]
        ]

    return {
        "statements_per_s": round(sum(c for c, _t, _q in stats) / span, 1),
        "server_exec_ms_per_s": round(sum(t for _c, t, _q in stats) / span, 1),
        "most_called": top(stats),
        "most_time": top(sorted(stats, key=lambda r: -r[1])),
    }
