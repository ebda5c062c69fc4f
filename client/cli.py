"""The `droptune` command line: run the service, submit studies, wait for the answer."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from pydantic import ValidationError

from droptune.client import launch
from droptune.client.api import DEFAULT_URL, Client, ClientError
from droptune.storage.errors import DroptuneError
from droptune.storage.schemas import ENDED, BestOut, DatasetOut, StudyOut

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="droptune: find the dropout rate that generalises best.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
dataset_app = typer.Typer(
    no_args_is_help=True, help="Your own data sets: upload once, tune dropout on them."
)
app.add_typer(dataset_app, name="dataset")

UrlOpt = Annotated[str, typer.Option("--url", envvar="DROPTUNE_URL", help="droptune API")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="overrides DROPTUNE_DATABASE_URL")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Bad settings (a database URL, a device) end as one line, not a traceback."""
    try:
        yield
    except ValidationError as exc:  # settings from DROPTUNE_* variables
        e = exc.errors()[0]
        name = "DROPTUNE_" + "_".join(str(p) for p in e["loc"]).upper()
        _fail(f"{name}={e.get('input')!r}: {e['msg']}")
    except (DroptuneError, ValueError) as exc:
        _fail(str(exc))


def _client(url: str) -> Client:
    try:
        return Client(url, token=os.environ.get("DROPTUNE_TOKEN"))
    except ClientError as exc:  # --url / DROPTUNE_URL is not a URL
        _fail(str(exc))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port", min=1, max=65535)] = None,
    database_url: DbOpt = None,
) -> None:
    """Run the API and the dashboard (migrates the database first)."""
    from droptune.service.settings import ServiceSettings

    with _one_line_errors():
        launch.serve(ServiceSettings.from_flags(host=host, port=port, database_url=database_url))


@app.command()
def worker(
    database_url: DbOpt = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads", min=1)] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="stop when the queue is empty")] = False,
) -> None:
    """Run a worker: claim trials, train them, report; SIGTERM stops it cleanly."""
    from droptune.worker.settings import WorkerSettings

    with _one_line_errors():
        settings = WorkerSettings.from_flags(
            database_url=database_url,
            device=device,
            threads=threads,
            # an absent flag is False, which must not hide DROPTUNE_EXIT_WHEN_IDLE=true
            exit_when_idle=exit_when_idle or None,
        )
        code = launch.worker(settings)
    raise typer.Exit(code)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 8000,
    database_url: DbOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(help="workers (default: one per device; 0: none, they run elsewhere)", min=0),
    ] = None,
) -> None:
    """Start everything on one machine: API, dashboard, one worker per device."""
    from droptune.service.settings import ServiceSettings
    from droptune.worker.settings import WorkerSettings

    with _one_line_errors():
        # --host and --port always have a value, so DROPTUNE_HOST and DROPTUNE_PORT never count
        api = ServiceSettings.from_flags(host=host, port=port, database_url=database_url)
        code = launch.up(api, WorkerSettings.from_flags(database_url=database_url), workers)
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(database_url: DbOpt = None) -> None:
    """Create or migrate droptune's tables (and Optuna's)."""
    from droptune.storage.migrate import upgrade
    from droptune.storage.settings import StorageSettings

    with _one_line_errors():
        url = StorageSettings.from_flags(database_url=database_url).database_url
        upgrade(url)
    typer.echo(f"database {url} is up to date")


