"""What a batch (worker/run/batch.py) and a refit (worker/run/refit.py) need from the worker that
runs them, and nothing more."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from optuna.storages import RDBStorage
from sqlalchemy.engine import Engine

from droptune.storage.dashboard_answer import publish_study


@dataclass
class BatchContext:
    engine: Engine
    optuna: RDBStorage
    device: torch.device
    worker_id: str
    stop: threading.Event  # set: the worker is stopping (a signal)
    on_current: Callable[[int | None, list[int]], None] = lambda _s, _t: None
    models: Mapping[str, Callable[..., Any]] = field(default_factory=dict)  # custom, by name
    # the worker's Publisher.request (worker/run/publisher.py); None: publish in line
    publisher: Callable[[int], None] | None = None

    def publish(self, study_id: int) -> None:
        """The study's answer so far to its dashboard (never raises)."""
        if self.publisher is not None:
            self.publisher(study_id)
        else:
            publish_study(self.engine, self.optuna, study_id)
