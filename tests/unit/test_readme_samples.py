"""The README's samples of what droptune prints match what it prints (issue 22: they had
drifted). The polling scripts' output is checked where they run (tests/e2e/test_polling.py)."""

from __future__ import annotations

import re
from pathlib import Path

from droptune.client import launch

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def block(marker: str) -> str:
    found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", README, re.S)
    assert found, f"README has no block after <!-- {marker} -->"
    return found.group(1)


def test_the_up_banner_sample_is_what_up_prints() -> None:
    printed = launch._banner("sqlite:///./droptune.db", "http://127.0.0.1:8000", ["cpu"], True)
    assert block("up-banner") == printed + "\n"


def test_the_quick_start_answer_sample_reads_as_the_cli_prints_it() -> None:
    """The Quick start's `droptune wait` sample drifted from the CLI once (issue 22): the same
    answer, rendered by the lines the CLI prints, reads line for line as the README shows it
    (numbers aside)."""
    from droptune.core.answer.text import answer_lines
    from droptune.core.schemas import BestOut, Recommended, Score, TestPoint, TestScore, Tied

    sample = re.search(r"```\n(study 1 digits default .*?)```", README, re.S)
    assert sample, "the Quick start's answer sample is gone"
    shown = [line.strip() for line in sample.group(1).splitlines()[1:]]
    # `reason:` (why the search ended) belongs to the study's status line, not to the answer.
    assert shown[0].startswith("reason: search settled after"), shown[0]
    shown = shown[1:]
    why = shown[1].split(": ", 1)[1]
    warning = shown[3].removeprefix("warning: ")
    folds = [0.98, 0.976, 0.979, 0.977, 0.98]
    best = BestOut(
        study_id=1,
        dropout=0.3705,
        params={"dropout": 0.3705},
        score=Score(mean=0.9784, std=0.0045, folds=folds),
        metric="accuracy",
        direction="maximize",
        trial=14,
        one_se_dropout=0.5392,
        one_se_trial=2,
        complete=True,
        status="succeeded",
        recommended=Recommended(dropout=0.5392, rule="one_se", trial=2, why=why),
        tied=Tied(
            alpha=0.05,
            low=0.033,
            high=0.652,
            rates=[0.033, 0.0892, 0.258, 0.483, 0.652],
            trials=list(range(5)),
            level=0.95,
            procedure="subset",
        ),
        warnings=[warning],
        engine="stacked",
        test=TestScore(
            dropout=0.5392,
            score=0.969,
            ci95=[0.95, 0.98],
            n=360,
            source="holdout",
            metric="accuracy",
            best=TestPoint(dropout=0.3705, score=0.972, ci95=[0.95, 0.98]),
            baseline=TestPoint(dropout=0.0, score=0.975, ci95=[0.95, 0.99]),
        ),
    )
    printed = answer_lines(best)
    assert [shape(line) for line in shown] == [shape(line) for line in printed]


def shape(line: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", line)
