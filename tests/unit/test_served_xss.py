"""Hostile strings where the service's output reaches a browser besides the report: the curve
SVG (GET /studies/{id}/curve?format=svg, opened as a page of its own), the dashboard note
(markdown) and the plotly figure the worker publishes into the Optuna dashboard."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from droptune.core import schemas
from droptune.core.answer.curve import Curve, CurvePoint
from droptune.core.schemas import BestOut, Recommended, Score
from droptune.storage.dashboard_answer import curve_figure, note_markdown
from tests.html_audit import MARK, PAYLOADS, RUN, browser_dom, every_payload, problems
from tests.unit.test_report_xss import SVG_TAGS, curve_svg

SVG_NS = "{http://www.w3.org/2000/svg}"
NOTE_TAGS = {"h2", "p", "strong", "em", "ul", "li"}


def test_curve_svg_draws_hostile_names_as_glyphs(tmp_path: Path) -> None:
    """The study name and the metric are drawn as paths (their text only in escaped comments):
    static, no element or attribute from them; live, opened as a page, no script runs."""
    svg = curve_svg()
    assert problems(svg.decode(), SVG_TAGS) == []
    root = ET.fromstring(svg)
    assert {e.tag.removeprefix(SVG_NS).lower() for e in root.iter()} <= SVG_TAGS
    file = tmp_path / "curve.svg"
    file.write_bytes(svg)
    assert MARK not in browser_dom(file, tmp_path)
    control = tmp_path / "control.svg"  # an SVG's own script does run: the check can see it
    control.write_bytes(svg.replace(b"</svg>", f"<script>{RUN}</script></svg>".encode()))
    assert MARK in browser_dom(control, tmp_path)


def _curve() -> Curve:
    points = [
        CurvePoint(
            trial=n,
            dropout=0.1 * n,
            mean=0.9,
            se=0.01,
            state="COMPLETE" if n else "PRUNED",
            tied=False,
            p_vs_best=None,
            epochs=4,
        )
        for n in range(3)
    ]
    return Curve(
        study_id=7,
        name=every_payload(),
        metric=every_payload(),
        direction=PAYLOADS[2],
        dropout_low=0.0,
        dropout_high=0.9,
        best=0.1,
        recommended=0.2,
        tied_low=0.1,
        tied_high=0.2,
        points=points,
    )


def _best() -> BestOut:
    test = schemas.TestScore(
        dropout=0.2, score=0.9, ci95=[0.8, 0.95], n=50, source="holdout", metric=PAYLOADS[8]
    )
    return BestOut(
        study_id=7,
        dropout=0.1,
        params={"dropout": 0.1},
        score=Score(mean=0.9, std=0.01, folds=[0.89, 0.9, 0.91]),
        metric=PAYLOADS[9],
        direction=PAYLOADS[3],
        trial=1,
        one_se_dropout=0.2,
        one_se_trial=2,
        complete=True,
        status="succeeded",
        recommended=Recommended(dropout=0.2, rule="one_se", trial=2, why=every_payload()),
        warnings=[*PAYLOADS, "a\n[x]: javascript:alert(1)\n<script>x</script>", "a\n# heading"],
        test=test,
    )


def _render(note: str) -> str:
    """The note as the most lenient markdown renderer would show it: raw HTML passed through
    (optuna-dashboard with allow_unsafe) and every link target accepted."""
    md = MarkdownIt("commonmark", {"html": True})
    md.validateLink = lambda url: True  # type: ignore[method-assign]
    return str(md.render(note))


def test_note_shows_hostile_strings_as_text(tmp_path: Path) -> None:
    """Static: the rendered note has only the note's own elements and every payload reads as
    written; live: no script runs. The same renderer does run a payload left raw."""
    note = note_markdown(_curve(), _best())
    html = _render(note)
    assert problems(html, NOTE_TAGS) == []
    text = unescape(re.sub(r"<[^>]*>", "", html))
    for p in PAYLOADS:
        assert p.replace("\u2028", " ").replace("\u2029", " ").strip() in text
    assert "Recommended dropout: 0.20" in text and "[x]: javascript:alert(1)" in text
    page = tmp_path / "note.html"
    page.write_text(f"<!DOCTYPE html><title>note</title><body>{html}</body>", encoding="utf-8")
    assert MARK not in browser_dom(page, tmp_path)
    raw = f'<img src="x" onerror="{RUN}">'  # a tag CommonMark takes as HTML
    page.write_text(_render(f"{note}\n{raw}\n"), encoding="utf-8")
    assert MARK in browser_dom(page, tmp_path)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def test_plotly_figure_has_no_markup_from_the_curve() -> None:
    """plotly.js reads a few HTML tags (<a href>, <b>, <br>) and character references in its
    texts: no string of the figure holds markup but the hover texts' own line breaks."""
    texts = _strings(curve_figure(_curve()).to_plotly_json())
    for text in texts:
        assert "<" not in text.replace("<br>", ""), text
    assert any("&lt;img src=x onerror=" in t for t in texts)  # the metric, escaped
