"""The custom models a worker can build: factories a team installs on its worker machines.

Two sources, never the request: the entry-point group `droptune.models` of installed packages
(`[project.entry-points."droptune.models"] resnet_tiny = "team_models.vision:resnet_tiny"`), and,
for development, `DROPTUNE_MODELS="name=package.module:function,..."` on the worker. A spec only
names a model (`{"model": {"kind": "custom", "name": "resnet_tiny", "options": {...}}}`); the API
never imports user code, and a worker advertises the names it loaded (droptune_workers.models)
and claims only studies whose model it has.

The factory contract: `factory(n_inputs, n_outputs, **options) -> torch.nn.Module`, where
`n_inputs` is the number of features of a table (int) or the image shape (C, H, W) as a tuple,
and `n_outputs` the number of classes (1 for regression). The module maps a float batch
`(N, n_inputs)` / `(N, C, H, W)` to `(N, n_outputs)` logits (or predictions); every
`nn.Dropout`/`Dropout1d/2d/3d` in it is a rate droptune tunes.

Also how a spec names the model the engine builds (`model_kind`, `model_config`).

Imports only the stdlib (the engine lazily, when training): loading a factory imports its
package, which imports torch itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from droptune.core.spec.model import DEFAULT_CHANNELS, CNNModel
from droptune.core.spec.model import CustomModel as CustomModelSpec

if TYPE_CHECKING:
    from droptune.core.spec.study import StudySpec
    from droptune.worker.engine.kinds import ModelKind

log = logging.getLogger("droptune.worker")

GROUP = "droptune.models"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
Factory = Callable[..., Any]


class PluginError(ValueError):
    """DROPTUNE_MODELS cannot be read, or names a factory that cannot be loaded."""


def parse_env(value: str) -> list[EntryPoint]:
    """`name=package.module:function,...` as entry points of the group."""
    found = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, target = (x.strip() for x in item.partition("="))
        if not sep or not NAME.fullmatch(name) or ":" not in target:
            raise PluginError(f"DROPTUNE_MODELS: {item!r} is not name=package.module:function")
        found.append(EntryPoint(name=name, value=target, group=GROUP))
    return found


def load_models(env_value: str | None) -> dict[str, Factory]:
    """Every factory this worker can call, by name: installed entry points, then
    DROPTUNE_MODELS (which wins on a clash, for development). An installed entry point that
    fails to import is skipped with a warning (the worker still runs the others); a
    DROPTUNE_MODELS entry that fails stops the worker, whose operator just asked for it."""
    models: dict[str, Factory] = {}
    for ep in entry_points(group=GROUP):
        if not NAME.fullmatch(ep.name):
            log.warning("entry point %r of %s: not a model name; skipped", ep.name, GROUP)
            continue
        try:
            models[ep.name] = _callable(ep)
        except Exception as exc:  # a broken package must not stop the worker
            log.warning("model %r (%s) cannot be loaded, skipped: %s", ep.name, ep.value, exc)
    for ep in parse_env(env_value or ""):
        try:
            models[ep.name] = _callable(ep)
        except Exception as exc:
            raise PluginError(
                f"DROPTUNE_MODELS: {ep.name}={ep.value} cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return models


def _callable(ep: EntryPoint) -> Factory:
    target = ep.load()
    if not callable(target):
        raise TypeError(f"{ep.value} is not callable")
    return target  # type: ignore[no-any-return]


def model_kind(spec: StudySpec) -> ModelKind:
    """The engine's kind of the spec's model (worker/engine/kinds): how its trials train."""
    from droptune.worker.engine import kinds  # torch: only when training

    return kinds.get(spec.model.kind)


def model_config(spec: StudySpec, models: Mapping[str, Factory] | None = None) -> Any:
    """The engine's config of the spec's model, from its fields (channels with their default
    filled in, which the dump leaves out); for a registered model, the factory this worker
    loaded by that name (claims are filtered by model: only a worker restarted without it can
    miss it, and the kind then raises FactoryError)."""
    from droptune.worker.engine import kinds  # torch: only when training

    m = spec.model
    fields = {**m.model_dump(), "channels": list(DEFAULT_CHANNELS)}
    if isinstance(m, CNNModel):
        fields["channels"] = m.conv_channels
    if isinstance(m, CustomModelSpec):
        fields["factory"] = (models or {}).get(m.name)
        fields["per_layer"] = spec.search.per_layer
    return kinds.config(m.kind, fields)
