"""The spec's side of each model kind, looked up by model.kind: how many dropout rates it
searches per layer, its layers for the memory estimate (core.memory; None where the submit cannot
know them: a user's module), and the one line the dashboard shows. The engine's side is
worker/engine/kinds (torch), which core and storage may not import; a new kind adds an entry here
and a module there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from droptune.core import memory
from droptune.core.spec.model import CNNModel, CustomModel, MLPModel, ModelSpec

Image = tuple[int, int, int] | None


@dataclass(frozen=True)
class SpecKind:
    name: str
    dropout_layers: Callable[[ModelSpec], int]
    # (model, inputs, outputs, image shape) -> layers; None: no estimate (admission skips it)
    layers: Callable[[ModelSpec, int, int, Image], list[memory.Layer]] | None
    describe: Callable[[ModelSpec], str]


def _cnn(m: ModelSpec) -> CNNModel:
    # Looked up by m.kind: the entry's kind is the spec's class (the union's discriminator).
    assert isinstance(m, CNNModel), m.kind
    return m


def _mlp(m: ModelSpec) -> MLPModel:
    assert isinstance(m, MLPModel), m.kind
    return m


def _custom_model(m: ModelSpec) -> CustomModel:
    assert isinstance(m, CustomModel), m.kind
    return m


def _cnn_layers(m: ModelSpec, features: int, classes: int, image: Image) -> list[memory.Layer]:
    assert image is not None, "a CNN needs image data"
    cnn = _cnn(m)
    return memory.cnn_layers(image, cnn.conv_channels, cnn.hidden[0], classes)


def _custom(m: ModelSpec) -> str:
    c = _custom_model(m)
    return f"custom {c.name}" + (f" {c.options}" if c.options else "")


def _describe_cnn(m: ModelSpec) -> str:
    cnn = _cnn(m)
    return f"cnn {cnn.conv_channels} + fc {cnn.hidden[0]}"


SPEC_KINDS: dict[str, SpecKind] = {
    k.name: k
    for k in (
        SpecKind(
            "mlp",
            lambda m: len(_mlp(m).hidden),
            lambda m, f, c, _i: memory.mlp_layers(f, _mlp(m).hidden, c),
            lambda m: f"mlp {_mlp(m).hidden}",
        ),
        SpecKind(
            "cnn",
            lambda m: len(_cnn(m).conv_channels) + 1,  # one per conv block and the FC layer
            _cnn_layers,
            _describe_cnn,
        ),
        SpecKind("custom", lambda m: _custom_model(m).dropout_layers or 1, None, _custom),
    )
}
