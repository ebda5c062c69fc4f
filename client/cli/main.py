"""The `droptune` command line: run the service, submit studies, wait for the answer."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from droptune.client.api import DEFAULT_URL, ClientError
from droptune.client.cli import follow as cli_follow
from droptune.client.cli import model as cli_model
from droptune.client.cli import processes as cli_processes
from droptune.client.cli import report as cli_report
from droptune.client.cli.common import (
    JsonOpt,
    UrlOpt,
    ask,
    client,
    fail,
)
from droptune.client.cli.datasets import dataset_app, dataset_line, reused
from droptune.client.cli.tokens import token_app
from droptune.core.answer.text import answer_lines
from droptune.core.escape import safe
from droptune.core.schemas import StudyOut
from droptune.core.states import StudyStatus

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="droptune: find the dropout rate that generalises best.",
)
app.add_typer(dataset_app, name="dataset")
app.add_typer(token_app, name="token")
cli_processes.register(app)
cli_model.register(app)
cli_report.register(app)


def _spec_from(file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
            loaded = yaml.safe_load(text)  # JSON is YAML too
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            fail(f"cannot read {file}: {' '.join(str(exc).split())}")
        if not isinstance(loaded, dict):
            fail(f"{file} must hold one study spec (a mapping)")
        spec = loaded
    for path, value in flags.items():
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                fail(f"`{p}` in the spec file must be a mapping to combine with --{leaf}")
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
    repeats: Annotated[int | None, typer.Option(help="cv.repeats: reshuffles of the folds")] = None,
    holdout: Annotated[
        float | None, typer.Option(help="evaluation.holdout: the fraction scored once at the end")
    ] = None,
    test_dataset: Annotated[
        int | None, typer.Option(help="evaluation.test_dataset: an uploaded data set's id", min=1)
    ] = None,
    hidden: Annotated[str | None, typer.Option(help="hidden sizes, e.g. 256,256")] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="mlp | cnn, or a custom model's name (droptune models)"),
    ] = None,
    dropout_range: Annotated[
        str | None, typer.Option(help="the rates searched, LOW,HIGH, e.g. 0.1,0.9")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="training.lr (Adam)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="training.batch_size")] = None,
    metric: Annotated[
        str | None, typer.Option(help="accuracy | log_loss | rmse | mae | r2")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="droptune (default) | optuna: the search's sampler, pruner and stop"),
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe | gp | random | grid | design")] = None,
    pruner: Annotated[str | None, typer.Option(help="none | median | hyperband | paired")] = None,
    priority: Annotated[int | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Submit a study; prints its id."""
    sizes = _numbers(hidden, "--hidden", int)
    bounds = _numbers(dropout_range, "--dropout-range", float, count=2)
    if sum(x is not None for x in (dataset, data, dataset_id)) > 1:
        fail("give one of --dataset, --data and --dataset-id")
    if (target or task) and data is None:
        fail("--target and --task go with --data (an upload)")
    # A name that is not a built-in kind is a registered (custom) model.
    custom = model is not None and model not in ("mlp", "cnn", "custom")
    flags = {
        "dataset.builtin": dataset,
        "dataset.id": dataset_id,
        "model.kind": "custom" if custom else model,
        "model.name": model if custom else None,
        "search.dropout_low": bounds[0] if bounds else None,
        "search.dropout_high": bounds[1] if bounds else None,
        "training.lr": lr,
        "training.batch_size": batch_size,
        "name": name,
        "search.n_trials": trials,
        "training.epochs": epochs,
        "cv.folds": folds,
        "cv.repeats": repeats,
        "evaluation.holdout": holdout,
        "evaluation.test_dataset": test_dataset,
        "model.hidden": sizes,
        "cv.metric": metric,
        "search.strategy": strategy,
        "search.sampler": sampler,
        "search.pruner": pruner,
        "priority": priority,
    }
    spec = _spec_from(file, flags)
    _check_spec(spec, upload=data is not None)
    study = _send(url, spec, data, target, task)
    typer.echo(study.model_dump_json(indent=2) if as_json else str(study.id))


