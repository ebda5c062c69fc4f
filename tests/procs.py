"""Real processes for the tests: `droptune serve` and `droptune worker` as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")

# Short intervals so faults are noticed in seconds, not the production half-minute.
FAST = {
    "DROPTUNE_HEARTBEAT_SECONDS": "0.5",
    "DROPTUNE_LEASE_GRACE_SECONDS": "4",
    "DROPTUNE_RECOVER_EVERY_SECONDS": "0.5",
    "DROPTUNE_IDLE_WAIT_SECONDS": "0.5",
    "DROPTUNE_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(url: str, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPTUNE_")}
    return {**env, **FAST, "DROPTUNE_DATABASE_URL": url, **(extra or {})}


def droptune(
    args: list[str],
    url: str,
    log: Path,
    extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "droptune.client.cli", *args],
        env=_env(url, extra),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The `droptune` command line, as a user runs it: its exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "droptune.client.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def serve(
    url: str,
    port: int,
    log: Path,
    extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    proc = droptune(["serve", "--port", str(port)], url, log, extra)
    wait_until(lambda: _healthy(port), 60, f"the API on port {port} (log: {log})")
    return proc


def worker(url: str, log: Path, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # A cache of uploaded files of its own, beside its log: tests never share one.
    cache = {"DROPTUNE_CACHE_DIR": str(log.parent / f"{log.stem}-cache")}
    return droptune(["worker", "--device", "cpu"], url, log, {**cache, **(extra or {})})


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def service(url: str, tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `droptune serve` and one worker on `url` (logs in `tmp`): yields the API's base
    URL and the worker; both stop at the end, and the worker must have stopped cleanly."""
    port = free_port()
    api = serve(url, port, tmp / "serve.log")
    work = worker(url, tmp / "droptune.worker.log")
    try:
        yield f"http://127.0.0.1:{port}", work
    finally:
        code = stop(work)
        stop(api)
    assert code == 0, (tmp / "droptune.worker.log").read_text()[-2000:]
