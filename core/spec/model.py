"""The study spec's model: the built-in MLP or CNN, or a model registered on the workers.

One class per kind, a union discriminated by `kind` (StudySpec.model), so the OpenAPI document
shows which fields go with which kind and each kind refuses the others' fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from droptune.core.spec.strict import RUNNABLE, FieldError, numbers_are_numbers, stored

DEFAULT_CHANNELS = (32, 64)
KINDS = ("mlp", "cnn", "custom")
CUSTOM_ONLY = ("name", "options", "dropout_layers")
_KIND_HELP = "the built-in MLP or CNN, or `custom`: a model registered on workers"

Hidden = list[Annotated[int, Field(ge=1, le=8192)]]


def _hidden(help: str) -> Any:
    return Field(default_factory=lambda: [256, 256], min_length=1, max_length=8, description=help)


class _Kind(BaseModel):
    """Strict (core/spec/strict.py) but for `kind`: pydantic allows no before-validator on a
    discriminator, so the numbers check names the other fields."""

    model_config = ConfigDict(extra="forbid")

    @field_validator(
        "hidden", "channels", "options", "dropout_layers", mode="before", check_fields=False
    )
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return numbers_are_numbers(cls, value, info)


def _no_custom_fields(data: Any) -> None:
    """A built-in kind given a custom model's field: the message every version gave."""
    if isinstance(data, dict) and any(k in data for k in CUSTOM_ONLY):
        raise FieldError(
            "kind", "model.name, options and dropout_layers are for kind 'custom' only"
        )


class MLPModel(_Kind):
    kind: Literal["mlp"] = Field("mlp", description=_KIND_HELP)
    hidden: Hidden = _hidden("hidden layer sizes")

    @model_validator(mode="before")
    @classmethod
    def _foreign(cls, data: Any, info: ValidationInfo) -> Any:
        _no_custom_fields(data)
        if (
            isinstance(data, dict)
            and "channels" in data
            and (stored(info) or (info.context or {}).get(RUNNABLE))
        ):
            # Specs stored by 0001 (and MLP submits that named channels) carry CNN channels an
            # MLP never used: still readable and runnable, without them.
            data = {k: v for k, v in data.items() if k != "channels"}
        return data


class CNNModel(_Kind):
    kind: Literal["cnn"] = Field(description=_KIND_HELP)
    hidden: Hidden = _hidden("the fully connected layer's size (the first only)")
    channels: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        None, min_length=1, max_length=4, description="conv channels per block (default [32, 64])"
    )

    @model_validator(mode="before")
    @classmethod
    def _foreign(cls, data: Any) -> Any:
        _no_custom_fields(data)
        return data

    @model_validator(mode="after")
    def _default_channels(self) -> CNNModel:
        if self.channels is None:  # stored filled in, as every version did
            self.channels = list(DEFAULT_CHANNELS)
        return self

    @property
    def conv_channels(self) -> list[int]:
        return list(self.channels or DEFAULT_CHANNELS)


class CustomModel(_Kind):
    kind: Literal["custom"] = Field(description=_KIND_HELP)
    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
        description="the registered model's name (GET /models lists them)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments for the model's factory (JSON scalars and lists of them)",
        exclude_if=lambda v: not v,
    )
    dropout_layers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="with search.per_layer: how many dropout modules the model has (one rate "
        "each; the worker checks)",
        exclude_if=lambda v: v is None,
    )

    @model_validator(mode="before")
    @classmethod
    def _messages(cls, data: Any) -> Any:
        """The messages custom specs always got, before pydantic's generic ones."""
        if not isinstance(data, dict):
            return data
        if data.get("name") is None:
            raise FieldError("name", "a custom model needs model.name (GET /models)")
        if "hidden" in data or "channels" in data:
            raise FieldError(
                "hidden", "a custom model takes its sizes in model.options, not hidden/channels"
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> CustomModel:
        _check_options(self.options)
        return self


ModelSpec = MLPModel | CNNModel | CustomModel


def default_kind(model: Any) -> Any:
    """`kind` may be left out and means mlp (the discriminator itself needs it)."""
    if isinstance(model, dict) and "kind" not in model:
        return {"kind": "mlp", **model}
    return model


def check_search(model: ModelSpec, per_layer: bool, input_dropout: bool) -> None:
    """The model's side of the search's fields (submit-only: earlier versions stored such
    specs, whose trials fail in the engine)."""
    if model.kind != "mlp" and input_dropout:
        raise FieldError(
            "search.input_dropout_high", "input dropout is only supported for MLP models"
        )
    if not isinstance(model, CustomModel):
        return
    if model.dropout_layers is not None and not per_layer:
        raise FieldError(
            "model.dropout_layers", "is only used with search.per_layer (one rate each)"
        )
    if per_layer and model.dropout_layers is None:
        raise FieldError(
            "model.dropout_layers",
            "search.per_layer on a custom model needs model.dropout_layers: how many "
            "dropout modules it has (one rate each)",
        )


def _check_options(options: dict[str, Any]) -> None:
    """A factory's keyword arguments: identifiers to JSON scalars or flat lists of them."""
    if len(options) > 32:
        raise FieldError("options", "at most 32 options")
    for key, value in options.items():
        if not key.isidentifier():
            raise FieldError("options", f"{key!r} is not a keyword argument name")
        items = value if isinstance(value, list) else [value]
        if len(items) > 64 or not all(
            isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 200)
            for v in items
        ):
            raise FieldError(
                f"options.{key}",
                "must be a number, true/false, a string (up to 200 characters) or a list of "
                "up to 64 of them",
            )
