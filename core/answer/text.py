"""The answer in words, one line per fact: what `droptune best`, `wait`, `status` and the HTML
report print, so they say the same thing with the same rounding."""

from __future__ import annotations

import math

from droptune.core.escape import safe
from droptune.core.schemas import BestOut, TestPoint


def answer_lines(b: BestOut) -> list[str]:
    """The answer, labelled: the best with its standard error, the recommended rate and why,
    the rates tied with the best, warnings, and the score on unseen rows once there is one.
    Each line escaped (`safe`): a warning or a reason can quote a name or a column."""
    return [safe(line) for line in _lines(b)]


def _lines(b: BestOut) -> list[str]:
    if b.score is None or b.dropout is None:
        return [
            f"no finished trial (the study ended {b.status})"
            if b.complete
            else "no finished trial yet"
        ]
    s = b.score
    se = s.std / math.sqrt(len(s.folds))
    lines = [
        f"best dropout {b.dropout:.4f} (trial {b.trial}): {b.metric} {s.mean:.4f} ± {se:.4f} "
        f"(SE, {len(s.folds)} splits)" + ("" if b.complete else " (so far)")
    ]
    if (r := b.recommended) is not None:
        lines.append(f"recommended {r.dropout:.4f} ({r.rule}): {r.why}")
    if (t := b.tied) is not None:
        lines.append(t.text())
    lines += [f"warning: {w}" for w in b.warnings]
    if (x := b.test) is not None:
        rows = "held-out rows" if x.source == "holdout" else "rows of the test data set"
        lines.append(f"test {x.metric} {_point(x)} on {x.n} {rows} at dropout {x.dropout:.2f}")
        if x.best is not None:
            lines.append(f"at the best dropout {x.best.dropout:.2f}: {x.metric} {_point(x.best)}")
        if x.baseline is not None:
            lines.append(f"without dropout: {x.metric} {_point(x.baseline)}")
    return lines


def _point(p: TestPoint) -> str:
    return f"{p.score:.3f} [{p.ci95[0]:.2f}, {p.ci95[1]:.2f}]"
