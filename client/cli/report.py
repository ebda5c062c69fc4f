"""`droptune report ID -o report.html`: a study on one self-contained page.

The page holds the answer, the curve (the API's SVG, inlined) and the trials, with no script and
no external address, so it can be mailed or archived as one file. Every string in it came from
a user (names, options, warnings, reasons) or from the server: each is escaped, the SVG is
rewritten from an allowlist (report_svg), and the page's Content-Security-Policy forbids
scripts and fetches anyway, should something slip through.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Annotated

import typer

from droptune.client.api import DEFAULT_URL, Client, ClientError
from droptune.client.cli.common import UrlOpt, ask, fail
from droptune.client.cli.report_svg import clean_svg
from droptune.core.answer.rates import primary_rate
from droptune.core.answer.text import view_lines
from droptune.core.answer.view import answer_view
from droptune.core.escape import safe
from droptune.core.schemas import BestOut, StudyOut, TrialOut
from droptune.core.spec.model import CNNModel, CustomModel
from droptune.core.spec.study import DatasetSpec, StudySpec

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.5em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; } td.state { text-align: left; }
.warning { color: #a33; } .muted { color: #777; }
svg { max-width: 100%; height: auto; }
"""
# Inline styles only (STYLE and the SVG's): no script, no fetch, no form, no frame.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _answer(b: BestOut | None) -> list[str]:
    """The answer as list items (escaped): the CLI's lines, the recommended rate first."""
    if b is None:
        return ["no finished trial yet"]
    lines = view_lines(answer_view(b))
    lines = [x for x in lines if x[0] == "recommended"] + [
        x for x in lines if x[0] != "recommended"
    ]
    items = []
    for kind, line in lines:
        text = escape(safe(line))
        if kind == "recommended":
            head, _, rest = text.partition(": ")
            text = f"<b>{head}</b>: {rest}"
        elif kind == "warning":
            text = f'<span class="warning">{text}</span>'
        items.append(text)
    return items


def _trial_row(t: TrialOut) -> str:
    rate = primary_rate(t.params)
    score = "—"
    if t.score is not None and t.score.folds:
        score = f"{t.score.mean:.4f} ± {t.score.se:.4f}"
    cells = [str(t.number), escape(safe(t.state)), _fmt(rate), score, _fmt(t.p_vs_best, 3)]
    cells.append("—" if t.epochs is None else str(t.epochs))
    tds = "".join(
        f'<td class="state">{c}</td>' if i == 1 else f"<td>{c}</td>" for i, c in enumerate(cells)
    )
    return f"<tr>{tds}</tr>"


def _setup(spec: StudySpec) -> str:
    """What was searched, in one line (HTML, escaped)."""
    m, s = spec.model, spec.search
    if isinstance(m, CustomModel):
        # The options' strings are the user's (up to 200 characters each): escaped like the rest.
        layers = f"custom model {m.name}" + (f" {m.options}" if m.options else "")
    else:
        layers = f"{m.kind.upper()}, hidden {m.hidden}"
        if isinstance(m, CNNModel):
            layers += f", channels {m.conv_channels}"
    layers = escape(safe(layers))
    folds = f"{spec.cv.folds}-fold CV" + (f" x {spec.cv.repeats}" if spec.cv.repeats > 1 else "")
    per_layer = ", one rate per layer" if s.per_layer else ""
    return (
        f"{layers}, {spec.training.epochs} epochs, {folds}; dropout searched in "
        f"{s.dropout_low:.2f}&ndash;{s.dropout_high:.2f} ({s.sampler}{per_layer})"
    )


def render(
    study: StudyOut, best: BestOut | None, trials: list[TrialOut], svg: bytes, data_name: str
) -> str:
    """The page (every string from the study escaped: for HTML, and its control characters
    spelled out, which HTML does not allow)."""
    name = safe(study.name or f"study {study.id}")
    p = study.progress
    status = safe(f"{study.status}" + (f": {study.reason}" if study.reason else ""))
    data_name = safe(data_name)
    answer = "".join(f"<li>{item}</li>" for item in _answer(best))
    head = ["trial", "state", "dropout", "mean ± SE", "p vs best", "epochs"]
    rows = "\n".join(_trial_row(t) for t in trials)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<title>droptune: {escape(name)}</title><style>{STYLE}</style></head>
<body>
<h1>{escape(name)}</h1>
<p>study {study.id} on {escape(data_name)}, {escape(status)};
{p.complete} complete, {p.pruned} pruned, {p.failed} failed of {p.n_trials} trials</p>
<p>{_setup(study.spec)}</p>
<h2>The answer</h2>
<ul>{answer}</ul>
<h2>The curve</h2>
{clean_svg(svg)}
<h2>Trials</h2>
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>
{rows}
</tbody></table>
<p class="muted">pruned trials trained fewer epochs: their scores are not comparable.</p>
</body></html>
"""


def _data_name(c: Client, spec: DatasetSpec) -> str:
    if spec.id is None:
        return spec.builtin or ""
    try:
        return f"data set {spec.id} ({c.dataset(spec.id).name})"
    except ClientError as exc:
        if exc.status != 404:
            raise
        return f"data set {spec.id} (deleted)"


def _fetch(c: Client, study_id: int) -> str:
    study = c.get(study_id)
    best = study.best or c.best(study_id)
    svg = c.curve(study_id, "svg")
    return render(study, best, c.trials(study_id), svg, _data_name(c, study.spec.dataset))


def report(
    study_id: int,
    output: Annotated[Path, typer.Option("--output", "-o", help="the HTML file to write")],
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Write one self-contained HTML page: the answer, the dropout curve and the trials."""
    page = ask(url, lambda c: _fetch(c, study_id))
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Adds `droptune report` to the command line."""
    app.command()(report)