def _spec_from(file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
            loaded = yaml.safe_load(text)  # JSON is YAML too
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            _fail(f"cannot read {file}: {' '.join(str(exc).split())}")
        if not isinstance(loaded, dict):
            _fail(f"{file} must hold one study spec (a mapping)")
        spec = loaded
    for path, value in flags.items():
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                _fail(f"`{p}` in the spec file must be a mapping to combine with --{leaf}")
        node[leaf] = value
    return spec


@app.command()
def submit(
    file: Annotated[Path | None, typer.Argument(help="a JSON or YAML spec file, or -")] = None,
    dataset: Annotated[str | None, typer.Option(help="builtin data set")] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="a CSV, NPZ or Parquet file: uploaded (or reused) first"),
    ] = None,
    dataset_id: Annotated[int | None, typer.Option(help="an uploaded data set's id", min=1)] = None,
    target: Annotated[str | None, typer.Option(help="with --data: the label column")] = None,
    task: Annotated[
        str | None, typer.Option(help="with --data: classification | regression")
    ] = None,
    name: Annotated[str | None, typer.Option()] = None,
    trials: Annotated[int | None, typer.Option(help="search.n_trials")] = None,
    epochs: Annotated[int | None, typer.Option(help="training.epochs")] = None,
    folds: Annotated[int | None, typer.Option(help="cv.folds")] = None,
    hidden: Annotated[str | None, typer.Option(help="hidden sizes, e.g. 256,256")] = None,
    model: Annotated[str | None, typer.Option("--model", help="mlp | cnn")] = None,
    dropout_range: Annotated[
        str | None, typer.Option(help="the rates searched, LOW,HIGH, e.g. 0.1,0.9")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="training.lr (Adam)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="training.batch_size")] = None,
    metric: Annotated[
        str | None, typer.Option(help="accuracy | log_loss | rmse | mae | r2")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe | random | grid")] = None,
    pruner: Annotated[str | None, typer.Option(help="none | median | hyperband")] = None,
    priority: Annotated[int | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Submit a study; prints its id."""
    try:
        sizes = [int(h) for h in hidden.split(",")] if hidden else None
    except ValueError:
        _fail(f"--hidden must be comma-separated integers, got {hidden!r}")
    if sum(x is not None for x in (dataset, data, dataset_id)) > 1:
        _fail("give one of --dataset, --data and --dataset-id")
    if (target or task) and data is None:
        _fail("--target and --task go with --data (an upload)")
    low = high = None
    if dropout_range is not None:
        try:
            low, high = (float(v) for v in dropout_range.split(","))
        except ValueError:
            _fail(f"--dropout-range must be LOW,HIGH (two numbers), got {dropout_range!r}")
    flags = {
        "dataset.builtin": dataset,
        "dataset.id": dataset_id,
        "model.kind": model,
        "search.dropout_low": low,
        "search.dropout_high": high,
        "training.lr": lr,
        "training.batch_size": batch_size,
        "name": name,
        "search.n_trials": trials,
        "training.epochs": epochs,
        "cv.folds": folds,
        "model.hidden": sizes,
        "cv.metric": metric,
        "search.sampler": sampler,
        "search.pruner": pruner,
        "priority": priority,
    }
    spec = _spec_from(file, flags)
    if data is not None:
        spec["dataset"] = {"id": 1}  # checked below; the real id comes from the upload
    if "dataset" not in spec:
        _fail(
            "a data set is needed: --data FILE, --dataset-id ID, --dataset NAME (built in) or "
            "a spec file with `dataset`"
        )
    from droptune.storage.spec import StudySpec, describe_errors

    try:
        StudySpec.model_validate(spec)  # the server checks too; this names the field sooner
    except ValidationError as exc:
        e = describe_errors(exc.errors())[0]
        _fail(f"invalid spec: {e['field']}: {e['message']}")
    with _client(url) as c:
        try:
            kept = ""
            if data is not None:
                ds = c.upload_dataset(data, target=target, task=task)
                spec["dataset"] = {"id": ds.id}
                typer.echo(f"data set {ds.id}{_reused(c)}: {_dataset_line(ds)}", err=True)
                kept = f" (data set {ds.id} is stored: fix the spec and use --dataset-id {ds.id})"
            study = c.submit(spec)
        except ClientError as exc:
            _fail(f"{exc}{kept}")
    typer.echo(study.model_dump_json(indent=2) if as_json else str(study.id))


def _show(study: StudyOut) -> str:
    p = study.progress
    line = (
        f"study {study.id}{f' {study.name}' if study.name else ''} [{study.status}] "
        f"{p.complete + p.pruned}/{p.n_trials} finished "
        f"(complete {p.complete}, pruned {p.pruned}, failed {p.failed}, running {p.running}"
        + (f", interrupted {p.interrupted})" if p.interrupted else ")")
    )
    if study.reason:
        line += f"\n  reason: {study.reason}"
    if study.best and study.best.score:
        line += "\n  " + _best_line(study.best)
    return line


def _best_line(b: BestOut) -> str:
    if b.score is None or b.dropout is None:
        return (
            f"no finished trial (the study ended {b.status})"
            if b.complete
            else ("no finished trial yet")
        )
    one_se = f"{b.one_se_dropout:.4f}" if b.one_se_dropout is not None else "-"
    return (
        f"best dropout {b.dropout:.4f}: {b.metric} {b.score.mean:.4f} ± {b.score.std:.4f} "
        f"(trial {b.trial}); one-SE rule recommends {one_se}" + ("" if b.complete else " (so far)")
    )


@app.command()
def status(study_id: int, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """A study's status, progress and best rate so far."""
    with _client(url) as c:
        try:
            study = c.get(study_id)
        except ClientError as exc:
            _fail(str(exc))
    typer.echo(study.model_dump_json(indent=2) if as_json else _show(study))


@app.command(name="list")
def list_(
    url: UrlOpt = DEFAULT_URL, state: Annotated[str | None, typer.Option("--status")] = None
) -> None:
    """List studies, newest first."""
    with _client(url) as c:
        try:
            page = c.list(status=state)
        except ClientError as exc:
            _fail(str(exc))
    if not page.items:
        what = f"no {state} studies" if state else "no studies yet"
        typer.echo(f"{what} (droptune submit … to start one)" if not state else what)
        return
    for s in page.items:
        data = s.spec.dataset
        on = data.builtin if data.builtin else f"data set {data.id}"
        b = s.best
        best_txt = (
            f"; best {b.dropout:.4f} ({b.metric} {b.score.mean:.4f})"
            if b and b.score and b.dropout is not None
            else ""
        )
        typer.echo(f"{_show(s).splitlines()[0]} on {on}{best_txt}")
    if page.total > len(page.items):
        typer.echo(f"… {page.total - len(page.items)} more (newest shown first)", err=True)


@app.command()
def best(
    study_id: int,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
    wait: Annotated[float, typer.Option(help="wait up to S seconds for the end", min=0)] = 0.0,
) -> None:
    """The best dropout rate (`--json` prints the /best body)."""
    with _client(url) as c:
        try:
            b = c.best(study_id, wait=wait)
        except ClientError as exc:
            _fail(str(exc))
    typer.echo(b.model_dump_json(indent=2) if as_json else _best_line(b))
    if b.dropout is None:  # no answer (yet): a script must not take this for one
        raise typer.Exit(2)


@app.command()
def wait(
    study_id: int,
    url: UrlOpt = DEFAULT_URL,
    timeout: Annotated[float, typer.Option(help="give up after S seconds (0: never)", min=0)] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Show a progress bar until the study ends, then print the best rate."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout if timeout else float("inf")
    with _client(url) as c:
        try:
            c.get(study_id)  # an unknown id or a wrong URL fails before any progress bar
        except ClientError as exc:
            _fail(str(exc))
    with (
        _client(url) as c,
        Progress(
            TextColumn("[bold]study {task.fields[sid]}[/] {task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
            transient=as_json,
            disable=not sys.stderr.isatty() and as_json,
        ) as bar,
    ):
        task = bar.add_task("", total=None, sid=study_id, state="", best="")
        seen = False
        while True:
            try:
                s = c.get(study_id)
            except ClientError as exc:
                transient = exc.status is None or exc.status in (502, 503, 504)
                if not transient or not seen:
                    _fail(str(exc))  # refused, or never reachable: a wrong URL, say
                # Reached before: the API or its database is restarting; keep polling.
                s = None
                why = "unreachable" if exc.status is None else f"answers {exc.status}"
                bar.update(task, state=f"API {why}, retrying")
            if s is not None:
                seen = True
                p = s.progress
                b = s.best
                best_txt = (
                    f"best {b.dropout:.3f} ({b.score.mean:.4f})"
                    if b and b.score and b.dropout is not None
                    else ""
                )
                bar.update(
                    task,
                    total=p.n_trials,
                    completed=p.complete + p.pruned,
                    state=s.status,
                    best=best_txt,
                )
                if s.status in ENDED:
                    break
            if time.monotonic() > deadline:
                bar.stop()
                typer.echo(
                    f"study {study_id} still {s.status if s else 'running'} after {timeout:g}s",
                    err=True,
                )
                raise typer.Exit(2)
            time.sleep(1.0)
        try:
            final = c.best(study_id)
        except ClientError as exc:
            _fail(str(exc))
    typer.echo(final.model_dump_json(indent=2) if as_json else _show(s))
    if s.status != "succeeded":
        raise typer.Exit(2)


def _dataset_line(d: DatasetOut) -> str:
    shape = f"images CxHxW {'x'.join(map(str, d.image_shape))}" if d.image_shape else None
    cols = f"{d.features} column{'s' if d.features != 1 else ''}"
    what = shape or cols + (f", target {d.target!r}" if d.target else "")
    task = d.task + (" (from the target)" if d.task_inferred else "")
    if d.classes is not None and d.class_counts is not None:
        pairs = [f"{c}: {n}" for c, n in zip(d.classes, d.class_counts, strict=True)]
        shown = ", ".join(pairs[:10]) + (f", … ({len(pairs)} in all)" if len(pairs) > 10 else "")
        task += f", {len(pairs)} classes ({shown})"
    elif d.target_mean is not None and d.target_std is not None:
        task += f", target mean {d.target_mean:.4g}, std {d.target_std:.4g}"
    return f"{d.name} [{d.format}] {d.rows} rows, {what}; {task}"


@dataset_app.command("upload")
def dataset_upload(
    file: Annotated[Path, typer.Argument(help="a CSV (with a header row), NPZ (X, y) or Parquet")],
    target: Annotated[
        str | None, typer.Option(help="the label column (default: `label`, else the last)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="default: the file's name")] = None,
    task: Annotated[
        str | None, typer.Option(help="classification | regression (default: from the target)")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Upload a data set (the same file again reuses it); prints its id and what was read."""
    with _client(url) as c:
        try:
            d = c.upload_dataset(file, target=target, name=name, task=task)
        except ClientError as exc:
            _fail(str(exc))
    if as_json:
        typer.echo(d.model_dump_json(indent=2))
        return
    typer.echo(f"{d.id}\t{_dataset_line(d)}")
    if c.last_status == 200:
        typer.echo(
            f"(these bytes were uploaded before as data set {d.id}, read the same way: reused)",
            err=True,
        )


def _reused(c: Client) -> str:
    return " (uploaded before: reused)" if c.last_status == 200 else ""


@dataset_app.command("list")
def dataset_list(
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """Your data sets, newest first."""
    with _client(url) as c:
        try:
            page = c.datasets(offset=offset, limit=limit)
        except ClientError as exc:
            _fail(str(exc))
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    if not page.items:
        typer.echo("no data sets" + (" here" if offset else " yet: droptune dataset upload FILE"))
    for d in page.items:
        typer.echo(f"{d.id}\t{_dataset_line(d)}")
    if page.total > offset + len(page.items):
        more = page.total - offset - len(page.items)
        typer.echo(f"… {more} more: --offset {offset + len(page.items)}", err=True)


@dataset_app.command("show")
def dataset_show(dataset_id: int, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """A data set's record: shape, task, columns, classes and the studies using it."""
    with _client(url) as c:
        try:
            d = c.dataset(dataset_id)
        except ClientError as exc:
            _fail(str(exc))
    if as_json:
        typer.echo(d.model_dump_json(indent=2))
        return
    lines = [f"data set {d.id}: {_dataset_line(d)}", f"  sha256 {d.sha256}, {d.bytes} bytes"]
    for col in d.columns:
        extra = f", {col.categories} categories" if col.categories is not None else ""
        missing = f", {col.missing} missing" if col.missing else ""
        lines.append(f"  {col.name}: {col.kind}{extra}{missing}")
    lines.append(f"  studies: {', '.join(map(str, d.studies)) or 'none'}")
    typer.echo("\n".join(lines))


@dataset_app.command("rm")
def dataset_rm(dataset_id: int, url: UrlOpt = DEFAULT_URL) -> None:
    """Delete a data set (refused while a queued or running study uses it)."""
    with _client(url) as c:
        try:
            c.delete_dataset(dataset_id)
        except ClientError as exc:
            _fail(str(exc))
    typer.echo(f"data set {dataset_id} deleted")


@app.command()
def cancel(study_id: int, url: UrlOpt = DEFAULT_URL) -> None:
    """Cancel a study: no new trials start, running ones stop at their next epoch."""
    with _client(url) as c:
        try:
            s = c.cancel(study_id)
        except ClientError as exc:
            _fail(str(exc))
    typer.echo(f"study {s.id} {s.status}")


@app.command()
def workers(
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
    include_stopped: Annotated[
        bool, typer.Option("--all", help="also workers that stopped cleanly")
    ] = False,
) -> None:
    """Live and lost workers (with --all, stopped ones too)."""
    with _client(url) as c:
        try:
            ws = c.workers(include_stopped)
        except ClientError as exc:
            _fail(str(exc))
    if as_json:
        typer.echo(json.dumps([w.model_dump(mode="json") for w in ws], indent=2))
        return
    for w in ws:
        typer.echo(
            f"{w.id} [{w.status}] {w.device} study={w.study_id} trials={w.trials} "
            f"heartbeat={w.heartbeat_at:%H:%M:%S}"
        )


def main() -> None:
    """Run the CLI; a usage error (a bad flag or value) is one line too, with exit status 1."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Click's usage errors (typer vendors its own click, so matched by their interface).
        fmt = getattr(exc, "format_message", None)
        if fmt is None or not hasattr(exc, "exit_code"):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `droptune`: the help is the answer
            typer.echo(fmt(), err=True)
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {' '.join(str(fmt()).split())}{hint}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
