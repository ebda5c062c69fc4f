"""The answer: the best rate with its cross-validated spread, the one-standard-error choice, the
rates a paired test cannot tell from the best, and warnings when the answer sits at an edge of
the searched range."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

from droptune.core import catalogue
from droptune.core.answer import ties
from droptune.core.answer.rates import primary_rate
from droptune.core.schemas import Recommended, Score, Tied
from droptune.core.spec.answer import AnswerRule
from droptune.core.spec.search import SearchSpec
from droptune.core.spec.study import StudySpec

ALPHA = 0.05  # rates whose paired test against the best gives p >= ALPHA are tied with it
EDGE = 0.05  # a rate this close to a bound (a fraction of the range's width) sits at it
# How close two means must be to tie for the best: the same rows right on every split give means
# that differ in the 8th decimal (float32 fold scores), never a real difference.
TIE = 1e-6


def score_of(trial: FrozenTrial) -> Score | None:
    folds = trial.user_attrs.get("fold_scores")
    if not folds:
        return None
    mean = float(trial.user_attrs.get("score_mean", sum(folds) / len(folds)))
    return Score(mean=mean, std=float(trial.user_attrs.get("score_std", 0.0)), folds=folds)


def best_and_one_se(
    trials: Sequence[FrozenTrial], maximize: bool
) -> tuple[FrozenTrial | None, FrozenTrial | None]:
    """The best COMPLETE trial, and the strongest regularisation within one SE of it.

    Pruned trials trained for fewer epochs, so their scores are not comparable and are left out.
    """
    scored = [
        (t, s) for t in trials if t.state == TrialState.COMPLETE and (s := score_of(t)) is not None
    ]
    if not scored:
        return None, None
    sign = 1.0 if maximize else -1.0
    # Means equal but for float32 rounding (the same rows right on every split) are a tie: the
    # first trial with it is the best, not the one a rounding error favours.
    top = max(sign * sc.mean for _, sc in scored)
    best, best_score = min(
        ((t, sc) for t, sc in scored if _level(sign * sc.mean, top)), key=lambda ts: ts[0].number
    )
    threshold = sign * best_score.mean - best_score.se - 1e-12
    within = [t for t, s in scored if sign * s.mean >= threshold]
    one_se = max(within, key=lambda t: (primary_rate(t.params) or 0.0, -t.number))
    return best, one_se


def _level(a: float, b: float) -> bool:
    """Means equal but for rounding (within TIE, relative above 1)."""
    return abs(a - b) <= TIE * max(1.0, abs(a), abs(b))


def corrected_t_test(d: Sequence[float], test_train: float) -> float | None:
    """Two-sided p of the corrected resampled t-test (Nadeau & Bengio, 2003) on the paired
    differences `d` over J splits; `test_train` is n_test / n_train of a split.

    The splits share rows, so var(d) / J (the plain paired t-test) is far too small; the
    correction adds n_test / n_train to 1 / J. The degrees of freedom are J - 1: J counts splits,
    not rows. None below two splits."""
    j = len(d)
    if j < 2:
        return None
    mean = statistics.fmean(d)
    var = statistics.variance(d)  # ddof = 1, computed exactly: equal differences give 0
    if var == 0:
        # Every split moved by the same amount (accuracy is discrete: one row more in each
        # fold): no spread to test against. The exact sign test says how likely J differences
        # of one sign are by chance (0.0625 for 5 splits), not the 0 a zero variance would.
        return 1.0 if mean == 0 else min(1.0, 2 * 0.5**j)
    t = mean / math.sqrt((1 / j + test_train) * var)
    from scipy.stats import t as student_t  # here: half a second the CLI need not pay

    p = float(2 * student_t.sf(abs(t), j - 1))
    return p if math.isfinite(p) else None


def split_ratio(trial: FrozenTrial, folds: int) -> float:
    """n_test / n_train of the trial's splits: from `split_sizes` ([n_train, n_test], mean rows
    per split) when the worker wrote it, else 1 / (K - 1) as K-fold splits are."""
    sizes = trial.user_attrs.get("split_sizes")
    if isinstance(sizes, list | tuple) and len(sizes) == 2 and min(sizes) > 0:
        return float(sizes[1]) / float(sizes[0])
    return 1 / (folds - 1)


def p_values(
    trials: Sequence[FrozenTrial], best: FrozenTrial | None, folds: int
) -> dict[int, float | None]:
    """Each COMPLETE trial's p against the best on the same splits, by trial number: 1.0 for the
    best itself, None where the split counts differ; trials not COMPLETE are absent."""
    base = score_of(best) if best is not None else None
    if best is None or base is None:
        return {}
    ratio = split_ratio(best, folds)
    out: dict[int, float | None] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        s = score_of(t)
        if t.number == best.number:
            out[t.number] = 1.0
        elif s is not None and len(s.folds) == len(base.folds):
            d = [float(a) - float(b) for a, b in zip(s.folds, base.folds, strict=True)]
            out[t.number] = corrected_t_test(d, ratio)
        else:
            out[t.number] = None
    return out


def tied_with_best(
    trials: Sequence[FrozenTrial], best: FrozenTrial, folds: int, maximize: bool
) -> Tied | None:
    """The COMPLETE trials on the best's splits that may be the best, by rate, with a
    family-wise guarantee (core/answer/ties.py), and each one's P(best)."""
    base = score_of(best)
    assert base is not None  # best_and_one_se picks scored trials only
    rows = [
        (rate, t.number, s.folds)
        for t in trials
        if t.state == TrialState.COMPLETE
        and (s := score_of(t)) is not None
        and len(s.folds) == len(base.folds)
        and (rate := primary_rate(t.params)) is not None
    ]
    if not rows:
        return None
    found = ties.subset([f for _, _, f in rows], split_ratio(best, folds), maximize)
    members = sorted((rows[i][0], rows[i][1], found.p_best[i]) for i in found.members)
    rates = [r for r, _, _ in members]
    tied = {n for _, n, _ in members}
    inside = sorted(rate for rate, n, _ in rows if n not in tied and rates[0] <= rate <= rates[-1])
    return Tied(
        alpha=round(1 - ties.LEVEL, 10),
        level=ties.LEVEL,
        procedure=ties.describe(),
        low=rates[0],
        high=rates[-1],
        rates=rates,
        trials=[n for _, n, _ in members],
        p_best=[round(pb, 4) for _, _, pb in members],
        not_tied_inside=inside,
    )


