"""The answer in words, one line per fact: what `droptune best`, `wait`, `status` and the HTML
report print, so they say the same thing with the same rounding. Rendered from the view
(core/answer/view.py), which did the formatting."""

from __future__ import annotations

from typing import Literal

from droptune.core.answer.view import AnswerView, answer_view
from droptune.core.escape import safe
from droptune.core.schemas import BestOut

# What a line says, so the report can mark lines up without reading their words.
LineKind = Literal["empty", "headline", "recommended", "tied", "warning", "test", "engine"]


def answer_lines(b: BestOut) -> list[str]:
    """The answer, labelled: the best with its standard error, the recommended rate and why,
    the rates tied with the best, warnings, and the score on unseen rows once there is one.
    Each line escaped (`safe`): a warning or a reason can quote a name or a column."""
    return [safe(line) for _, line in view_lines(answer_view(b))]


def view_lines(v: AnswerView) -> list[tuple[LineKind, str]]:
    """The lines of `answer_lines`, raw (not escaped), each with what it says."""
    h = v.headline
    if h is None:
        return [("empty", v.empty)]
    lines: list[tuple[LineKind, str]] = [
        (
            "headline",
            f"best dropout {h.rate} (trial {h.trial}): {v.metric} {h.mean} ± {h.se} "
            f"(SE, {h.splits} splits)" + ("" if v.complete else " (so far)"),
        )
    ]
    if (r := v.recommended) is not None:
        lines.append(("recommended", f"recommended {r.rate} ({r.rule}): {r.why}"))
    if v.tied is not None:
        lines.append(("tied", v.tied))
    lines += [("warning", f"warning: {w}") for w in v.warnings]
    if v.engine is not None:
        lines.append(("engine", f"engine: {v.engine}"))
    if (x := v.test) is not None:
        m = x.metric
        lines.append(
            ("test", f"test {m} {x.main.brief} on {x.n} {x.rows} at dropout {x.main.rate}")
        )
        if x.best is not None:
            lines.append(("test", f"at the best dropout {x.best.rate}: {m} {x.best.brief}"))
        if x.baseline is not None:
            lines.append(("test", f"without dropout: {m} {x.baseline.brief}"))
    return lines
