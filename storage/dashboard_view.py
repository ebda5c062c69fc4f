"""Optuna's storage as the Optuna dashboard reads it: one owner's studies (or, for an admin,
every droptune study), read-only, each named with its status and answer.

optuna-dashboard reads a storage whole and knows no owners. `OwnerView` is a storage that holds
only the Optuna studies of one owner's droptune studies (`owner=None`: every owner's): every read
that names a study or a trial of anyone else's raises KeyError, as Optuna's own storage does for
an id that does not exist (the dashboard answers 404), and no other study is listed. Every write
raises: the dashboard is read-only (service/routes/dashboard.py refuses its write routes before
they run, so this is the second lock on that door).

The dashboard's study list shows a study's name and direction only, so the view names each
study `<name> · <status> · recommended <rate>` (study list, study page title); a name it gave
is read back to the study (optuna-dashboard loads studies by name too).

Which studies are the owner's, and their labels, are read from droptune's table and kept for
`ttl` seconds (a study submitted meanwhile shows within that). A trial's study is read from
Optuna's trials table, so a trial id of another owner's study is refused without loading it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Container, Sequence
from typing import Any, NoReturn

import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.study._frozen import FrozenStudy
from optuna.study._study_direction import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from droptune.core.answer.rates import layer_rates
from droptune.storage.readmodel.answer_cache import o_studies, o_trials
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies


class ReadOnlyError(RuntimeError):
    pass


NAMES_KEPT = 10_000  # names given, kept so a name shown a moment ago still reads back
DOT = " \u00b7 "


def label(optuna_name: str, status: str, answer: Any) -> str:
    """`<Optuna study name> · <status> · recommended <rate>`: what the study list shows."""
    parts = [optuna_name, str(status)]
    if isinstance(answer, str):  # a JSON column read as text on some drivers
        answer = json.loads(answer)
    rec = (answer or {}).get("recommended") if isinstance(answer, dict) else None
    if isinstance(rec, dict) and rec.get("dropout") is not None:
        layers = layer_rates(rec.get("params") or {})
        rate = "/".join(f"{v:.2f}" for v in layers) if len(layers) > 1 else f"{rec['dropout']:.2f}"
        parts.append(f"recommended {rate}")
    return DOT.join(parts)


class OwnerView(BaseStorage):
    def __init__(
        self, base: RDBStorage, engine: Engine, owner: str | None, ttl: float = 2.0
    ) -> None:
        self.base, self.engine, self.owner, self.ttl = base, engine, owner, ttl
        # Optuna study id -> (its Optuna name, the name the dashboard shows)
        self._labels: dict[int, tuple[str, str]] = {}
        self._named: dict[str, int] = {}  # every name given -> its study (read back by name)
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    # --- which studies are the owner's, and their names --------------------------------------

    def labels(self) -> dict[int, tuple[str, str]]:
        """The owner's studies' Optuna ids and the names shown for them (read at most every
        `ttl` seconds)."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl:
                s, o = studies.c, o_studies.c
                query = sa.select(o.study_id, o.study_name, s.status, s.answer).join(
                    studies, s.optuna_study == o.study_name
                )
                if self.owner is not None:
                    query = query.where(s.owner == self.owner)
                with transaction(self.engine, read_only=True) as conn:
                    rows = conn.execute(query).all()
                self._labels = {int(r[0]): (r[1], label(r[1], r[2], r[3])) for r in rows}
                if len(self._named) > NAMES_KEPT:
                    self._named.clear()
                self._named.update({shown: k for k, (_, shown) in self._labels.items()})
                self._read_at = time.monotonic()
            return self._labels

    def _visible(self, study_id: int, name: str | None = None) -> bool:
        """An admin's view (owner None) holds every Optuna study, droptune's or not. An owner's
        holds the ids read with their Optuna names, checked against the study's name now: SQLite
        gives a deleted study's id to the next one, which may be another owner's, and the ids
        are kept for `ttl` seconds (an outside attack read another owner's study so)."""
        if self.owner is None:
            return True
        entry = self.labels().get(study_id)
        if entry is None:
            return False
        if name is None:
            try:
                name = self.base.get_study_name_from_id(study_id)
            except KeyError:
                return False
        return name == entry[0]

    def _study(self, study_id: int) -> int:
        if not self._visible(study_id):
            raise KeyError(f"No study with study_id {study_id} exists.")
        return study_id

    def _trial(self, trial_id: int) -> int:
        if self.owner is None:
            return trial_id  # the storage's own KeyError for one that does not exist
        query = sa.select(o_trials.c.study_id).where(o_trials.c.trial_id == trial_id)
        with transaction(self.engine, read_only=True) as conn:
            study_id = conn.execute(query).scalar_one_or_none()
        if study_id is None or not self._visible(int(study_id)):
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return trial_id

    # --- reads, each checked -----------------------------------------------------------------

    def get_all_studies(self) -> list[FrozenStudy]:
        shown = self.labels()
        return [
            FrozenStudy(
                shown[s._study_id][1] if s._study_id in shown else s.study_name,
                None,
                s.user_attrs,
                s.system_attrs,
                s._study_id,
                directions=s.directions,
            )
            for s in self.base.get_all_studies()
            if self._visible(s._study_id, s.study_name)
        ]

    def get_study_id_from_name(self, study_name: str) -> int:
        self.labels()
        given = self._named.get(study_name)
        if given is not None:
            return self._study(given)
        return self._study(self.base.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        entry = self.labels().get(self._study(study_id))
        return entry[1] if entry is not None else self.base.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.base.get_study_directions(self._study(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.base.get_study_user_attrs(self._study(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.base.get_study_system_attrs(self._study(study_id))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self.base.get_all_trials(self._study(study_id), deepcopy=deepcopy, states=states)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        return self.base.get_n_trials(self._study(study_id), state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.base.get_best_trial(self._study(study_id))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.base.get_trial_id_from_study_id_trial_number(
            self._study(study_id), trial_number
        )

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.base.get_trial(self._trial(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.base.get_trial_system_attrs(self._trial(trial_id))

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.base.get_trial_user_attrs(self._trial(trial_id))

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self.base.get_trial_params(self._trial(trial_id))

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self.base.get_trial_param(self._trial(trial_id), param_name)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self.base.get_trial_number_from_id(self._trial(trial_id))

    # --- writes: refused -----------------------------------------------------------------------

    def _refuse(self, *_: Any, **__: Any) -> NoReturn:
        raise ReadOnlyError("the dashboard is read-only: change studies through droptune's API")

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        self._refuse()

    def delete_study(self, study_id: int) -> None:
        self._refuse()

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._refuse()

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._refuse()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._refuse()

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self._refuse()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        self._refuse()

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._refuse()

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._refuse()

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._refuse()