def _why(best: FrozenTrial, chosen: FrozenTrial, rule: AnswerRule, metric: str) -> str:
    """One sentence with the numbers behind the recommended rate."""
    b = score_of(best)
    c = score_of(chosen)
    assert b is not None and c is not None  # best_and_one_se picks scored trials only
    se = b.se
    spread = f"{b.mean:.4f} ± {se:.4f} (SE over {len(b.folds)} splits)"
    if rule == "best":
        return f"the best mean {metric}, {spread}"
    if chosen.number == best.number:
        return (
            f"the best mean {metric}, {spread}; no stronger dropout is within one standard "
            "error of it and not worse by the paired test"
        )
    return (
        f"the strongest dropout whose mean {metric} {c.mean:.4f} is within one standard error "
        f"({se:.4f}) of the best, {b.mean:.4f} at {primary_rate(best.params) or 0.0:.3g}, "
        "and not worse by the paired test"
    )


def _edge_warning(who: str, rate: float, search: SearchSpec) -> tuple[str, str] | None:
    """(edge, warning) when `rate` sits within EDGE of the range's width of a bound."""
    low, high = search.dropout_low, search.dropout_high
    margin = EDGE * (high - low)
    if rate >= high - margin:
        return "high", (
            f"the {who} rate {rate:.2f} sits at search.dropout_high {high:g}: widen the range "
            "(raise search.dropout_high)"
        )
    if rate > low + margin:
        return None
    if low > 0:
        return "low", (
            f"the {who} rate {rate:.2f} sits at search.dropout_low {low:g}: widen the range "
            "(lower search.dropout_low)"
        )
    return "low", (
        f"the {who} rate {rate:.2f} sits at search.dropout_low 0: this network does best with "
        "(almost) no dropout, so dropout does not help it here"
    )


def edge_warnings(
    best: FrozenTrial, recommended: FrozenTrial, search: SearchSpec, best_shared: bool = False
) -> list[str]:
    """A warning for the best and for the recommended rate at an edge of the range: one per
    (rate, edge), so one when both are the same trial; none in the interior, and none for the
    best when other trials share its score exactly (`best_shared`: the edge is then not where
    the network does best, only where the first of them lies)."""
    out: list[str] = []
    seen: set[tuple[str, float]] = set()
    pairs = (("best", best), ("recommended", recommended))
    for who, trial in pairs[1:] if best_shared else pairs:
        rate = primary_rate(trial.params)
        found = _edge_warning(who, rate, search) if rate is not None else None
        if found is not None and rate is not None and (found[0], rate) not in seen:
            seen.add((found[0], rate))
            out.append(found[1])
    return out


MIN_SPLIT_ROWS = catalogue.MIN_SPLIT_ROWS  # unseen rows per split below which ranks mean little


