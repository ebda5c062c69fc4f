"""`droptune model ID -o FILE`: download the refit model of a study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from droptune.client.api import DEFAULT_URL
from droptune.client.cli.common import UrlOpt, ask


def model(
    study_id: Annotated[int, typer.Argument(help="the study's id")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="where to save the .pt2 file")
    ] = None,
    best: Annotated[
        bool, typer.Option("--best", help="the best rate's model instead of the recommended one")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Download the model the final refit trained (a torch.export .pt2 file).

    Load it with torch alone: `torch.export.load(FILE, extra_files={"droptune.json": ""})`;
    see the README's "The model to take home".
    """
    which = "best" if best else "recommended"
    path = ask(url, lambda c: c.download_model(study_id, output, which=which))
    typer.echo(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB)")


def register(app: typer.Typer) -> None:
    app.command("model")(model)
