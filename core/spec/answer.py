"""The answer's rule: which rate `recommended` names. Declared once here; the spec's field, the
API's `Recommended.rule` and the dashboard's wording all take it from this module."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from droptune.core.spec.strict import Strict

AnswerRule = Literal["one_se", "best"]
# The rule as the dashboard's note names it; keyed by AnswerRule, so mypy asks for a new rule's
# words (tests/unit/test_answer_view.py checks every rule has them).
RULE_LABELS: dict[AnswerRule, str] = {"one_se": "one-SE rule", "best": "best-score rule"}


class AnswerSpec(Strict):
    rule: AnswerRule = Field(
        "one_se",
        description="which rate `recommended` names: the strongest regularisation within one "
        "standard error of the best (one_se), or the best mean score (best)",
    )
