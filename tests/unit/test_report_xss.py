"""`droptune report`'s page with hostile strings in every field a user fills in: the page shows
them as text, and no script of theirs runs in Chromium. The page is built from synthetic API
answers (as `_fetch` would get them) and a real curve SVG from the API's drawing code."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import pytest

from droptune.client.cli.report import render
from droptune.core.answer.curve import Curve, CurvePoint
from droptune.core.schemas import BestOut, Progress, Recommended, Score, StudyOut, TrialOut
from droptune.core.spec.study import StudySpec
from droptune.service.routes.curve import draw
from tests.html_audit import MARK, PAYLOADS, RUN, browser_dom, every_payload, hostile, problems

SVG_TAGS = {"svg", "g", "path", "defs", "use", "clippath", "rect", "style"}
REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "ul", "li"}
REPORT_TAGS |= {"b", "span", "table", "thead", "tbody", "tr", "th", "td"} | SVG_TAGS
# What a hostile (or broken) server could send as the curve: every way an SVG runs a script,
# loads an address or breaks out of its attribute.
HOSTILE_SVG = f"""<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"
 onload="{RUN}" width="100" height="100" viewBox="0 0 100 100">
<script>{RUN}</script>
<script><![CDATA[{RUN}]]></script>
<style>@import url(https://evil.example/x.css); *{{fill: red}}</style>
<g id="errorbar-1" onclick="{RUN}"><path d="M 0 0 L 9 9" style="fill: url(https://evil.example/a)"/>
<path d="M 1 1 L 5 5" style="fill: #0072B2; clip-path: url(#p1)"/></g>
<g id="&quot;&gt;&lt;img src=x onerror=&quot;{RUN}&quot;&gt;"/>
<a xlink:href="javascript:{RUN}"><rect width="10" height="10"/></a>
<use xlink:href="https://evil.example/s.svg#x"/><use href="javascript:{RUN}"/>
<foreignObject><body xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="{RUN}"/></body>
</foreignObject>
<animate attributeName="href" to="javascript:{RUN}"/><set attributeName="onload" to="{RUN}"/>
<image href="x" onerror="{RUN}"/>
<rect width="5" height="5"><title>{escape(PAYLOADS[0])}</title></rect>
</svg>""".encode()


def _spec() -> StudySpec:
    """A custom model's spec: its options (strings up to 200 characters) are the one free text
    in a spec besides the name."""
    options = {f"opt{i}": p for i, p in enumerate(PAYLOADS)}
    model = {"kind": "custom", "name": "hostile.model", "options": options}
    return StudySpec.model_validate({"name": "x", "dataset": {"id": 3}, "model": model})


def _trial(n: int, state: str) -> TrialOut:
    return TrialOut(
        number=n,
        state=state,
        params={"dropout": 0.1 * n},
        value=0.9,
        score=Score(mean=0.9, std=0.01, folds=[0.89, 0.9, 0.91]),
        epochs=4,
        train_seconds=1.0,
        device=hostile(n + 1),
        worker=hostile(n + 2),
        attempt=0,
        reason=hostile(n + 3),
        started_at=None,
        ended_at=None,
    )


def inputs() -> tuple[StudyOut, BestOut, list[TrialOut], str]:
    """A study, its answer and trials with a payload in every string, and a data set name."""
    best = BestOut(
        study_id=7,
        dropout=0.1,
        params={"dropout": 0.1},
        score=Score(mean=0.9, std=0.01, folds=[0.89, 0.9, 0.91]),
        metric=hostile(4),
        direction="maximize",
        trial=1,
        one_se_dropout=0.3,
        one_se_trial=3,
        complete=True,
        status="succeeded",
        recommended=Recommended(dropout=0.3, rule="one_se", trial=3, why=every_payload()),
        warnings=list(PAYLOADS),
    )
    progress = Progress(n_trials=20, complete=3, pruned=0, failed=0, running=0)
    study = StudyOut(
        id=7,
        name=every_payload(),
        status="failed",
        reason=f"column {hostile(5)} of class {hostile(6)}: {every_payload()}",
        priority=0,
        owner=hostile(7),
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        started_at=None,
        ended_at=None,
        optuna_study=hostile(8),
        spec=_spec(),
        progress=progress,
    )
    trials = [_trial(n, hostile(n)) for n in range(len(PAYLOADS))]
    return study, best, trials, f"data set 3 ({every_payload()})"


def curve_svg() -> bytes:
    """The API's SVG of a curve whose study name and metric are payloads."""
    points = [
        CurvePoint(
            trial=n,
            dropout=0.1 * n,
            mean=0.9,
            se=0.01,
            state="COMPLETE",
            tied=False,
            p_vs_best=None,
            epochs=4,
        )
        for n in range(3)
    ]
    curve = Curve(
        study_id=7,
        name=every_payload(),
        metric=every_payload()[:80],
        direction="maximize",
        dropout_low=0.0,
        dropout_high=0.9,
        best=0.1,
        recommended=0.3,
        tied_low=None,
        tied_high=None,
        points=points,
    )
    return draw(curve, every_payload()[:80], "svg")


def page(svg: bytes | None = None) -> str:
    study, best, trials, data_name = inputs()
    return render(study, best, trials, curve_svg() if svg is None else svg, data_name)


def test_hostile_fields_are_text_in_the_page() -> None:
    """Static: no element or attribute of the page came from a payload, and every payload is
    on the page as text (the custom model's options included)."""
    html = page()
    assert problems(html, REPORT_TAGS) == []
    for p in PAYLOADS:
        if "\u2028" not in p:  # spelled out as `\u2028` in the page (a control character)
            assert escape(p) in html
    assert html.count(escape(PAYLOADS[0])) >= 4  # name, options, why, warning at least


def test_a_hostile_curve_svg_is_cleaned() -> None:
    """The curve comes from the server: inlined, it keeps only drawing elements, local
    references and no handler, whatever the server sent."""
    html = page(HOSTILE_SVG)
    assert problems(html, REPORT_TAGS) == []
    svg = html[html.index("<svg") : html.index("</svg>") + 6]
    assert 'id="errorbar-1"' in svg and "clip-path: url(#p1)" in svg
    assert "evil.example" not in svg and "@import" not in svg


@pytest.mark.parametrize("svg", [b"<svg><g></svg>", b"no picture", b"<!DOCTYPE svg [<!ENTITY"])
def test_a_broken_curve_svg_is_left_out(svg: bytes) -> None:
    html = page(svg)
    assert "<svg" not in html and "the curve could not be shown" in html
    assert problems(html, REPORT_TAGS) == []


def test_no_script_runs_in_chromium(tmp_path: Path) -> None:
    """Live: Chromium loads the page (the real curve and the hostile one) and no payload's
    script runs, with the page's Content-Security-Policy and without it (so the escaping alone
    holds). A page with one payload left raw does run it: the check can see a script run."""
    for i, svg in enumerate([None, HOSTILE_SVG]):
        html = page(svg)
        bare = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
        assert bare != html  # the page has a policy
        for j, text in enumerate([html, bare]):
            file = tmp_path / f"report-{i}-{j}.html"
            file.write_text(text, encoding="utf-8")
            dom = browser_dom(file, tmp_path)
            assert MARK not in dom and "<svg" in dom and "hostile.model" in dom
    raw = tmp_path / "raw.html"
    raw.write_text(bare.replace("</h1>", f"{PAYLOADS[0]}</h1>"), encoding="utf-8")
    assert f"<title>{MARK}</title>" in browser_dom(raw, tmp_path)
