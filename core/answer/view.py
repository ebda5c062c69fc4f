"""The answer as every renderer shows it: one view built from BestOut (and the curve's points),
each number formatted here, once.

The CLI's lines (and the HTML report, which shows them) and the dashboard's note round
differently today (the CLI 4 decimals, the note 2 decimals and 4 significant digits): users have
seen both, so the view holds both forms and says which renderer reads which, rather than change
either. The view holds raw text; each renderer escapes for its medium (terminal, HTML, markdown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from droptune.core.answer.curve import CurvePoint
from droptune.core.answer.rates import layer_rates
from droptune.core.schemas import BestOut, Recommended, TestPoint, TestScore
from droptune.core.spec.answer import RULE_LABELS

DASH = "\u2013"  # an en dash between a range's ends (the dashboard's ranges)


def num(x: float) -> str:
    """A score to 4 significant digits (the dashboard's note and hover texts)."""
    return f"{x:.4g}"


@dataclass(frozen=True)
class Headline:
    """The best trial: rate, mean ± SE and its split count. `*_short`: the dashboard's form."""

    rate: str  # 4 decimals (CLI, report)
    rate_short: str  # 2 decimals (note)
    trial: int | None
    mean: str  # 4 decimals (CLI, report)
    mean_short: str  # 4 significant digits (note)
    se: str  # 4 decimals (CLI, report)
    se_short: str  # 2 significant digits (note)
    splits: int


@dataclass(frozen=True)
class Recommendation:
    """The recommended rate, its rule (the name and the note's words) and why."""

    rate: str  # 4 decimals (CLI, report); per layer: "0.0630, 0.1840 by layer (mean 0.1235)"
    rate_short: str  # 2 decimals (note)
    rule: str
    rule_label: str
    trial: int
    why: str


@dataclass(frozen=True)
class Interval:
    """A score on unseen rows with its 95% interval, at a rate."""

    rate: str  # 2 decimals (every renderer)
    brief: str  # "0.962 [0.94, 0.98]" (CLI, report)
    with_ci: str  # "0.9621 (95% CI 0.9403 to 0.9788)", the ends joined by DASH (note)


@dataclass(frozen=True)
class TestView:
    """The refit's score on unseen rows, the best rate's and the baseline's when there are."""

    metric: str
    n: int
    rows: str  # what the rows were: "held-out rows" or "rows of the test data set"
    main: Interval
    best: Interval | None
    baseline: Interval | None


@dataclass(frozen=True)
class AnswerView:
    """What every renderer of the answer shows, already formatted."""

    metric: str
    direction: str
    status: str
    complete: bool
    empty: str  # what to say in place of the headline while there is none
    headline: Headline | None
    recommended: Recommendation | None
    tied: str | None
    warnings: tuple[str, ...]
    test: TestView | None
    finished: int  # COMPLETE trials on the curve (0 when built without it)
    pruned: int  # PRUNED trials on the curve
    engine: str | None = None  # how the trials trained (BestOut.engine)


def answer_view(b: BestOut, points: Sequence[CurvePoint] = ()) -> AnswerView:
    """The view of an answer; `points` (the curve's) only count the trials drawn."""
    finished = sum(p.state == "COMPLETE" for p in points)
    return AnswerView(
        metric=b.metric,
        direction=b.direction,
        status=b.status,
        complete=b.complete,
        empty=f"no finished trial (the study ended {b.status})"
        if b.complete
        else "no finished trial yet",
        headline=_headline(b),
        recommended=_recommendation(b.recommended),
        tied=b.tied.text() if b.tied is not None else None,
        warnings=tuple(b.warnings),
        test=_test(b.test),
        finished=finished,
        pruned=len(points) - finished,
        engine=b.engine,
    )


def _headline(b: BestOut) -> Headline | None:
    if b.score is None or b.dropout is None:
        return None
    s = b.score
    se = s.se
    rate, rate_short = _rates(b.dropout, b.params)
    return Headline(
        rate=rate,
        rate_short=rate_short,
        trial=b.trial,
        mean=f"{s.mean:.4f}",
        mean_short=num(s.mean),
        se=f"{se:.4f}",
        se_short=f"{se:.2g}",
        splits=len(s.folds),
    )


def _rates(mean: float, params: dict[str, float]) -> tuple[str, str]:
    """A trial's rate to 4 and to 2 decimals; with search.per_layer every layer's, first layer
    first, and their mean (which `dropout` holds, and which is no layer's rate)."""
    layers = layer_rates(params)
    if len(layers) < 2:
        return f"{mean:.4f}", f"{mean:.2f}"
    by = ", ".join(f"{v:.4f}" for v in layers)
    by_short = ", ".join(f"{v:.2f}" for v in layers)
    return f"{by} by layer (mean {mean:.4f})", f"{by_short} by layer (mean {mean:.2f})"


def _recommendation(r: Recommended | None) -> Recommendation | None:
    if r is None:
        return None
    rate, rate_short = _rates(r.dropout, r.params)
    return Recommendation(
        rate=rate,
        rate_short=rate_short,
        rule=r.rule,
        rule_label=RULE_LABELS.get(r.rule, r.rule),
        trial=r.trial,
        why=r.why,
    )


def _interval(p: TestPoint) -> Interval:
    low, high = p.ci95[0], p.ci95[1]
    return Interval(
        rate=f"{p.dropout:.2f}",
        brief=f"{p.score:.3f} [{low:.2f}, {high:.2f}]",
        with_ci=f"{num(p.score)} (95% CI {num(low)}{DASH}{num(high)})",
    )


def _test(x: TestScore | None) -> TestView | None:
    if x is None:
        return None
    return TestView(
        metric=x.metric,
        n=x.n,
        rows="held-out rows" if x.source == "holdout" else "rows of the test data set",
        main=_interval(x),
        best=_interval(x.best) if x.best is not None else None,
        baseline=_interval(x.baseline) if x.baseline is not None else None,
    )
