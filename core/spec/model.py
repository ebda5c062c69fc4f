"""The study spec's model: the built-in MLP or CNN, or a model registered on the workers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from droptune.core.spec.strict import FieldError, Strict

DEFAULT_CHANNELS = (32, 64)


class ModelSpec(Strict):
    kind: Literal["mlp", "cnn", "custom"] = Field(
        "mlp", description="the built-in MLP or CNN, or `custom`: a model registered on workers"
    )
    hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [256, 256],
        min_length=1,
        max_length=8,
        description="hidden layer sizes (mlp; the cnn's fully connected layer is the first)",
        exclude_if=lambda v: not v,  # emptied for a custom model, which has its own
    )
    channels: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="conv channels per block (cnn only; default [32, 64])",
        exclude_if=lambda v: v is None,  # an MLP's spec does not show the CNN's channels
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
        description="custom only: the registered model's name (GET /models lists them)",
        exclude_if=lambda v: v is None,
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="custom only: keyword arguments for the model's factory (JSON scalars "
        "and lists of them)",
        exclude_if=lambda v: not v,
    )
    dropout_layers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="custom with search.per_layer: how many dropout modules the model has "
        "(one rate each; the worker checks)",
        exclude_if=lambda v: v is None,
    )

    @model_validator(mode="after")
    def _by_kind(self) -> ModelSpec:
        if self.kind == "cnn" and self.channels is None:
            self.channels = list(DEFAULT_CHANNELS)
        if self.kind == "custom":
            if self.name is None:
                raise FieldError("name", "a custom model needs model.name (GET /models)")
            _check_options(self.options)
            if self.model_fields_set & {"hidden", "channels"}:
                raise FieldError(
                    "hidden", "a custom model takes its sizes in model.options, not hidden/channels"
                )
            self.hidden, self.channels = [], None  # the built-in models' sizes: unused
        elif self.name is not None or self.options or self.dropout_layers is not None:
            raise FieldError(
                "kind", "model.name, options and dropout_layers are for kind 'custom' only"
            )
        return self

    @property
    def conv_channels(self) -> list[int]:
        return list(self.channels or DEFAULT_CHANNELS)


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
