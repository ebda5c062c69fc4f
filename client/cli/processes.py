"""`droptune serve`, `worker`, `up` and `db upgrade`: the commands that run droptune's own
processes (the server's and the worker's code is imported lazily: a client needs neither)."""

from __future__ import annotations

from typing import Annotated

import typer

from droptune.client import launch
from droptune.client.cli.common import DbOpt, need, one_line_errors
from droptune.core.escape import masked_url


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.command()(up)
    db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
    db_app.command("upgrade")(db_upgrade)
    app.add_typer(db_app, name="db")


InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure", help="serve a non-loopback address with no token (anyone may do anything)"
    ),
]


def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port", min=1, max=65535)] = None,
    database_url: DbOpt = None,
    insecure: InsecureOpt = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="API processes on the port (default: DROPTUNE_API_WORKERS, else 1)", min=1
        ),
    ] = None,
) -> None:
    """Run the API and the dashboard (migrates the database first)."""
    need("server")
    from droptune.service.settings import ServiceSettings

    with one_line_errors():
        settings = ServiceSettings.from_flags(
            host=host,
            port=port,
            database_url=database_url,
            insecure=insecure or None,
            api_workers=workers,
        )
        launch.serve(settings)


def worker(
    database_url: DbOpt = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads", min=1)] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="stop when the queue is empty")] = False,
) -> None:
    """Run a worker: claim trials, train them, report; SIGTERM stops it cleanly."""
    need("worker")
    from droptune.worker.run.settings import WorkerSettings

    with one_line_errors():
        settings = WorkerSettings.from_flags(
            database_url=database_url,
            device=device,
            threads=threads,
            # an absent flag is False, which must not hide DROPTUNE_EXIT_WHEN_IDLE=true
            exit_when_idle=exit_when_idle or None,
        )
        code = launch.worker(settings)
    raise typer.Exit(code)


def up(
    host: Annotated[
        str | None, typer.Option(help="bind address (default: DROPTUNE_HOST, else 127.0.0.1)")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="port (default: DROPTUNE_PORT, else 8000)", min=1, max=65535),
    ] = None,
    database_url: DbOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(help="workers (default: one per device; 0: none, they run elsewhere)", min=0),
    ] = None,
    insecure: InsecureOpt = False,
) -> None:
    """Start everything on one machine: API, dashboard, one worker per device."""
    need("server", "worker")
    from droptune.service.settings import ServiceSettings
    from droptune.worker.run.settings import WorkerSettings

    with one_line_errors():
        # a flag given wins over DROPTUNE_HOST / DROPTUNE_PORT, as with `serve`
        api = ServiceSettings.from_flags(
            host=host, port=port, database_url=database_url, insecure=insecure or None
        )
        code = launch.up(api, WorkerSettings.from_flags(database_url=database_url), workers)
    raise typer.Exit(code)


def db_upgrade(database_url: DbOpt = None) -> None:
    """Create or migrate droptune's tables (and Optuna's)."""
    need("database")
    from droptune.core.settings import StorageSettings
    from droptune.storage.sql.migrate import upgrade

    with one_line_errors():
        url = StorageSettings.from_flags(database_url=database_url).database_url
        upgrade(url)
    # masked: this line lands in logs (a Kubernetes init container's)
    typer.echo(f"database {masked_url(url)} is up to date")
