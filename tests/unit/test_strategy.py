"""`search.strategy`: the defaults of the sampler, the pruner and the early stop (issue 21)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from droptune.core.spec.study import StudySpec

BASE: dict[str, Any] = {"dataset": {"builtin": "iris"}}


def search_of(spec: StudySpec) -> tuple[str, str, str, bool]:
    s = spec.search
    return s.strategy, s.sampler, s.pruner, s.stop_when_settled


def test_the_default_is_the_search_built_for_one_noisy_dimension() -> None:
    spec = StudySpec.model_validate(BASE)
    assert search_of(spec) == ("droptune", "design", "paired", True)


def test_optuna_names_the_search_before_it() -> None:
    spec = StudySpec.model_validate({**BASE, "search": {"strategy": "optuna"}})
    assert search_of(spec) == ("optuna", "tpe", "median", False)


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"sampler": "tpe"}, ("droptune", "tpe", "paired", True)),
        ({"strategy": "optuna", "pruner": "paired"}, ("optuna", "tpe", "paired", False)),
        (
            {"strategy": "droptune", "stop_when_settled": False},
            ("droptune", "design", "paired", False),
        ),
    ],
)
def test_a_field_given_keeps_its_value(
    search: dict[str, Any], expected: tuple[str, str, str, bool]
) -> None:
    assert search_of(StudySpec.model_validate({**BASE, "search": search})) == expected


def test_a_spec_stored_before_strategies_reads_and_runs_as_the_optuna_search() -> None:
    # What an earlier version stored: sampler and pruner written out, stop_when_settled left out
    old = {**BASE, "search": {"n_trials": 20, "sampler": "tpe", "pruner": "median"}}
    for spec in (StudySpec.stored(old), StudySpec.runnable(old)):
        assert isinstance(spec, StudySpec)
        assert search_of(spec) == ("optuna", "tpe", "median", False)
    # A spec stored now says its strategy, and reads back the same.
    new = StudySpec.model_validate(BASE)
    again = StudySpec.stored(new.model_dump(mode="json"))
    assert search_of(again) == search_of(new) == ("droptune", "design", "paired", True)


@pytest.mark.parametrize("bad", ["hyperopt", 3, None])
def test_an_unknown_strategy_is_an_error_naming_the_field(bad: Any) -> None:
    with pytest.raises(ValidationError) as e:
        StudySpec.model_validate({**BASE, "search": {"strategy": bad}})
    assert [err["loc"] for err in e.value.errors()] == [("search", "strategy")]


def test_the_openapi_schema_gives_the_strategy_s_fields_no_fixed_default() -> None:
    """A client filling in schema defaults must not turn `strategy: optuna` into droptune's."""
    props = StudySpec.model_json_schema()["$defs"]["SearchSpec"]["properties"]
    assert props["strategy"]["default"] == "droptune"
    for field in ("sampler", "pruner", "stop_when_settled"):
        assert "default" not in props[field], field
        assert "the strategy's" in props[field]["description"], field
