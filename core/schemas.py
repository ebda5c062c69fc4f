"""Result schemas returned by the API and read by the client (kept apart from the tables)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidatorFunctionWrapHandler,
    computed_field,
    field_validator,
)

from droptune.core.spec.answer import AnswerRule
from droptune.core.spec.study import StudySpec


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_from_local(value: datetime) -> datetime:
    return value.astimezone(UTC)  # a naive value is read as local time by astimezone


# Timestamps go out as RFC 3339 with their offset (`...Z`), as OpenAPI's `date-time` asks.
# droptune's tables store naive UTC (db_now), so a naive value here is UTC.
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
# Optuna shows its trials' times as naive local time (FrozenTrial.datetime_start).
LocalDatetime = Annotated[datetime, AfterValidator(_utc_from_local)]

# The API's strings as Literals (the OpenAPI document lists them); core.states has them as
# enums, and tests/unit/test_states.py checks the two agree.
StudyStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
AnswerState = Literal["none", "interim", "final"]


class Score(BaseModel):
    mean: float = Field(description="the mean over the cross-validation splits")
    std: float = Field(description="the standard deviation of the split scores")
    folds: list[float] = Field(description="each split's score")

    @computed_field(  # type: ignore[prop-decorator]
        description="the standard error of the mean, std / sqrt(splits): the ± every answer quotes"
    )
    @property
    def se(self) -> float:
        """The splits overlap (a row trains in K-1 of K folds, and repeats reuse rows), so this
        understates the uncertainty; the paired test corrects for it."""
        return self.std / math.sqrt(len(self.folds)) if self.folds else 0.0


class Progress(BaseModel):
    n_trials: int
    complete: int
    pruned: int
    failed: int = Field(description="trials that failed (an error, a lost worker, a bad score)")
    interrupted: int = Field(
        0, description="trials stopped by a worker shutdown (retried) or by the study's end"
    )
    running: int
    refit: Literal["waiting", "ready", "running", "done", "skipped"] | None = Field(
        None,
        description="the final refit scored on unseen rows: waiting for the search, ready to be "
        "claimed, running, done, or skipped (the study ended otherwise: cancelled, failed); "
        "None: the study has no held-out rows",
    )


class Recommended(BaseModel):
    dropout: float = Field(
        description="the trial's rate; with search.per_layer the mean of its layers' rates "
        "(each layer's is in `params`)"
    )
    rule: AnswerRule
    trial: int
    why: str = Field(description="one sentence a person can read")
    params: dict[str, float] = Field(
        default_factory=dict,
        description="the recommended trial's parameters: `dropout`, or with search.per_layer "
        "`dropout_0`, `dropout_1`, … (one per layer, first layer first), and `input_dropout` "
        "when searched",
    )
    score: Score | None = Field(
        None,
        description="the recommended trial's own score (the answer's headline `score` is the "
        "best trial's); null only in answers stored before it was added",
    )


class Tied(BaseModel):
    """The rates that may be the best, the best included: with `procedure` set, a set that holds
    the truly best trial with probability >= `level` (core/answer/ties.py); an answer stored
    before that (no `procedure`) kept the rates whose pairwise test gave p >= alpha."""

    alpha: float = Field(description="1 - level: the chance the set misses the best trial")
    low: float
    high: float
    rates: list[float]
    trials: list[int]
    level: float | None = Field(
        None, description="family-wise confidence that the set holds the best trial"
    )
    procedure: str | None = Field(None, description="how the set was chosen, in words")
    p_best: list[float] = Field(
        default_factory=list,
        description="each tied trial's estimated probability of being the best (correlated-t "
        "posterior, Benavoli et al. 2017), in the order of `trials`; the trials outside the set "
        "share what is left of 1",
    )
    not_tied_inside: list[float] = Field(
        default_factory=list,
        description="finished rates between low and high that the test does tell apart: the "
        "tied rates need not be one stretch",
    )

    def text(self) -> str:
        """One line for people: the rates, or their range and the exceptions inside it."""
        n = len(self.rates)
        how = (
            f"{self.level:.0%} family-wise"
            if self.level is not None
            else f"paired test, p >= {self.alpha:g}"
        )
        head = f"{n} trial{'s' * (n != 1)} tied with the best ({how})"
        if n <= 6:
            return f"{head}: " + ", ".join(f"{r:.3g}" for r in self.rates)
        out = f"{head}: {self.low:.3g} to {self.high:.3g}"
        if self.not_tied_inside:
            shown = ", ".join(f"{r:.3g}" for r in self.not_tied_inside[:6])
            more = ", …" if len(self.not_tied_inside) > 6 else ""
            out += f", except {shown}{more}"
        return out


class TestPoint(BaseModel):
    dropout: float
    score: float
    ci95: list[float] = Field(description="[low, high]: Wilson (accuracy) or bootstrap")


class TestScore(TestPoint):
    """The recommended rate refit on every training row and scored once on unseen rows."""

    n: int = Field(description="unseen rows scored")
    source: Literal["holdout", "test_dataset"]
    metric: str
    best: TestPoint | None = Field(None, description="the best rate's, when it differs")
    baseline: TestPoint | None = Field(None, description="the same network without dropout")
    refit_seconds: float | None = None


class BestOut(BaseModel):
    study_id: int
    dropout: float | None
    params: dict[str, float]
    score: Score | None
    metric: str
    direction: str
    trial: int | None
    one_se_dropout: float | None
    one_se_trial: int | None
    complete: bool
    status: StudyStatus
    recommended: Recommended | None = None
    tied: Tied | None = None
    warnings: list[str] = Field(default_factory=list)
    test: TestScore | None = None
    engine: str | None = Field(
        None,
        description="how the finished trials trained: `stacked` (folds and trials as one "
        "model), `stacked (torch.vmap)` (a custom module, vmapped), or `member by member` "
        "with the reason (a custom module vmap cannot run); null before a trial finished",
    )
    stopped: str | None = Field(
        None,
        description="with search.stop_when_settled, why the search ended before n_trials: "
        "one sentence with the numbers",
    )

    @computed_field(  # type: ignore[prop-decorator]
        description="none: no answer (no trial has finished, or none did before the study "
        "ended); interim: the study has not ended, so the answer may still change; final: the "
        "study has ended and the answer will not change. `state_why` says it in a sentence"
    )
    @property
    def state(self) -> AnswerState:
        if self.dropout is None:
            return "none"
        return "final" if self.complete else "interim"

    @computed_field(description="the state in one sentence")  # type: ignore[prop-decorator]
    @property
    def state_why(self) -> str:
        state, status = self.state, self.status
        if state == "none":
            if self.complete:
                return f"the study ended ({status}) before any trial finished: there is no answer"
            return "no trial has finished yet"
        if state == "interim":
            return f"the study is {status}: the answer may still change"
        if status == "succeeded":
            return "the study succeeded: this answer will not change"
        return f"the study {status}: this answer, from the trials that finished, will not change"


class StudyOut(BaseModel):
    id: int
    name: str | None
    status: StudyStatus
    reason: str | None
    priority: int
    owner: str
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    ended_at: UtcDatetime | None
    optuna_study: str
    spec: StudySpec
    progress: Progress
    best: BestOut | None = None

    @field_validator("spec", mode="wrap")
    @classmethod
    def _stored_spec(cls, value: object, _handler: ValidatorFunctionWrapHandler) -> StudySpec:
        # A stored spec, read leniently: one an earlier version accepted must still show.
        return value if isinstance(value, StudySpec) else StudySpec.stored(value)


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    offset: int
    limit: int


class TrialOut(BaseModel):
    number: int
    state: str
    params: dict[str, float]
    value: float | None
    score: Score | None
    epochs: int | None
    train_seconds: float | None
    device: str | None
    worker: str | None
    attempt: int
    reason: str | None
    warning: str | None = Field(
        None,
        description="how it was trained, when not as usual: a custom model trained member by "
        "member (it cannot be vmapped), dropout the model keeps at its own rate",
    )
    p_vs_best: float | None = Field(
        None,
        description="paired corrected resampled t-test (Nadeau & Bengio) against the best "
        "trial on the same splits; None for trials not COMPLETE",
    )
    started_at: LocalDatetime | None
    ended_at: LocalDatetime | None


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    device: str
    status: Literal["live", "lost", "stopped"]
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime
    study_id: int | None
    trials: list[int]
    memory_bytes: int | None = Field(
        None, description="the memory one batch may use (DROPTUNE_WORKER_MEMORY_GB or the device's)"
    )
    models: list[str] = Field(
        default_factory=list, description="the custom models it can build (GET /models)"
    )


class ModelOut(BaseModel):
    name: str
    workers: list[str] = Field(description="live workers that have it")
    recent_workers: list[str] = Field(
        description="workers seen this week, not live now, that had it: a study naming it "
        "is accepted and waits for one of them"
    )


class ColumnInfo(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    missing: int = Field(description="missing cells")
    categories: int | None = Field(None, description="distinct values (categorical only)")


# The data formats the product reads: the registry in `datafiles.formats` (which core may not
# import) names the same ones, in the same order (tests/unit/test_formats.py checks).
DATA_FORMATS = ("csv", "npz", "parquet")


class DataSummary(BaseModel):
    """What droptune read from an uploaded file: its shape, task, columns and classes."""

    # A string, not a Literal of DATA_FORMATS: a format registered with datafiles.formats is
    # accepted without an edit here; the API's schema still lists the product's formats.
    format: str = Field(json_schema_extra={"enum": list(DATA_FORMATS)})
    rows: int
    features: int = Field(description="feature columns (tabular), or C*H*W (images)")
    task: Literal["classification", "regression"]
    task_inferred: bool = Field(description="decided from the target, not given")
    target: str | None = Field(description="the label column (None for NPZ: its `y` array)")
    columns: list[ColumnInfo] = Field(description="feature columns in file order")
    classes: list[str] | None = Field(description="classification: labels in code order")
    class_counts: list[int] | None
    image_shape: list[int] | None = Field(description="[C, H, W] for image arrays")
    encoded_features: int = Field(
        description="inputs after encoding: numeric + missing indicators + one-hot categories"
    )
    target_mean: float | None = None
    target_std: float | None = None
    held_bytes: int | None = Field(
        None,
        description="bytes the workers hold once it is decompressed and read: what counts "
        "against DROPTUNE_QUOTA_DATASET_MB (None for data sets stored before it was measured)",
    )


class DatasetOut(DataSummary):
    id: int
    name: str
    owner: str
    sha256: str
    bytes: int
    created_at: UtcDatetime
    studies: list[int] = Field(description="studies that train on it, newest first")


class TrialPage(BaseModel):
    """A page of a study's trials by number, like StudyPage: `total` counts every trial."""

    items: list[TrialOut]
    total: int
    offset: int
    limit: int


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int
    offset: int
    limit: int
