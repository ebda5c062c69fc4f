"""What both pictures of the curve draw: the API's matplotlib SVG/PNG (service/routes/curve.py)
and the dashboard's plotly graph (storage/dashboard_answer.py). Which points are finished or
pruned, which finished rates the paired test tells apart inside the tied band, which rates are
marked and how they are labelled, and the finished trials' span: decided here once, so the two
pictures cannot disagree. Colours, sizes and legend wording stay with each library's code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from droptune.core.answer.curve import Curve, CurveFit, CurvePoint

Role = Literal["best", "recommended", "best = recommended"]


@dataclass(frozen=True)
class Finished:
    """A COMPLETE trial: its mean with ±1 SE error bars."""

    point: CurvePoint
    apart: bool  # inside the tied band but told apart from the best (drawn hollow)


@dataclass(frozen=True)
class RateMark:
    """A vertical line at an answer's rate: one line when the best is the recommended."""

    rate: float
    role: Role
    text: str  # the rate as both pictures label it (2 decimals)


@dataclass(frozen=True)
class PlotData:
    finished: tuple[Finished, ...]
    pruned: tuple[CurvePoint, ...]  # trained fewer epochs: faint, no error bars
    band: tuple[float, float] | None  # the tied range, shaded
    marks: tuple[RateMark, ...]  # the best's first, then the recommended's
    span: tuple[float, float] | None  # the finished trials' means ± SE, padded
    fit: CurveFit | None = None  # the fitted curve: a line with a ±1 SE band


def plot_data(curve: Curve) -> PlotData:
    """The curve as both pictures draw it."""
    band = (
        (curve.tied_low, curve.tied_high)
        if curve.tied_low is not None and curve.tied_high is not None
        else None
    )
    done = [p for p in curve.points if p.state == "COMPLETE"]
    # A rate inside the shaded band may still differ from the best (the band is the tied rates'
    # range, not a stretch of tied rates): the pictures show it apart.
    shaded = curve.tied_low is not None
    return PlotData(
        finished=tuple(Finished(p, apart=shaded and not p.tied) for p in done),
        pruned=tuple(p for p in curve.points if p.state != "COMPLETE"),
        band=band,
        marks=_marks(curve.best, curve.recommended),
        span=_span(done),
        fit=curve.fit,
    )


def _marks(best: float | None, recommended: float | None) -> tuple[RateMark, ...]:
    if best is not None and best == recommended:
        return (RateMark(best, "best = recommended", f"{best:.2f}"),)
    marks = []
    if best is not None:
        marks.append(RateMark(best, "best", f"{best:.2f}"))
    if recommended is not None:
        marks.append(RateMark(recommended, "recommended", f"{recommended:.2f}"))
    return tuple(marks)


def _span(done: list[CurvePoint]) -> tuple[float, float] | None:
    """The finished trials' span with their error bars: pruned trials, far below after fewer
    epochs, would squash the curve flat; beyond it they are simply off the scale."""
    if not done:
        return None
    low = min(p.mean - p.se for p in done)
    high = max(p.mean + p.se for p in done)
    pad = 0.15 * (high - low) or 0.01 * max(abs(high), 1e-9)
    return (low - pad, high + pad)