def small_data_warnings(best: FrozenTrial, folds: int) -> list[str]:
    """A warning when each split scored so few unseen rows that its scores move in big steps:
    the tied set and the recommendation then say little, however confident the numbers look."""
    sizes = best.user_attrs.get("split_sizes")
    if not (isinstance(sizes, list | tuple) and len(sizes) == 2):
        return []  # a trial told before split sizes were recorded
    rows = float(sizes[1])
    if rows >= MIN_SPLIT_ROWS:
        return []
    return [
        f"each split scored only {rows:.3g} unseen rows, too few to tell dropout rates apart: "
        f"the scores, the tied set and the recommendation mean little below {MIN_SPLIT_ROWS} "
        f"rows per split (about {MIN_SPLIT_ROWS * folds} rows with {folds} folds)"
    ]


def _one_se_not_worse(
    trials: Sequence[FrozenTrial], best: FrozenTrial, p: dict[int, float | None], maximize: bool
) -> FrozenTrial:
    """The one-SE rule for `recommended`: the strongest dropout within one standard error of the
    best that the paired test does not call worse (p >= ALPHA). The unpaired SE alone would let
    a rate through that, split by split, loses to the best every time."""
    b = score_of(best)
    assert b is not None
    sign = 1.0 if maximize else -1.0
    threshold = sign * b.mean - b.se - 1e-12
    ok = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and (s := score_of(t)) is not None
        and sign * s.mean >= threshold
        and (p.get(t.number) is None or (p.get(t.number) or 0.0) >= ALPHA)
    ]
    return max(ok or [best], key=lambda t: (primary_rate(t.params) or 0.0, -t.number))


def _shared(trials: Sequence[FrozenTrial], best: FrozenTrial) -> bool:
    """Whether another COMPLETE trial scored exactly the best's mean (to float32 rounding)."""
    top = score_of(best)
    return top is not None and any(
        t.number != best.number
        and t.state == TrialState.COMPLETE
        and (s := score_of(t)) is not None
        and _level(s.mean, top.mean)
        for t in trials
    )


@dataclass(frozen=True)
class Answer:
    """Everything the answer says about a study's trials, computed from one load of them."""

    best: FrozenTrial | None
    one_se: FrozenTrial | None
    recommended: Recommended | None = None
    tied: Tied | None = None
    warnings: list[str] = field(default_factory=list)
    p: dict[int, float | None] = field(default_factory=dict)
    engine: str | None = None


def engine_of(trials: Sequence[FrozenTrial]) -> str | None:
    """How the finished trials trained, in words: one engine, or each that ran; member by
    member with its reason (the trial's warning names it). None where no trial recorded it."""
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    seen: dict[str, str] = {}
    for t in trials:
        e = t.user_attrs.get("engine") if t.state in done else None
        if isinstance(e, str) and e not in seen:
            why = t.user_attrs.get("warning")
            seen[e] = f"{e} ({why})" if e == "member by member" and why else e
    return " and ".join(seen[e] for e in sorted(seen)) or None


def answer(trials: Sequence[FrozenTrial], spec: StudySpec) -> Answer:
    """The best and one-SE trials, the recommended rate under `spec.answer.rule`, each COMPLETE
    trial's p against the best, the tied rates, and the edge warnings."""
    best, one_se = best_and_one_se(trials, spec.cv.direction == "maximize")
    if best is None or one_se is None:
        return Answer(best=None, one_se=None)
    rule = spec.answer.rule
    chosen = one_se if rule == "one_se" else best
    rate = primary_rate(chosen.params)
    recommended = (
        Recommended(
            dropout=rate,
            rule=rule,
            trial=chosen.number,
            why=_why(best, chosen, rule, spec.cv.metric or "accuracy"),
            params=dict(chosen.params),
            score=score_of(chosen),
        )
        if rate is not None
        else None
    )
    p = p_values(trials, best, spec.cv.folds)
    if rule == "one_se":
        chosen = _one_se_not_worse(trials, best, p, spec.cv.direction == "maximize")
        recommended = Recommended(
            dropout=primary_rate(chosen.params) or 0.0,
            rule=rule,
            trial=chosen.number,
            why=_why(best, chosen, rule, spec.cv.metric or "accuracy"),
            params=dict(chosen.params),
            score=score_of(chosen),
        )
    return Answer(
        best=best,
        one_se=one_se,
        recommended=recommended,
        tied=tied_with_best(trials, best, spec.cv.folds, spec.cv.direction == "maximize"),
        warnings=edge_warnings(best, chosen, spec.search, _shared(trials, best))
        + small_data_warnings(best, spec.cv.folds),
        p=p,
        engine=engine_of(trials),
    )
