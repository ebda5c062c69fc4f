"""`droptune serve`, `droptune worker`, `droptune up`: the processes of the service."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from droptune.core import logs

if TYPE_CHECKING:  # at run time imported where used: the client CLI needs neither package
    from droptune.service.settings import ServiceSettings
    from droptune.worker.run.settings import WorkerSettings


def serve(settings: ServiceSettings) -> None:
    import uvicorn

    from droptune.service.app import create_app
    from droptune.storage.sql.migrate import upgrade

    logs.configure()
    upgrade(settings.database_url)
    check_exposure(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "log_config": None,  # uvicorn's access and error lines go through logs.configure's
        "timeout_graceful_shutdown": 5,
    }
    if settings.api_workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Several processes: uvicorn starts each from an import string, and each reads its settings
    # back from the environment (the flags given included).
    env = settings.to_env()
    for name in set(os.environ) - set(env):
        del os.environ[name]
    os.environ.update(env)
    factory = "droptune.service.app:create_app_from_env"
    uvicorn.run(factory, factory=True, workers=settings.api_workers, **options)


def check_exposure(settings: ServiceSettings) -> None:
    """Refuse to serve a public address while no token exists (anyone reaching the port could
    submit, cancel and delete anything), unless --insecure says that is meant."""
    from droptune.service.middleware.auth import is_loopback
    from droptune.storage.access import tokens
    from droptune.storage.sql.db import create_engine

    if is_loopback(settings.host):
        return
    engine = create_engine(settings.database_url)
    try:
        exists = tokens.any_exist(engine)
    finally:
        engine.dispose()
    if exists:
        return
    if not settings.insecure:
        raise ValueError(
            f"refusing to serve on {settings.host!r} with no token: anyone who can reach the "
            "port could submit, cancel and delete every study. Create an admin token first "
            "(droptune token create --name NAME --admin), or pass --insecure to serve open"
        )
    logging.getLogger("droptune.api").warning(
        "serving %s with no token (--insecure): anyone who can reach port %d can submit, "
        "cancel and delete every study",
        settings.host,
        settings.port,
    )


def worker(settings: WorkerSettings) -> int:
    from droptune.storage.sql.migrate import upgrade
    from droptune.worker.run.loop import Worker, resolve_device

    logs.configure()
    resolve_device(settings.device)  # a device this machine lacks: refused before any write
    upgrade(settings.database_url)
    work = Worker(settings)
    logs.bind_process(worker=work.id)  # on every line, the heartbeat thread's too
    return work.run()


def devices() -> list[str]:
    """One worker per visible GPU, or one on the CPU."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def up(api_settings: ServiceSettings, worker_settings: WorkerSettings, workers: int | None) -> int:
    """API + dashboard + workers as child processes; Ctrl-C stops them all cleanly.

    The children read their settings back from the environment `to_env` gives them; their
    `--host` and `--port` flags come from `api_settings` (DROPTUNE_HOST / DROPTUNE_PORT unless
    `up`'s own flags were given), and each worker's `--device` from `devices()`, whatever
    DROPTUNE_DEVICE says."""
    from droptune.storage.sql.migrate import upgrade

    logs.configure()  # its children inherit DROPTUNE_LOG_FORMAT and configure their own
    url, host, port = api_settings.database_url, api_settings.host, api_settings.port
    _check_port_free(host, port)
    upgrade(url)  # once, before the children start, so they never race on it
    check_exposure(api_settings)  # before any child starts
    others = _live_workers(url, api_settings)
    if others:
        typer.echo(_joins(others), err=True)
    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exe = [sys.executable, "-m", "droptune.client.cli.main"]
    serve_argv = [*exe, "serve", "--host", host, "--port", str(port)]
    children = [subprocess.Popen(serve_argv, env=api_settings.to_env())]
    devs = devices()
    if workers is not None:  # 0: the API and dashboard only, workers run elsewhere
        devs = [devs[i % len(devs)] for i in range(workers)]
    for d in devs:
        env = worker_settings.model_copy(update={"device": d}).to_env()
        children.append(subprocess.Popen([*exe, "worker", "--device", d], env=env))
    base = base_url(host, port)
    if not _wait_healthy(base, children[0], lambda: stop):
        if stop:
            _stop_all(children)
            typer.echo("droptune stopped.")
            return 0
        typer.echo(
            f"error: the API did not start on {host}:{port} (is the port in use? see above)",
            err=True,
        )
        _stop_all(children)
        return 1
    # The banner says "up" once the workers are too (they load torch and register).
    started = _wait_workers(url, api_settings, len(devs), children[1:], lambda: stop, others)
    typer.echo(_banner(url, base, devs, started, others))
    while not stop and all(c.poll() is None for c in children):
        time.sleep(0.5)
    if not stop:
        dead = next(c for c in children if c.poll() is not None)
        what = "the API" if dead is children[0] else "a worker"
        typer.echo(f"error: {what} exited with status {dead.returncode}; stopping", err=True)
    _stop_all(children)
    typer.echo("droptune stopped.")
    return 0 if stop else 1