def _numbers(
    text: str | None, flag: str, kind: type[int] | type[float], count: int | None = None
) -> list[Any] | None:
    """A comma-separated flag's numbers (None when the flag was not given)."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or (count is not None and len(values) != count):
        shape = "LOW,HIGH (two numbers)" if count == 2 else "comma-separated integers"
        fail(f"{flag} must be {shape}, got {text!r}")
    return values


def _check_spec(spec: dict[str, Any], *, upload: bool) -> None:
    """The spec as the server will check it, so a mistake names its field before any upload."""
    from droptune.core.spec.strict import describe_errors
    from droptune.core.spec.study import StudySpec

    if upload:
        spec = {**spec, "dataset": {"id": 1}}  # the real id comes from the upload
    if "dataset" not in spec:
        fail(
            "a data set is needed: --data FILE, --dataset-id ID, --dataset NAME (built in) or "
            "a spec file with `dataset`"
        )
    try:
        StudySpec.model_validate(spec)
    except ValidationError as exc:
        e = describe_errors(exc.errors())[0]
        fail(f"invalid spec: {e['field']}: {e['message']}")


def _send(
    url: str, spec: dict[str, Any], data: Path | None, target: str | None, task: str | None
) -> StudyOut:
    """Upload `data` first if given (reusing the stored data set for the same bytes), then
    submit; a refused spec after an upload says which data set to reuse."""
    with client(url) as c:
        kept = ""
        try:
            if data is not None:
                ds = c.upload_dataset(data, target=target, task=task)
                spec["dataset"] = {"id": ds.id}
                typer.echo(f"data set {ds.id}{reused(c)}: {dataset_line(ds)}", err=True)
                kept = f" (data set {ds.id} is stored: fix the spec and use --dataset-id {ds.id})"
            return c.submit(spec)
        except ClientError as exc:
            fail(f"{exc}{kept}")


def _show(study: StudyOut) -> str:
    p = study.progress
    line = (
        f"study {study.id}{f' {safe(study.name)}' if study.name else ''} [{safe(study.status)}] "
        f"{p.complete + p.pruned}/{p.n_trials} finished "
        f"(complete {p.complete}, pruned {p.pruned}, failed {p.failed}, running {p.running}"
        + (f", interrupted {p.interrupted})" if p.interrupted else ")")
    )
    if study.reason:
        line += f"\n  reason: {safe(study.reason)}"
    if study.best and study.best.score:
        line += "".join(f"\n  {text}" for text in answer_lines(study.best))
    return line


@app.command()
def status(study_id: int, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """A study's status, progress and best rate so far."""
    study = ask(url, lambda c: c.get(study_id))
    typer.echo(study.model_dump_json(indent=2) if as_json else _show(study))


@app.command(name="list")
def list_(
    url: UrlOpt = DEFAULT_URL,
    state: Annotated[str | None, typer.Option("--status")] = None,
    owner: Annotated[str | None, typer.Option(help="admins: only this owner's studies")] = None,
    limit: Annotated[int, typer.Option(help="at most this many", min=1, max=500)] = 50,
) -> None:
    """List studies, newest first (an admin sees every owner's, each marked with its owner)."""
    page = ask(url, lambda c: c.list(status=state, limit=limit, owner=owner))
    owners = {s.owner for s in page.items}
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
        if b and b.recommended:
            best_txt += f", recommended {b.recommended.dropout:.4f} ({b.recommended.rule})"
        # Once there are accounts (owners other than open mode's `local`), say whose it is.
        by = f" by {safe(s.owner)}" if owners != {"local"} else ""
        typer.echo(f"{_show(s).splitlines()[0]}{by} on {on}{best_txt}")
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
    b = ask(url, lambda c: c.best(study_id, wait=wait))
    typer.echo(b.model_dump_json(indent=2) if as_json else "\n".join(answer_lines(b)))
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
    first = ask(url, lambda c: c.get(study_id))  # an unknown id or a wrong URL: before any bar
    deadline = time.monotonic() + timeout if timeout else float("inf")
    with client(url) as c, cli_follow.progress_bar(quiet=as_json) as bar:
        s, state = cli_follow.follow(c, first, bar, deadline)
        if s is None:
            bar.stop()
            typer.echo(f"study {study_id} still {state} after {timeout:g}s", err=True)
            raise typer.Exit(2)
        try:
            final = c.best(study_id)
        except ClientError as exc:
            fail(str(exc))
    # The final /best, not the last poll's: it carries what was settled after (the test score).
    typer.echo(
        final.model_dump_json(indent=2) if as_json else _show(s.model_copy(update={"best": final}))
    )
    if s.status != StudyStatus.SUCCEEDED.value:
        raise typer.Exit(2)


@app.command()
def cancel(study_id: int, url: UrlOpt = DEFAULT_URL) -> None:
    """Cancel a study: no new trials start, running ones stop at their next epoch."""
    s = ask(url, lambda c: c.cancel(study_id))
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
    ws = ask(url, lambda c: c.workers(include_stopped))
    if as_json:
        typer.echo(json.dumps([w.model_dump(mode="json") for w in ws], indent=2))
        return
    for w in ws:
        typer.echo(
            f"{safe(w.id)} [{w.status}] {safe(w.device)} study={w.study_id} trials={w.trials} "
            f"heartbeat={w.heartbeat_at:%H:%M:%S}"
        )


@app.command()
def models(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The custom models workers can build (model.kind custom), with the workers that have each."""
    found = ask(url, lambda c: c.models())
    if as_json:
        typer.echo(json.dumps([m.model_dump(mode="json") for m in found], indent=2))
        return
    if not found:
        typer.echo(
            "no custom models: install a package with droptune.models entry points on a "
            "worker, or set DROPTUNE_MODELS (README: Your own models)"
        )
        return
    for m in found:
        live = f"{len(m.workers)} live worker(s)" if m.workers else "no live worker"
        recent = f", {len(m.recent_workers)} seen this week" if m.recent_workers else ""
        typer.echo(f"{safe(m.name)}\t{live}{recent}")


@app.command("rm")
def rm(study_id: int, url: UrlOpt = DEFAULT_URL) -> None:
    """Delete an ended study with its trials and models (cancel a queued or running one first)."""
    ask(url, lambda c: c.delete_study(study_id))
    typer.echo(f"study {study_id} deleted")


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
