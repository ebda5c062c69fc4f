"""`droptune serve --workers N`: N uvicorn processes on one port, each building the app from
the environment (`create_app_from_env`), a real server on SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from droptune.core.settings import ENV_PREFIX
from tests import procs

SPEC = {"dataset": {"builtin": "iris"}, "search": {"n_trials": 4}}


def children(pid: int) -> list[str]:
    """The command lines of `pid`'s child processes (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def test_serve_workers_answers_from_two_processes(sqlite_url: str, tmp_path: Path) -> None:
    port = procs.free_port()
    log = tmp_path / "serve.log"
    # A flag given to `serve` must reach the processes that read their settings back from the
    # environment: --port here, and DROPTUNE_MAX_WAIT_SECONDS stays what the environment says.
    proc = procs.droptune(
        ["serve", "--port", str(port), "--workers", "2"],
        sqlite_url,
        log,
        {f"{ENV_PREFIX}MAX_WAIT_SECONDS": "0.5"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs._healthy(port), 60, f"serve --workers 2 (log: {log})")
        servers = [c for c in children(proc.pid) if "spawn_main" in c]
        assert len(servers) == 2, children(proc.pid)
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get("/healthz").status_code == 200
            made = c.post("/studies", json=SPEC)
            assert made.status_code == 201, made.text
            sid = made.json()["id"]
            seen = set()
            for _ in range(20):  # new connections: the kernel spreads them over both processes
                with httpx.Client(base_url=base, timeout=30) as one:
                    r = one.get(f"/studies/{sid}/best")
                    assert r.status_code == 200, r.text
                    assert r.json()["status"] == "queued"
                    seen.add(r.headers["etag"])
            assert len(seen) == 1  # every process names the same version of the same answer
            t = time.monotonic()
            held = c.get(f"/studies/{sid}/best", params={"wait": 30})
            assert held.status_code == 200 and time.monotonic() - t < 10  # capped at 0.5 s
    finally:
        procs.stop(proc)
    assert "Traceback" not in log.read_text()
