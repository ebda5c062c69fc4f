"""What droptune knows by name: the built-in data sets, the tasks and their metrics.

Plain data and the standard library only: the spec (validation), the engine (which `bench/` runs
on bare GPU boxes with torch, numpy and scikit-learn alone) and the worker all read these facts
from here, and `tests/unit/test_data.py` checks them against the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Builtin:
    """A data set bundled with scikit-learn (never downloaded)."""

    rows: int
    features: int
    classes: int
    min_class: int  # rows of the smallest class: the most folds it takes
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when rows are images


BUILTINS: dict[str, Builtin] = {
    "digits": Builtin(1797, 64, 10, 174, (1, 8, 8)),
    "breast_cancer": Builtin(569, 30, 2, 212),
    "wine": Builtin(178, 13, 3, 48),
    "iris": Builtin(150, 4, 3, 50),
}
SYNTHETIC = "synthetic"  # scikit-learn's make_classification, shaped by its options
SYNTHETIC_DEFAULTS: dict[str, int] = {
    "n_samples": 1000,
    "n_features": 20,
    "n_informative": 10,
    "n_classes": 2,
    "seed": 0,
}
DATASETS = (*BUILTINS, SYNTHETIC)

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
DEFAULT_METRIC: dict[str, str] = {"classification": "accuracy", "regression": "rmse"}
MAXIMIZED = ("accuracy", "r2")  # the others are losses


def metric_direction(metric: str) -> Literal["maximize", "minimize"]:
    return "maximize" if metric in MAXIMIZED else "minimize"


def task_of(metric: str) -> Task:
    return "regression" if metric in METRICS["regression"] else "classification"


# Unseen rows per split: below MIN_SPLIT_ROWS an answer warns that its splits cannot rank rates
# (core/answer/rules.py); below MIN_SPLIT_ROWS_TO_SUBMIT a submit is refused (core/spec/study.py):
# with 3 rows a split's accuracy takes 4 values, and every rate ties.
MIN_SPLIT_ROWS = 30
MIN_SPLIT_ROWS_TO_SUBMIT = 4
