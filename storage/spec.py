"""The StudySpec: the one definition of a study, used by the API, the worker and the client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

BUILTIN_DATASETS = ("digits", "breast_cancer", "wine", "iris", "synthetic")
# Smallest class count of each bundled data set: the upper bound for `cv.folds`.
BUILTIN_MIN_CLASS_COUNT = {"digits": 174, "breast_cancer": 212, "wine": 48, "iris": 50}
MAX_FOLD_CELLS = 2**28  # folds x samples x features a worker holds (float32: 1 GiB)
STORED = "stored"  # validation context key: the spec comes from the database, not a user
SYNTHETIC_OPTIONS = ("n_samples", "n_features", "n_informative", "n_classes", "seed")


class FieldError(ValueError):
    """A check across fields that names the field at fault (relative to the model raising it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Pydantic's errors as `{"field": "search.dropout_low", "message": ...}`, one per error,
    with the field a cross-field check blames and without pydantic's internal wording."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        err = (e.get("ctx") or {}).get("error")
        kind = e.get("type", "")
        message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if isinstance(err, FieldError):
            loc += err.field.split(".")
            message = err.message
        elif kind == "json_invalid":
            loc = []
            message = f"the body is not valid JSON ({(e.get('ctx') or {}).get('error', '?')})"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = "must be a JSON object (a mapping of fields)"
            if not loc:
                message = (
                    "the body must be a JSON object (sent with Content-Type: application/json)"
                )
        elif kind == "extra_forbidden":
            message = "unknown field"
        out.append({"field": ".".join(loc) or "body", "message": message})
    return out


def _stored(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(STORED))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    builtin: Literal["digits", "breast_cancer", "wine", "iris", "synthetic"] = Field(
        description="a data set bundled with scikit-learn, or `synthetic` (make_classification)"
    )
    options: dict[str, int] = Field(
        default_factory=dict,
        description="for `synthetic`: n_samples, n_features, n_informative, n_classes, seed",
    )

    @model_validator(mode="after")
    def _check_options(self, info: ValidationInfo) -> DatasetSpec:
        if self.builtin != "synthetic":
            if self.options:
                raise FieldError("options", f"data set {self.builtin!r} takes no options")
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
        if not _stored(info) and not 0 <= o["seed"] <= 2**32 - 1:
            raise FieldError("options.seed", "must be between 0 and 4294967295")
        return self

    def synthetic_options(self) -> dict[str, int]:
        defaults = {"n_samples": 1000, "n_features": 20, "n_informative": 10, "n_classes": 2}
        return {**defaults, "seed": 0, **self.options}

    def min_class_count(self) -> int:
        if self.builtin == "synthetic":
            o = self.synthetic_options()
            # make_classification balances classes; flip_y may move a few samples.
            return max(1, int(o["n_samples"] * 0.9) // o["n_classes"])
        return BUILTIN_MIN_CLASS_COUNT[self.builtin]


class ModelSpec(_Strict):
    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [256, 256], min_length=1, max_length=8
    )
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [32, 64],
        min_length=1,
        max_length=4,
        description="conv channels per block (cnn only)",
    )


class TrainingSpec(_Strict):
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)


class CVSpec(_Strict):
    folds: int = Field(5, ge=2, description="2 up to the smallest class count")
    metric: Literal["accuracy", "log_loss"] = "accuracy"
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.metric == "accuracy" else "minimize"


class SearchSpec(_Strict):
    dropout_low: float = Field(0.0, ge=0, lt=1)
    dropout_high: float = Field(0.8, gt=0, lt=1)
    n_trials: int = Field(20, ge=1, le=10000)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    per_layer: bool = Field(False, description="search one rate per hidden layer")
    input_dropout_low: float = Field(0.0, ge=0, lt=1)
    input_dropout_high: float = Field(0.0, ge=0, lt=1)
    batch_trials: int | None = Field(
        None, ge=1, le=1024, description="trials trained together; null picks from model size"
    )
    max_retries: int = Field(2, ge=0, le=100)
    max_failed: int = Field(10, ge=0, le=10000)

    @model_validator(mode="after")
    def _check_bounds(self, info: ValidationInfo) -> SearchSpec:
        if not self.dropout_low < self.dropout_high:
            raise FieldError("dropout_low", "search.dropout_low must be below search.dropout_high")
        if self.input_dropout_low and not self.input_dropout_high and not _stored(info):
            raise FieldError(  # submit-only: once stored, input dropout is just not searched
                "input_dropout_high",
                "set search.input_dropout_high too: input dropout is searched only when it is > 0",
            )
        if self.input_dropout_high and not self.input_dropout_low < self.input_dropout_high:
            raise FieldError(
                "input_dropout_low",
                "search.input_dropout_low must be below search.input_dropout_high",
            )
        return self

    @property
    def searches_input_dropout(self) -> bool:
        return self.input_dropout_high > 0


class StudySpec(_Strict):
    name: str | None = Field(None, max_length=200)
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    cv: CVSpec = Field(default_factory=CVSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    priority: int = Field(0, ge=-1000, le=1000)

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
            return cls.model_validate(raw)
        except ValidationError as e:
            return "; ".join(f"{d['field']}: {d['message']}" for d in describe_errors(e.errors()))

    @model_validator(mode="after")
    def _check_cross_fields(self, info: ValidationInfo) -> StudySpec:
        smallest = self.dataset.min_class_count()
        if self.cv.folds > smallest:
            raise FieldError(
                "cv.folds",
                f"{self.cv.folds} folds exceed the smallest class count of "
                f"{self.dataset.builtin!r} ({smallest})",
            )
        if self.model.kind == "cnn" and self.dataset.builtin != "digits":
            raise FieldError("model.kind", "'cnn' needs image data: dataset.builtin 'digits'")
        submitted = not _stored(info)
        # Submit-only: earlier versions stored such specs (their trials fail in the engine).
        if submitted and self.model.kind == "cnn" and self.search.searches_input_dropout:
            raise FieldError(
                "search.input_dropout_high", "input dropout is only supported for MLP models"
            )
        if submitted and self.dataset.builtin == "synthetic":
            # A worker keeps K standardised copies of the data, [K, n_samples, n_features].
            o = self.dataset.synthetic_options()
            cells = self.cv.folds * o["n_samples"] * o["n_features"]
            if cells > MAX_FOLD_CELLS:
                raise FieldError(
                    "dataset.options",
                    f"{self.cv.folds} folds x {o['n_samples']} samples x {o['n_features']} "
                    f"features is {cells * 4 / 2**30:.1f} GiB of fold data per worker; at most "
                    f"{MAX_FOLD_CELLS * 4 // 2**30} GiB: fewer samples, features or folds",
                )
        return self

    def param_names(self) -> list[str]:
        """The Optuna parameters this study searches, in order."""
        n_layers = (
            len(self.model.channels) + 1 if self.model.kind == "cnn" else len(self.model.hidden)
        )
        names = [f"dropout_{i}" for i in range(n_layers)] if self.search.per_layer else ["dropout"]
        if self.search.searches_input_dropout:
            names.append("input_dropout")
        return names
