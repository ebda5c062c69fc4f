"""The search part of a study's spec: the range, the trial budget, the sampler and pruner, and
the retry and stopping policies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from droptune.core.spec.strict import FieldError, Strict, from_database, stored

DEFAULT_DROPOUT_HIGH = 0.9  # re-measured: bench/results/range.md
Sampler = Literal["tpe", "gp", "random", "grid", "design"]
Pruner = Literal["none", "median", "hyperband", "paired"]
Strategy = Literal["droptune", "optuna"]
DEFAULT_STRATEGY: Strategy = "droptune"
# What each strategy means for the fields a spec leaves out; a field given keeps its value.
# `droptune` is the search built for one noisy dimension (issue 21): space-filling rates
# refined inside the tied band, the paired pruner, and an end once the answer has settled.
# `optuna` is the search before it: TPE, the median pruner, all n_trials.
STRATEGIES: dict[str, dict[str, Any]] = {
    "droptune": {"sampler": "design", "pruner": "paired", "stop_when_settled": True},
    "optuna": {"sampler": "tpe", "pruner": "median", "stop_when_settled": False},
}
DEFAULT_SAMPLER: Sampler = STRATEGIES[DEFAULT_STRATEGY]["sampler"]


def _the_strategy_s(schema: dict[str, Any]) -> None:
    """OpenAPI: no fixed default for a field whose default is the strategy's (a client that
    filled it in would override `strategy: optuna` with the droptune strategy's value)."""
    schema.pop("default", None)


class SearchSpec(Strict):
    dropout_low: float = Field(0.0, ge=0, lt=1)
    dropout_high: float = Field(DEFAULT_DROPOUT_HIGH, gt=0, lt=1)
    n_trials: int = Field(20, ge=1, le=10000)
    strategy: Strategy = Field(
        DEFAULT_STRATEGY,
        description="droptune (space-filling rates refined inside the tied band, the paired "
        "pruner, stop when settled) or optuna (TPE, the median pruner, all n_trials): the "
        "defaults of sampler, pruner and stop_when_settled; a field given keeps its value",
    )
    sampler: Sampler = Field(
        DEFAULT_SAMPLER,
        description="tpe, gp, random, grid, or design: droptune's space-filling rates that "
        "later batches refine inside the tied band (worker/run/design.py); default: the "
        "strategy's (droptune: design, optuna: tpe)",
        json_schema_extra=_the_strategy_s,
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="seeds the sampler (default: cv.seed), so the same spec on the same data "
        "searches the same rates",
        exclude_if=lambda v: v is None,
    )
    pruner: Pruner = Field(
        STRATEGIES[DEFAULT_STRATEGY]["pruner"],
        description="none, median, hyperband, or paired: stop a member of a stack only when a "
        "strict corrected paired test says it is worse than the stack's leader at that epoch "
        "and the gap, closing at its recent pace, would still be open at the last epoch; "
        "default: the strategy's (droptune: paired, optuna: median)",
        json_schema_extra=_the_strategy_s,
    )
    per_layer: bool = Field(False, description="search one rate per hidden layer")
    input_dropout_low: float = Field(0.0, ge=0, lt=1)
    input_dropout_high: float = Field(0.0, ge=0, lt=1)
    batch_trials: int | None = Field(
        None, ge=1, le=1024, description="trials trained together; null picks from model size"
    )
    max_retries: int = Field(2, ge=0, le=100)
    max_failed: int = Field(10, ge=0, le=10000)
    stop_when_settled: bool = Field(
        STRATEGIES[DEFAULT_STRATEGY]["stop_when_settled"],
        description="end the search before n_trials (then a cap) once a batch moves neither "
        "the recommended rate nor the tied range and the fitted curve expects no rate to beat "
        "the best by a quarter of its standard error; /best says why it stopped; default: "
        "the strategy's (droptune: true, optuna: false)",
        json_schema_extra=_the_strategy_s,
    )

    @model_validator(mode="before")
    @classmethod
    def _strategy_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill what the spec leaves out from its strategy. A spec stored before strategies
        existed was the optuna search, and reads so."""
        if not isinstance(data, dict):
            return data
        strategy = data.get("strategy", "optuna" if from_database(info) else DEFAULT_STRATEGY)
        defaults = STRATEGIES.get(strategy) if isinstance(strategy, str) else None
        if defaults is None:
            return data  # the field's own check names the strategies
        return {**defaults, **data, "strategy": strategy}

    @model_validator(mode="after")
    def _check_bounds(self, info: ValidationInfo) -> SearchSpec:
        if not self.dropout_low < self.dropout_high:
            raise FieldError("dropout_low", "search.dropout_low must be below search.dropout_high")
        if self.input_dropout_low and not self.input_dropout_high and not stored(info):
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
