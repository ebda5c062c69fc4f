"""`droptune serve`, `droptune worker`, `droptune up`: the processes of the service."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import typer

from storage.settings import DEFAULT_DATABASE_URL

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)


def serve(host: str | None, port: int | None, database_url: str | None) -> None:
    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings
    from storage.migrate import upgrade

    _logging()
    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "database_url": database_url}.items()
        if v is not None
    }
    settings = ServiceSettings(**overrides)  # type: ignore[arg-type]
    upgrade(settings.database_url)
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5
    )


def worker(
    database_url: str | None, device: str | None, threads: int | None, exit_when_idle: bool
) -> int:
    from storage.migrate import upgrade
    from worker.loop import Worker
    from worker.settings import WorkerSettings

    _logging()
    overrides = {
        k: v
        for k, v in {"database_url": database_url, "device": device, "threads": threads}.items()
        if v is not None
    }
    settings = WorkerSettings(**overrides)  # type: ignore[arg-type]
    if exit_when_idle:
        settings.exit_when_idle = True
    upgrade(settings.database_url)
    return Worker(settings).run()


def devices() -> list[str]:
    """One worker per visible GPU, or one on the CPU."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def up(host: str, port: int, database_url: str | None, workers: int | None) -> int:
    """API + dashboard + workers as child processes; Ctrl-C stops them all cleanly."""
    from storage.migrate import upgrade

    url = database_url or os.environ.get("DROPTUNE_DATABASE_URL", DEFAULT_DATABASE_URL)
    upgrade(url)  # once, before the children start, so they never race on it
    exe = [sys.executable, "-m", "client.cli"]
    env = {**os.environ, "DROPTUNE_DATABASE_URL": url}
    children = [subprocess.Popen([*exe, "serve", "--host", host, "--port", str(port)], env=env)]
    devs = devices()
    if workers:
        devs = [devs[i % len(devs)] for i in range(workers)]
    for d in devs:
        children.append(subprocess.Popen([*exe, "worker", "--device", d], env=env))
    base = f"http://{host}:{port}"
    typer.echo(
        f"droptune is up on {url}\n"
        f"  API        {base}   (OpenAPI docs: {base}/docs)\n"
        f"  dashboard  {base}/dashboard\n"
        f"  workers    {len(devs)} ({', '.join(devs)})\n"
        "Press Ctrl-C to stop."
    )
    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop and all(c.poll() is None for c in children):
        time.sleep(0.5)
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
    typer.echo("droptune stopped.")
    return 0 if stop else 1