def _joins(others: int) -> str:
    return (
        f"note: {others} worker{'s are' if others > 1 else ' is'} already live on this database "
        "(another droptune up or droptune worker): this one joins them, and a study may run "
        "on any of them"
    )


RULE = "=" * 72  # the banner stands apart from the log lines around it


def _banner(url: str, base: str, devs: list[str], started: bool, others: int = 0) -> str:
    joined = f"\n  also       {_joins(others).removeprefix('note: ')}" if others else ""
    return (
        f"{RULE}\n"
        f"droptune is up on {url}\n"
        f"  API        {base}   (OpenAPI docs: {base}/docs)\n"
        f"  dashboard  {base}/dashboard\n"
        f"  workers    {len(devs)} ({', '.join(devs) or 'none: run droptune worker elsewhere'})"
        f"{'' if started else ' (still starting)'}{joined}\n"
        f"Press Ctrl-C to stop.\n{RULE}"
    )


def _live_workers(url: str, settings: ServiceSettings) -> int:
    """Workers already live on the database (another `up`'s, or `droptune worker`s)."""
    from droptune.core.errors import StorageError
    from droptune.storage.jobs import registry
    from droptune.storage.sql.db import create_engine

    engine = create_engine(url)
    try:
        return registry.count_live(engine, settings.lease_grace_seconds)
    except StorageError:
        return 0
    finally:
        engine.dispose()


def _check_port_free(host: str, port: int) -> None:
    """Bind where uvicorn will (IPv4 or IPv6, as the host resolves) and let go at once."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(addr)
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def base_url(host: str, port: int) -> str:
    """The URL a local client reaches a server bound to host:port by: a wildcard host is
    reached on loopback, an IPv6 literal goes in brackets."""
    local = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"


def _wait_healthy(
    base: str, api: subprocess.Popen[bytes], stopped: Callable[[], bool], timeout: float = 60.0
) -> bool:
    """Wait until the API answers /healthz; False if it exits first, never answers, or Ctrl-C."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and api.poll() is None and not stopped():
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _wait_workers(
    url: str,
    settings: ServiceSettings,
    n: int,
    workers: list[subprocess.Popen[bytes]],
    stopped: Callable[[], bool],
    others: int = 0,
    timeout: float = 60.0,
) -> bool:
    """Wait until `n` live workers are registered beside the `others` live before (read from the
    database: the API may need a token); False if one exits, time runs out or Ctrl-C."""
    from droptune.core.errors import StorageError
    from droptune.storage.jobs import registry
    from droptune.storage.sql.db import create_engine

    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while n and time.monotonic() < deadline and not stopped():
            if any(w.poll() is not None for w in workers):
                return False
            try:
                if registry.count_live(engine, settings.lease_grace_seconds) >= n + others:
                    return True
            except StorageError:
                pass
            time.sleep(0.2)
    finally:
        engine.dispose()
    return n == 0


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
