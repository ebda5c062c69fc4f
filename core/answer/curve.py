"""The dropout curve: each finished trial's mean score and standard error against its rate.

Pure data (no plotting library), so the API's SVG/PNG and the dashboard's plotly graph draw
the same points.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from droptune.core.answer.rates import primary_rate
from droptune.core.schemas import BestOut, TrialOut
from droptune.core.spec.study import StudySpec

DRAWN = ("COMPLETE", "PRUNED")


class CurvePoint(BaseModel):
    trial: int
    dropout: float = Field(description="the trial's rate (the mean of per-layer rates)")
    mean: float = Field(description="mean score over the trial's folds")
    se: float = Field(description="standard error of the mean: std / sqrt(fold scores)")
    state: str = Field(description="COMPLETE, or PRUNED (trained fewer epochs: not comparable)")
    tied: bool = Field(description="in the range the paired test cannot tell from the best")
    p_vs_best: float | None
    epochs: int | None
    params: dict[str, float] = Field(
        default_factory=dict,
        description="the trial's parameters: with search.per_layer one rate per layer "
        "(`dropout_0`, ...), which the per-layer picture plots one panel each",
    )


class CurveFit(BaseModel):
    """The curve as a model (core/answer/fit.py): a Gaussian process over the finished trials,
    each weighted by its own SE, on a grid across the searched range."""

    rates: list[float]
    mean: list[float] = Field(description="the fitted score at each rate")
    sd: list[float] = Field(description="the fit's standard error at each rate")
    best: float = Field(description="the rate of the fitted maximum")
    best_low: float = Field(description="2.5% quantile of the best rate over posterior curves")
    best_high: float = Field(description="97.5% quantile of the best rate over posterior curves")
    recommended: float = Field(
        description="the strongest rate, rightwards from the fitted maximum, whose fitted "
        "score stays within the maximum's standard error of it"
    )
    tolerance: float = Field(description="that standard error")


class SurfaceSlice(BaseModel):
    layer: str = Field(description="the layer's parameter (`dropout_0`, ...)")
    rates: list[float] = Field(description="that layer's rates across the searched range")
    mean: list[float] = Field(description="the fitted score there, every other layer at its best")
    sd: list[float] = Field(description="the fit's standard error there")


class CurveSurface(BaseModel):
    """A per-layer study's model (core/answer/surface.py): a Gaussian process over the layers'
    rates of the finished trials, each weighted by its own SE."""

    best: dict[str, float] = Field(description="the fitted maximum's rate, layer by layer")
    best_low: dict[str, float] = Field(
        description="per layer, the 2.5% quantile of the best rate over posterior surfaces"
    )
    best_high: dict[str, float] = Field(description="per layer, the 97.5% quantile")
    best_score: float = Field(description="the fitted score at the maximum")
    tolerance: float = Field(description="the fit's standard error at the maximum")
    slices: list[SurfaceSlice] = Field(
        description="the fitted score along each layer's rate, the other layers at their best"
    )


class Curve(BaseModel):
    study_id: int
    name: str | None = Field(None, description="the study's name")
    metric: str
    direction: str
    dropout_low: float = Field(description="the searched range's low end")
    dropout_high: float
    best: float | None = Field(description="the best trial's rate")
    recommended: float | None = Field(description="the rate the answer recommends")
    tied_low: float | None
    tied_high: float | None
    points: list[CurvePoint] = Field(description="COMPLETE and PRUNED trials by rate")
    fit: CurveFit | None = Field(
        None,
        description="the fitted curve; None below 3 finished rates and for per-layer studies "
        "(the rate drawn is the mean of several: see `surface`)",
    )
    surface: CurveSurface | None = Field(
        None,
        description="a per-layer study's fitted surface over its layers' rates; None below "
        "k + 2 finished points (k layers) and for one-rate studies",
    )
    layers: list[str] = Field(
        default_factory=list,
        description="with search.per_layer, the per-layer parameters (`dropout_0`, ...): "
        "`dropout` is then their mean, and each point's `params` holds each layer's rate",
    )
    best_params: dict[str, float] = Field(
        default_factory=dict, description="the best trial's parameters"
    )
    recommended_params: dict[str, float] = Field(
        default_factory=dict, description="the recommended trial's parameters"
    )


def _point(t: TrialOut, tied: set[int]) -> CurvePoint | None:
    rate = primary_rate(t.params)
    if t.state not in DRAWN or t.score is None or not t.score.folds or rate is None:
        return None
    return CurvePoint(
        trial=t.number,
        dropout=rate,
        mean=t.score.mean,
        se=t.score.std / math.sqrt(len(t.score.folds)),
        state=t.state,
        tied=t.number in tied,
        p_vs_best=t.p_vs_best,
        epochs=t.epochs,
        params=dict(t.params),
    )


def build_curve(study_id: int, spec: StudySpec, best: BestOut, trials: list[TrialOut]) -> Curve:
    """The curve of a study from its answer and trials (any of whose fields may still be None)."""
    tied = set(best.tied.trials) if best.tied else set()
    points = [p for t in trials if (p := _point(t, tied)) is not None]
    points.sort(key=lambda p: (p.dropout, p.trial))
    return Curve(
        study_id=study_id,
        name=spec.name,
        metric=best.metric or spec.cv.metric or "accuracy",
        direction=best.direction,
        dropout_low=spec.search.dropout_low,
        dropout_high=spec.search.dropout_high,
        best=best.dropout,
        recommended=best.recommended.dropout if best.recommended else None,
        tied_low=best.tied.low if best.tied else None,
        tied_high=best.tied.high if best.tied else None,
        points=points,
        fit=_fit(spec, points, best.direction),
        surface=_surface(spec, points, best.direction),
        layers=[n for n in spec.param_names() if n.startswith("dropout_")],
        best_params=dict(best.params),
        recommended_params=dict(best.recommended.params) if best.recommended else {},
    )


def _fit(spec: StudySpec, points: list[CurvePoint], direction: str) -> CurveFit | None:
    """The GP fit over the COMPLETE points, with each trial's SE corrected for overlapping
    training sets as the paired test is (1 / J + 1 / (K - 1), J splits of K folds)."""
    if spec.search.per_layer:
        return None
    done = [p for p in points if p.state == "COMPLETE"]
    if len({p.dropout for p in done}) < 3:
        return None
    from droptune.core.answer.fit import fit_curve  # numpy: the client never fits

    f = fit_curve([p.dropout for p in done], *_scored(spec, done), direction == "maximize")
    if f is None:
        return None
    return CurveFit(
        rates=f.rates,
        mean=[round(m, 6) for m in f.mean],
        sd=[round(x, 6) for x in f.sd],
        best=round(f.best, 6),
        best_low=round(f.best_interval[0], 6),
        best_high=round(f.best_interval[1], 6),
        recommended=round(f.recommended, 6),
        tolerance=round(f.tolerance, 6),
    )


def _scored(
    spec: StudySpec, done: list[CurvePoint]
) -> tuple[list[float], list[float], float, float]:
    """What either fit takes after the rates: the points' means, their SEs corrected as the
    paired test is (se = std / sqrt(J) -> std * sqrt(1 / J + 1 / (K - 1))), and the range."""
    k = spec.cv.folds
    scale = math.sqrt(1 + k * spec.cv.repeats / (k - 1))
    means = [p.mean for p in done]
    return means, [p.se * scale for p in done], spec.search.dropout_low, spec.search.dropout_high


def _surface(spec: StudySpec, points: list[CurvePoint], direction: str) -> CurveSurface | None:
    """The per-layer GP over the COMPLETE points' layer rates (SEs corrected as for the curve)."""
    layers = [n for n in spec.param_names() if n.startswith("dropout_")]
    if not spec.search.per_layer or not layers:
        return None
    done = [p for p in points if p.state == "COMPLETE" and all(n in p.params for n in layers)]
    from droptune.core.answer.surface import fit_surface  # numpy and scipy: never the client

    rates = [[p.params[n] for n in layers] for p in done]
    s = fit_surface(rates, *_scored(spec, done), direction == "maximize")
    if s is None:
        return None
    r = _rounded
    return CurveSurface(
        best={n: r(v) for n, v in zip(layers, s.best, strict=True)},
        best_low={n: r(lo) for n, (lo, _) in zip(layers, s.best_interval, strict=True)},
        best_high={n: r(hi) for n, (_, hi) in zip(layers, s.best_interval, strict=True)},
        best_score=r(s.best_score),
        tolerance=r(s.tolerance),
        slices=[
            SurfaceSlice(
                layer=n, rates=c.rates, mean=[r(m) for m in c.mean], sd=[r(x) for x in c.sd]
            )
            for n, c in zip(layers, s.slices, strict=True)
        ],
    )


def _rounded(v: float) -> float:
    return round(float(v), 6)
