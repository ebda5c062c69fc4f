"""/studies/{id}/curve (JSON, SVG, PNG) and `droptune report`, on a real server and worker."""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from matplotlib.image import imread
from typer.testing import CliRunner

from droptune.client import Client
from droptune.client.cli.report import register
from droptune.core.answer.curve import Curve, CurvePoint, build_curve
from droptune.core.schemas import BestOut, Score, Tied, TrialOut
from droptune.core.spec.study import StudySpec
from droptune.service.routes.curve import draw
from tests import procs

NAME = "curve <b>&</b> $\\frac{$"  # markup for the page to escape, not mathtext to parse
SPEC = {
    "name": NAME,
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 4, "lr": 0.02},
    "cv": {"folds": 3},
    "search": {"n_trials": 10, "dropout_low": 0.0, "dropout_high": 0.95, "sampler": "random"},
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int]]:
    """A finished study and an empty (cancelled) one on a real API: (base URL, ids)."""
    tmp = tmp_path_factory.mktemp("curve")
    with procs.service(f"sqlite:///{tmp / 'droptune.db'}", tmp) as (base, _worker):
        with Client(base) as c:
            done = c.submit(SPEC).id
            assert c.best(done, wait=120).status == "succeeded"
            # Too long to finish a trial before the cancel: a study with nothing to draw.
            empty = c.submit({**SPEC, "name": None, "training": {"epochs": 1000}}).id
            c.cancel(empty)
        yield base, done, empty


@pytest.mark.slow
def test_json_points_match_trials(study: tuple[str, int, int]) -> None:
    base, done, _ = study
    with Client(base) as c:
        curve, trials, best = c.curve(done), c.trials(done), c.best(done)
    drawn = {t.number: t for t in trials if t.state in ("COMPLETE", "PRUNED")}
    assert [p.trial for p in curve.points] == sorted(
        drawn, key=lambda n: (drawn[n].params["dropout"], n)
    )
    for p in curve.points:
        t = drawn[p.trial]
        assert t.score is not None
        assert (p.state, p.dropout, p.mean, p.epochs) == (
            t.state,
            t.params["dropout"],
            t.score.mean,
            t.epochs,
        )
        assert p.se == pytest.approx(t.score.std / math.sqrt(3))
        assert p.p_vs_best == t.p_vs_best
    assert (curve.metric, curve.direction) == ("accuracy", "maximize")
    assert (curve.dropout_low, curve.dropout_high) == (0.0, 0.95)
    assert best.dropout is not None and curve.best == best.dropout
    assert curve.recommended == (best.recommended.dropout if best.recommended else None)
    # The fitted curve spans the searched range, its best rate's interval holds its maximum,
    # and its one-SE rate lies at or beyond the maximum.
    complete = {p.dropout for p in curve.points if p.state == "COMPLETE"}
    fit = curve.fit
    if len(complete) < 3:
        assert fit is None
    else:
        assert fit is not None
        assert (fit.rates[0], fit.rates[-1]) == (0.0, 0.95)
        assert fit.best_low <= fit.best <= fit.best_high and fit.recommended >= fit.best
        assert fit.mean[fit.rates.index(fit.best)] == max(fit.mean)


