"""The StudySpec: the one definition of a study, used by the API, the worker and the client."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from droptune.core import catalogue
from droptune.core.spec import names
from droptune.core.spec.answer import AnswerSpec
from droptune.core.spec.kinds import SPEC_KINDS
from droptune.core.spec.model import MLPModel, ModelSpec, check_search, default_kind
from droptune.core.spec.search import SearchSpec
from droptune.core.spec.strict import RUNNABLE, STORED, FieldError, Strict, describe_errors, stored

HOLDOUT_MIN_ROWS = 500  # data sets this large hold out DEFAULT_HOLDOUT of their rows by default
DEFAULT_HOLDOUT = 0.2
MAX_FOLD_CELLS = 2**28  # folds x samples x features a worker holds (float32: 1 GiB)
SYNTHETIC_OPTIONS = tuple(catalogue.SYNTHETIC_DEFAULTS)
CLASSIFICATION_METRICS = catalogue.METRICS["classification"]
REGRESSION_METRICS = catalogue.METRICS["regression"]
DEFAULT_METRIC = catalogue.DEFAULT_METRIC
Metric = Literal["accuracy", "log_loss", "rmse", "mae", "r2"]


def _check_fold_memory(field: str, folds: int, shape: str, cells: int, cure: str) -> None:
    """A worker keeps one standardised float32 copy of the data per fold: at most 1 GiB."""
    total = folds * cells
    if total > MAX_FOLD_CELLS:
        raise FieldError(
            field,
            f"{folds} folds x {shape} is {total * 4 / 2**30:.1f} GiB of fold data per worker; "
            f"at most {MAX_FOLD_CELLS * 4 // 2**30} GiB: {cure}",
        )


class DatasetSpec(Strict):
    builtin: Literal["digits", "breast_cancer", "wine", "iris", "synthetic"] | None = Field(
        None,
        description="a data set bundled with scikit-learn, or `synthetic` (make_classification)",
        exclude_if=lambda v: v is None,
    )
    id: int | None = Field(
        None,
        ge=1,
        le=2**63 - 1,
        description="an uploaded data set (POST /datasets)",
        exclude_if=lambda v: v is None,
    )
    options: dict[str, int] = Field(
        default_factory=dict,
        description="for `synthetic`: n_samples, n_features, n_informative, n_classes, seed",
    )

    @model_validator(mode="after")
    def _check_options(self, info: ValidationInfo) -> DatasetSpec:
        if (self.builtin is None) == (self.id is None):
            raise FieldError(
                "builtin",
                "give exactly one of dataset.builtin (a bundled data set) and dataset.id "
                "(an uploaded one)",
            )
        if self.builtin != "synthetic":
            if self.options:
                name = repr(self.builtin) if self.builtin else f"{self.id} (uploaded)"
                raise FieldError("options", f"data set {name} takes no options")
            return self
        unknown = sorted(set(self.options) - set(SYNTHETIC_OPTIONS))
        if unknown:
            raise FieldError(
                "options",
                f"unknown synthetic option(s) {unknown}; allowed: {list(SYNTHETIC_OPTIONS)}",
            )
        o = self.synthetic_options()
        if not 20 <= o["n_samples"] <= 1_000_000:
            raise FieldError("options.n_samples", "must be between 20 and 1000000")
        if not 2 <= o["n_features"] <= 10_000:
            raise FieldError("options.n_features", "must be between 2 and 10000")
        if not 1 <= o["n_informative"] <= o["n_features"]:
            raise FieldError("options.n_informative", "must be between 1 and n_features")
        if not 2 <= o["n_classes"] <= 100:
            raise FieldError("options.n_classes", "must be between 2 and 100")
        if o["n_classes"] * 2 > 2 ** o["n_informative"]:
            raise FieldError("options.n_classes", "n_classes * 2 must be <= 2 ** n_informative")
        # Submit-only (see StudySpec.stored): added after studies were stored without it.
        if not stored(info) and not 0 <= o["seed"] <= 2**32 - 1:
            raise FieldError("options.seed", "must be between 0 and 4294967295")
        return self

    def synthetic_options(self) -> dict[str, int]:
        return {**catalogue.SYNTHETIC_DEFAULTS, **self.options}

    def min_class_count(self) -> int | None:
        """The smallest class of a built-in data set (None for an uploaded one: its record
        knows, and the submit checks it there)."""
        if self.builtin is None:
            return None
        if self.builtin == "synthetic":
            o = self.synthetic_options()
            # make_classification balances classes; flip_y may move a few samples.
            return max(1, int(o["n_samples"] * 0.9) // o["n_classes"])
        return catalogue.BUILTINS[self.builtin].min_class

    def rows(self) -> int:
        """Rows of a built-in data set (0 for an uploaded one: its record knows)."""
        if self.builtin == "synthetic":
            return self.synthetic_options()["n_samples"]
        return catalogue.BUILTINS[self.builtin].rows if self.builtin else 0

    def label(self) -> str:
        return self.builtin if self.builtin is not None else f"upload:{self.id}"


class TrainingSpec(Strict):
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)


class CVSpec(Strict):
    folds: int = Field(5, ge=2, description="2 up to the smallest class count")
    metric: Metric | None = Field(
        None,
        description="accuracy (default) or log_loss for classification; rmse (default), mae "
        "or r2 for regression",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    repeats: int = Field(
        1,
        ge=1,
        le=10,
        description="repeated cross-validation: R shuffles of the K folds, R x K splits a trial "
        "is scored on (all trained at once)",
    )

    @property
    def splits(self) -> int:
        """How many train/validation splits a trial is scored on: folds x repeats."""
        return self.folds * self.repeats

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return catalogue.metric_direction(self.metric or "accuracy")


class EvaluationSpec(Strict):
    holdout: float | None = Field(
        None,
        ge=0,
        le=0.5,
        description="fraction of rows held out (stratified, seeded by cv.seed) before "
        f"cross-validation and scored once at the end; default {DEFAULT_HOLDOUT} for data sets "
        f"of at least {HOLDOUT_MIN_ROWS} rows, else 0",
    )
    test_dataset: int | None = Field(
        None,
        ge=1,
        le=2**63 - 1,
        description="an uploaded data set with the same columns, scored once at the end",
        exclude_if=lambda v: v is None,
    )

    @model_validator(mode="after")
    def _one_source(self) -> EvaluationSpec:
        if self.test_dataset is not None and self.holdout:
            raise FieldError(
                "holdout",
                "give evaluation.holdout or evaluation.test_dataset, not both: with a test data "
                "set every row of dataset is used for the search",
            )
        return self

    @property
    def has_unseen(self) -> bool:
        """Whether the study's refit is scored on unseen rows (held out, or a test data set);
        every study ends with a refit, one without them on every row and without a score."""
        return bool(self.holdout) or self.test_dataset is not None


class StudySpec(Strict):
    name: str | None = Field(None, max_length=200)
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=MLPModel, discriminator="kind")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    cv: CVSpec = Field(default_factory=CVSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    answer: AnswerSpec = Field(default_factory=AnswerSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    priority: int = Field(0, ge=-1000, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _model_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            return {**data, "model": default_kind(data["model"])}
        return data

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        """No NUL (PostgreSQL refuses it, SQLite stores it) and no control character (an escape
        sequence would drive the terminal of whoever lists studies). Submit-only, and not for
        running either: a name stored before this check stays readable (the CLI escapes it)."""
        if value is None or stored(info) or (info.context or {}).get(RUNNABLE):
            return value
        problem = names.text_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @classmethod
    def stored(cls, raw: Any) -> StudySpec:
        """A spec read back from the database. Checks added since it was submitted (marked
        submit-only below) are skipped, so a study stored by an earlier version stays readable;
        whether it can still run is `runnable`'s call."""
        return cls.model_validate(raw, context={STORED: True})

    @classmethod
    def runnable(cls, raw: Any) -> StudySpec | str:
        """A stored spec under this version's checks: the spec, or why it cannot run."""
        try:
            return cls.model_validate(raw, context={RUNNABLE: True})
        except ValidationError as e:
            return "; ".join(f"{d['field']}: {d['message']}" for d in describe_errors(e.errors()))

    @model_validator(mode="after")
    def _check_cross_fields(self, info: ValidationInfo) -> StudySpec:
        submitted = not stored(info)
        if submitted and self.dataset.builtin is not None:
            self._resolve_holdout(self.dataset.rows())
        smallest = self.dataset.min_class_count()
        if smallest is not None:
            self._check_folds_fit(smallest, repr(self.dataset.builtin))
        if submitted and self.dataset.builtin is not None:
            rows = self.dataset.rows()
            self._check_splits_rank(rows - self._held_out(rows))
        if self.dataset.builtin is not None:
            # Every built-in data set is a classification one.
            if self.cv.metric is None:
                self.cv.metric = "accuracy"
            if self.cv.metric not in CLASSIFICATION_METRICS:
                raise FieldError(
                    "cv.metric",
                    f"{self.cv.metric!r} is a regression metric; {self.dataset.builtin!r} is a "
                    f"classification data set: use one of {list(CLASSIFICATION_METRICS)}",
                )
            if self.model.kind == "cnn" and self.dataset.builtin != "digits":
                raise FieldError(
                    "model.kind",
                    "'cnn' needs image data: dataset.builtin 'digits', or an uploaded NPZ "
                    "data set whose X is (N, H, W) or (N, C, H, W)",
                )
        if submitted:
            check_search(self.model, self.search.per_layer, self.search.searches_input_dropout)
        if submitted and self.dataset.builtin == "synthetic":
            # A worker keeps K standardised copies of the data, [K, n_samples, n_features].
            o = self.dataset.synthetic_options()
            _check_fold_memory(
                "dataset.options",
                self.cv.splits,
                f"{o['n_samples']} samples x {o['n_features']} features",
                o["n_samples"] * o["n_features"],
                "fewer samples, features or folds",
            )
        return self

    def for_data(
        self, task: str, image_shape: Any, rows: int, width: int, min_class: int | None
    ) -> StudySpec:
        """This spec checked against an uploaded data set's record, with the metric resolved:
        the folds fit its classes (or rows), the metric its task, the model its shape. Raises
        FieldError naming the field (the caller turns it into a 422)."""
        metric = self.cv.metric or DEFAULT_METRIC[task]
        allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
        if metric not in allowed:
            raise FieldError(
                "cv.metric",
                f"{metric!r} does not fit data set {self.dataset.id}, a {task} data set: use "
                f"one of {list(allowed)}",
            )
        if self.model.kind == "cnn" and not image_shape:
            raise FieldError(
                "model.kind",
                f"'cnn' needs image data; data set {self.dataset.id} is tabular: upload an NPZ "
                "whose X is (N, H, W) or (N, C, H, W), or use model.kind 'mlp'",
            )
        out = self.model_copy(deep=True)
        out._resolve_holdout(rows)
        if min_class is not None:
            out._check_folds_fit(min_class, f"data set {self.dataset.id}")
        searched = rows - out._held_out(rows)
        out._check_splits_rank(searched)  # regression too: 4 rows a split, 2 a fold at least
        _check_fold_memory(
            "cv.folds",
            self.cv.splits,
            f"{rows} rows x {width} encoded features",
            rows * width,
            "fewer folds or repeats, or a smaller data set",
        )
        out.cv.metric = metric  # type: ignore[assignment]
        return out

    def _resolve_holdout(self, rows: int) -> None:
        """Fill in the default holdout from the data set's size (submit only)."""
        ev = self.evaluation
        if ev.holdout is None:
            big = rows >= HOLDOUT_MIN_ROWS and ev.test_dataset is None
            ev.holdout = DEFAULT_HOLDOUT if big else 0.0

    def _held_out(self, n: int) -> int:
        """Rows of n the holdout takes (scikit-learn's train_test_split rounds up)."""
        return math.ceil(n * (self.evaluation.holdout or 0.0))

    def _holdout_note(self) -> str:
        h = self.evaluation.holdout or 0.0
        return f" after evaluation.holdout {h:g} took its rows out" if h else ""

    def _check_splits_rank(self, searched: int) -> None:
        """Refuse a search whose splits would each score too few rows to rank anything."""
        folds, least = self.cv.folds, catalogue.MIN_SPLIT_ROWS_TO_SUBMIT
        if searched // folds >= least:
            return
        name = f"data set {self.dataset.id}" if self.dataset.id else repr(self.dataset.builtin)
        raise FieldError(
            "dataset",
            f"{name} has {searched} rows to search{self._holdout_note()}: with {folds} folds "
            f"each split would score {searched // folds} unseen rows, too few to tell dropout "
            f"rates apart. It needs at least {self._rows_for(least * folds)} rows (an answer "
            f"worth trusting about {self._rows_for(catalogue.MIN_SPLIT_ROWS * folds)}: "
            f"{catalogue.MIN_SPLIT_ROWS} per split)"
            + (", or fewer folds (--folds)" if folds > 2 else ""),
        )

    def _rows_for(self, searched: int) -> int:
        """The fewest rows that leave `searched` to search after the holdout takes its share."""
        n = searched
        while n - self._held_out(n) < searched:
            n += 1
        return n

    def _check_folds_fit(self, smallest: int, name: str) -> None:
        """Each fold needs a row of every class: folds <= the smallest class left to search."""
        left = smallest - self._held_out(smallest)
        if self.cv.folds > left:
            raise FieldError(
                "cv.folds",
                f"{self.cv.folds} folds exceed the smallest class count of {name} ({left}"
                f"{self._holdout_note()})",
            )

    @property
    def task(self) -> str:
        return catalogue.task_of(self.cv.metric or "accuracy")

    def param_names(self) -> list[str]:
        """The Optuna parameters this study searches, in order."""
        n_layers = SPEC_KINDS[self.model.kind].dropout_layers(self.model)
        names = [f"dropout_{i}" for i in range(n_layers)] if self.search.per_layer else ["dropout"]
        if self.search.searches_input_dropout:
            names.append("input_dropout")
        return names
