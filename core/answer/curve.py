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
    )