@pytest.mark.slow
def test_svg_has_one_error_bar_per_complete_trial(study: tuple[str, int, int]) -> None:
    base, done, _ = study
    r = httpx.get(f"{base}/studies/{done}/curve", params={"format": "svg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert "sandbox" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    root = ET.fromstring(r.content)
    assert root.tag == f"{SVG_NS}svg"
    ids = [e.get("id", "") for e in root.iter()]
    bars = [i for i in ids if i.startswith("errorbar-")]
    with Client(base) as c:
        complete = [t.number for t in c.trials(done) if t.state == "COMPLETE"]
    assert complete and sorted(bars) == sorted(f"errorbar-{n}" for n in complete)
    assert "dropout rate" in r.text and "<b>" not in r.text
    with Client(base) as c:
        fitted = c.curve(done).fit is not None
    assert ("fit-band" in ids) == fitted and ("fitted curve" in r.text) == fitted


@pytest.mark.slow
def test_png_decodes(study: tuple[str, int, int]) -> None:
    base, done, _ = study
    with Client(base) as c:
        png = c.curve(done, "png")
    assert png.startswith(PNG_SIGNATURE)
    image = imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


@pytest.mark.slow
def test_empty_study(study: tuple[str, int, int]) -> None:
    base, _, empty = study
    with Client(base) as c:
        assert c.curve(empty).points == []
        svg = c.curve(empty, "svg")
        assert imread(io.BytesIO(c.curve(empty, "png")), format="png").ndim == 3
    ET.fromstring(svg)
    assert b"no finished trials yet" in svg and b"errorbar-" not in svg


@pytest.mark.slow
def test_bad_format_and_unknown_study(study: tuple[str, int, int]) -> None:
    base, done, _ = study
    bad = httpx.get(f"{base}/studies/{done}/curve", params={"format": "gif"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"][0]["field"] == "format"
    missing = httpx.get(f"{base}/studies/999/curve", params={"format": "svg"})
    assert missing.status_code == 404 and missing.json()["detail"] == "study 999 not found"
    route = httpx.get(f"{base}/openapi.json").json()["paths"]["/studies/{study_id}/curve"]
    assert {"application/json", "image/svg+xml", "image/png"} <= set(
        route["get"]["responses"]["200"]["content"]
    )


@pytest.mark.slow
def test_report_page(study: tuple[str, int, int], tmp_path: Path) -> None:
    base, done, _ = study
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so `report` is named as on the real command line
    register(app)
    out = tmp_path / "report.html"
    r = CliRunner().invoke(app, ["report", str(done), "-o", str(out), "--url", base])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "<b>&</b>" not in page and "curve &lt;b&gt;&amp;&lt;/b&gt; $\\frac{$" in page
    assert f"study {done} on iris, succeeded" in page and "<b>recommended 0." in page
    svg = page[page.index("<svg") : page.index("</svg>") + 6]
    assert svg.count('id="errorbar-') >= 1
    ET.fromstring(svg)
    assert not re.search(r"""(src|href)=["']?https?:""", page) and "<script" not in page
    with Client(base) as c:
        numbers = [t.number for t in c.trials(done)]
    rows = re.findall(r"<tr><td>(\d+)</td>", page)
    assert [int(n) for n in rows] == numbers
    gone = CliRunner().invoke(app, ["report", "999", "-o", str(out), "--url", base])
    assert gone.exit_code == 1 and "404: study 999 not found" in gone.output


def _trial(number: int, state: str, rate: float, folds: list[float] | None) -> TrialOut:
    score = Score(mean=sum(folds) / len(folds), std=0.02, folds=folds) if folds else None
    return TrialOut(
        number=number,
        state=state,
        params={"dropout": rate},
        value=None,
        score=score,
        epochs=4,
        train_seconds=None,
        device=None,
        worker=None,
        attempt=0,
        reason=None,
        started_at=None,
        ended_at=None,
    )


def test_build_curve_without_the_answers_extras() -> None:
    """recommended, tied and p_vs_best may be None; FAIL, RUNNING and unscored trials are left
    out; a tied range marks its trials."""
    spec = StudySpec.model_validate({"dataset": {"builtin": "iris"}, "cv": {"folds": 4}})
    best = BestOut(
        study_id=7,
        dropout=0.2,
        params={"dropout": 0.2},
        score=None,
        metric="accuracy",
        direction="maximize",
        trial=1,
        one_se_dropout=0.5,
        one_se_trial=2,
        complete=False,
        status="running",
    )
    four = [0.9, 0.92, 0.94, 0.96]
    trials = [
        _trial(0, "FAIL", 0.1, None),
        _trial(1, "COMPLETE", 0.2, four),
        _trial(2, "COMPLETE", 0.5, four),
        _trial(3, "PRUNED", 0.05, [0.5, 0.6]),
        _trial(4, "RUNNING", 0.3, None),
        _trial(5, "PRUNED", 0.7, None),
    ]
    curve = build_curve(7, spec, best, trials)
    assert [(p.trial, p.state) for p in curve.points] == [
        (3, "PRUNED"),
        (1, "COMPLETE"),
        (2, "COMPLETE"),
    ]
    assert curve.points[1].se == pytest.approx(0.02 / 2)
    assert (curve.recommended, curve.tied_low, curve.tied_high) == (None, None, None)
    assert not any(p.tied for p in curve.points)
    tied = Tied(alpha=0.05, low=0.2, high=0.5, rates=[0.2, 0.5], trials=[1, 2])
    marked = build_curve(7, spec, best.model_copy(update={"tied": tied}), trials)
    assert [p.tied for p in marked.points] == [False, True, True]
    assert (marked.tied_low, marked.tied_high) == (0.2, 0.5)


def test_draw_keeps_pruned_apart() -> None:
    """Error bars for COMPLETE points only; PRUNED ones are one marker group, with a legend."""
    points = [
        CurvePoint(
            trial=n,
            dropout=0.1 * n,
            mean=0.9 - 0.01 * n,
            se=0.01,
            state=state,
            tied=False,
            p_vs_best=None,
            epochs=2 if state == "PRUNED" else 4,
        )
        for n, state in enumerate(["COMPLETE", "PRUNED", "COMPLETE", "PRUNED", "COMPLETE"])
    ]
    curve = Curve(
        study_id=1,
        metric="log_loss",
        direction="minimize",
        dropout_low=0.0,
        dropout_high=0.5,
        best=0.0,
        recommended=0.2,
        tied_low=0.0,
        tied_high=0.2,
        points=points,
    )
    svg = draw(curve, "a $\\frac{$ b", "svg")  # mathtext would refuse it: drawn as text
    ids = [e.get("id", "") for e in ET.fromstring(svg).iter()]
    assert sorted(i for i in ids if i.startswith("errorbar-")) == [
        "errorbar-0",
        "errorbar-2",
        "errorbar-4",
    ]
    assert ids.count("pruned") == 1
    for label in (b"pruned (fewer epochs)", b"best (0.00)", b"recommended (0.20)", b"tied with"):
        assert label in svg  # matplotlib writes each text as a comment beside its glyphs
    assert b"lower is better" in svg and b"a $\\frac{$ b" in svg
