"""The spec's side of each model kind, looked up by model.kind: how many dropout rates it
searches per layer, its layers for the memory estimate (core.memory; None where the submit cannot
know them: a user's module), and the one line the dashboard shows. The engine's side is
worker/engine/kinds (torch), which core and storage may not import; a new kind adds an entry here
and a module there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from droptune.core import memory
from droptune.core.spec.model import ModelSpec

Image = tuple[int, int, int] | None


@dataclass(frozen=True)
class SpecKind:
    name: str
    dropout_layers: Callable[[ModelSpec], int]
    # (model, inputs, outputs, image shape) -> layers; None: no estimate (admission skips it)
    layers: Callable[[ModelSpec, int, int, Image], list[memory.Layer]] | None
    describe: Callable[[ModelSpec], str]


def _cnn_layers(m: ModelSpec, features: int, classes: int, image: Image) -> list[memory.Layer]:
    assert image is not None, "a CNN needs image data"
    return memory.cnn_layers(image, m.conv_channels, m.hidden[0], classes)


def _custom(m: ModelSpec) -> str:
    return f"custom {m.name}" + (f" {m.options}" if m.options else "")


SPEC_KINDS: dict[str, SpecKind] = {
    k.name: k
    for k in (
        SpecKind(
            "mlp",
            lambda m: len(m.hidden),
            lambda m, f, c, _i: memory.mlp_layers(f, m.hidden, c),
            lambda m: f"mlp {m.hidden}",
        ),
        SpecKind(
            "cnn",
            lambda m: len(m.conv_channels) + 1,  # one per conv block and the hidden FC layer
            _cnn_layers,
            lambda m: f"cnn {m.conv_channels} + fc {m.hidden[0]}",
        ),
        SpecKind("custom", lambda m: m.dropout_layers or 1, None, _custom),
    )
}
