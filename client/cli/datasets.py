"""`droptune dataset upload|list|show|rm`: your own data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from droptune.client.api import DEFAULT_URL, Client, ClientError
from droptune.client.cli.common import JsonOpt, UrlOpt, ask, client, fail
from droptune.core.escape import safe
from droptune.core.schemas import DatasetOut

dataset_app = typer.Typer(
    no_args_is_help=True, help="Your own data sets: upload once, tune dropout on them."
)


def dataset_line(d: DatasetOut) -> str:
    """The data set on one line, escaped (`safe`): its name, target and class labels are the
    uploader's, and could hold a terminal's escape sequences."""
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
    return safe(f"{d.name} [{d.format}] {d.rows} rows, {what}; {task}")


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
    with client(url) as c:
        try:
            d = c.upload_dataset(file, target=target, name=name, task=task)
        except ClientError as exc:
            fail(str(exc))
    if as_json:
        typer.echo(d.model_dump_json(indent=2))
        return
    typer.echo(f"{d.id}\t{dataset_line(d)}")
    if c.last_status == 200:
        typer.echo(
            f"(these bytes were uploaded before as data set {d.id}, read the same way: reused)",
            err=True,
        )


def reused(c: Client) -> str:
    return " (uploaded before: reused)" if c.last_status == 200 else ""


@dataset_app.command("list")
def dataset_list(
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """Your data sets, newest first."""
    page = ask(url, lambda c: c.datasets(offset=offset, limit=limit))
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    if not page.items:
        typer.echo("no data sets" + (" here" if offset else " yet: droptune dataset upload FILE"))
    for d in page.items:
        typer.echo(f"{d.id}\t{dataset_line(d)}")
    if page.total > offset + len(page.items):
        more = page.total - offset - len(page.items)
        typer.echo(f"… {more} more: --offset {offset + len(page.items)}", err=True)


@dataset_app.command("show")
def dataset_show(dataset_id: int, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """A data set's record: shape, task, columns, classes and the studies using it."""
    d = ask(url, lambda c: c.dataset(dataset_id))
    if as_json:
        typer.echo(d.model_dump_json(indent=2))
        return
    lines = [f"data set {d.id}: {dataset_line(d)}", f"  sha256 {d.sha256}, {d.bytes} bytes"]
    for col in d.columns:
        extra = f", {col.categories} categories" if col.categories is not None else ""
        missing = f", {col.missing} missing" if col.missing else ""
        lines.append("  " + safe(f"{col.name}: {col.kind}{extra}{missing}"))
    lines.append(f"  studies: {', '.join(map(str, d.studies)) or 'none'}")
    typer.echo("\n".join(lines))


@dataset_app.command("rm")
def dataset_rm(dataset_id: int, url: UrlOpt = DEFAULT_URL) -> None:
    """Delete a data set (refused while a queued or running study uses it)."""
    ask(url, lambda c: c.delete_dataset(dataset_id))
    typer.echo(f"data set {dataset_id} deleted")
