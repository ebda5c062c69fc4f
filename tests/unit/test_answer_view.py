"""The answer view and the plot data (core/answer/view.py, core/answer/plot.py): what the CLI,
the report, the dashboard's note and both curve pictures render from."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from droptune.core import schemas
from droptune.core.answer.curve import Curve, CurvePoint
from droptune.core.answer.plot import plot_data
from droptune.core.answer.text import answer_lines
from droptune.core.answer.view import answer_view
from droptune.core.schemas import BestOut, Recommended, Score
from droptune.core.spec.answer import RULE_LABELS, AnswerRule


def test_every_rule_has_its_words() -> None:
    assert set(RULE_LABELS) == set(get_args(AnswerRule))


def _best() -> BestOut:
    return BestOut(
        study_id=1,
        dropout=0.3,
        params={"dropout": 0.3},
        score=Score(mean=0.97123, std=0.01, folds=[0.96, 0.97, 0.98, 0.97]),
        metric="accuracy",
        direction="maximize",
        trial=2,
        one_se_dropout=0.45,
        one_se_trial=3,
        complete=True,
        status="succeeded",
        recommended=Recommended(dropout=0.45, rule="one_se", trial=3, why="why"),
        test=schemas.TestScore(
            dropout=0.45,
            score=0.9621,
            ci95=[0.9403, 0.9788],
            n=360,
            source="test_dataset",
            metric="accuracy",
            best=schemas.TestPoint(dropout=0.3, score=0.95, ci95=[0.93, 0.97]),
        ),
    )


def _point(trial: int, rate: float, state: str = "COMPLETE", tied: bool = True) -> CurvePoint:
    return CurvePoint(
        trial=trial,
        dropout=rate,
        mean=0.9,
        se=0.01,
        state=state,
        tied=tied,
        p_vs_best=None,
        epochs=None,
    )


def test_the_view_formats_each_number_once_in_each_renderer_s_form() -> None:
    v = answer_view(_best(), [_point(0, 0.1), _point(1, 0.2, "PRUNED")])
    h = v.headline
    assert h is not None
    assert (h.rate, h.rate_short, h.mean, h.mean_short, h.se, h.se_short, h.splits) == (
        "0.3000",
        "0.30",
        "0.9712",
        "0.9712",
        "0.0050",
        "0.005",
        4,
    )
    r = v.recommended
    assert r is not None and (r.rate, r.rate_short, r.rule_label) == (
        "0.4500",
        "0.45",
        "one-SE rule",
    )
    assert v.test is not None and v.test.best is not None
    assert v.test.rows == "rows of the test data set"
    assert v.test.main.brief == "0.962 [0.94, 0.98]"
    assert v.test.main.with_ci == "0.9621 (95% CI 0.9403\u20130.9788)"
    assert (v.finished, v.pruned, v.empty) == (
        1,
        1,
        "no finished trial (the study ended succeeded)",
    )


def test_plot_data_marks_one_line_when_best_is_recommended() -> None:
    points = [_point(0, 0.1), _point(1, 0.2, tied=False), _point(2, 0.3, "PRUNED")]
    curve = Curve(
        study_id=1,
        metric="accuracy",
        direction="maximize",
        dropout_low=0.0,
        dropout_high=0.9,
        best=0.1,
        recommended=0.1,
        tied_low=0.1,
        tied_high=0.2,
        points=points,
    )
    data = plot_data(curve)
    assert [(m.role, m.text) for m in data.marks] == [("best = recommended", "0.10")]
    assert [f.apart for f in data.finished] == [False, True]
    assert [p.trial for p in data.pruned] == [2] and data.band == (0.1, 0.2)
    apart = plot_data(curve.model_copy(update={"recommended": 0.2}))
    assert [m.role for m in apart.marks] == ["best", "recommended"]


def test_the_score_carries_the_standard_error_every_sentence_quotes() -> None:
    """`score.std` is the spread of the split scores; scripts need the SE the CLI prints
    (`± 0.0050 (SE, 4 splits)`) without computing it: `score.se`, in JSON and in the schema."""
    best = _best()
    sent = json.loads(best.model_dump_json())["score"]
    assert sent["se"] == pytest.approx(0.01 / 2) and sent["std"] == 0.01
    assert Score.model_validate(sent).se == sent["se"]  # a client reads it back
    assert "± 0.0050 (SE, 4 splits)" in answer_lines(best)[0]
    schema = BestOut.model_json_schema(mode="serialization")["$defs"]["Score"]
    assert (
        "se" in schema["required"] and "standard error" in schema["properties"]["se"]["description"]
    )


@pytest.mark.parametrize(
    ("status", "dropout", "complete", "state", "words"),
    [
        ("queued", None, False, "none", "no trial has finished yet"),
        ("cancelled", None, True, "none", "ended (cancelled) before any trial finished"),
        ("running", 0.3, False, "interim", "is running: the answer may still change"),
        ("succeeded", 0.3, True, "final", "succeeded: this answer will not change"),
        ("cancelled", 0.3, True, "final", "from the trials that finished, will not change"),
    ],
)
def test_the_answer_says_its_state(
    status: str, dropout: float | None, complete: bool, state: str, words: str
) -> None:
    """A script need not guess from nulls whether there is an answer and whether it is final."""
    b = _best().model_copy(update={"status": status, "dropout": dropout, "complete": complete})
    sent = json.loads(b.model_dump_json())
    assert sent["state"] == state and words in sent["state_why"], sent["state_why"]
    assert BestOut.model_validate(sent).state == state  # the client reads it back the same
