"""The spec's validation machinery: strict numbers and flags, errors that name their field.

`Strict` is the base of every part of the StudySpec (core/spec/study.py, core/spec/model.py);
`describe_errors` turns pydantic's errors into `{"field", "message"}` for the API and the CLI.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

STORED = "stored"  # validation context key: the spec comes from the database, not a user
RUNNABLE = "runnable"  # context key: a stored spec checked for running (StudySpec.runnable)
# The model's kinds (core/spec/model.py): pydantic puts the kind a union member was picked by
# into an error's location (model.mlp.hidden), which no client names.
MODEL_TAGS = ("mlp", "cnn", "custom")
# Fields someone with their own data tries first; the spec never reads files or URLs.
FILE_FIELDS = ("path", "url", "file", "csv", "uri")
UPLOAD_HINT = (
    "unknown field: droptune does not read files or URLs named in a spec; upload the file "
    "(`droptune dataset upload FILE` or POST /datasets) and pass its id as dataset.id"
)


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
        loc = [str(p) for p in e.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]  # FastAPI's leading location marker only: `dataset.path` is a field
        loc = [
            p for i, p in enumerate(loc) if not (i and loc[i - 1] == "model" and p in MODEL_TAGS)
        ]
        err = (e.get("ctx") or {}).get("error")
        kind = e.get("type", "")
        message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if isinstance(err, FieldError):
            loc += err.field.split(".")
            message = err.message
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")  # the model's kind, the only discriminated union
            message = "Input should be " + " or ".join(
                ", ".join(f"'{t}'" for t in MODEL_TAGS).rsplit(", ", 1)
            )
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
            if loc[-2:-1] == ["dataset"] and loc[-1] in FILE_FIELDS:
                message = UPLOAD_HINT
        out.append({"field": ".".join(loc) or "body", "message": message})
    return out


def stored(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(STORED))


def from_database(info: ValidationInfo) -> bool:
    """Whether the spec was read back from the database (to show it, or to run it)."""
    context = info.context or {}
    return bool(context.get(STORED) or context.get(RUNNABLE))


def _not_a_number(annotation: Any, value: Any) -> str | None:
    """What `value` holds where `annotation` wants a number: "true/false", "a string", or None
    (nothing wrong), looking into lists and mappings of numbers (`model.hidden`, options)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _not_a_number(args[0], value)
    if origin in (Union, types.UnionType):
        return next((w for a in args if (w := _not_a_number(a, value)) is not None), None)
    if origin is list and isinstance(value, list):
        return next((w for v in value if (w := _not_a_number(args[0], v)) is not None), None)
    if origin is dict and isinstance(value, dict):
        items = value.values()
        return next((w for v in items if (w := _not_a_number(args[1], v)) is not None), None)
    if annotation in (int, float) and isinstance(value, bool | str):
        return "true/false" if isinstance(value, bool) else "a string"
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return numbers_are_numbers(cls, value, info)


def numbers_are_numbers(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """JSON's true/false and strings are no numbers, and 0/1 is no flag: pydantic's lax mode
    would store `"epochs": true` as 1 epoch, `"epochs": "5"` as 5 and `"per_layer": 0` as
    false, so a client's mistake (a form's string, a flag for a count) would pass unseen.
    (A model whose field is a union's discriminator, which may have no before-validator, runs
    this for its other fields: core/spec/model.py.)"""
    field = cls.model_fields.get(info.field_name or "")
    if field is None:
        return value
    if field.annotation is bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    wrong = _not_a_number(field.annotation, value)
    if wrong is not None:
        if isinstance(value, list | dict):
            raise ValueError(f"must hold numbers only, not {wrong}")
        raise ValueError(f"must be a number, not {wrong}")
    return value
