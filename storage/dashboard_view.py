"""Optuna's storage as one owner may see it, for the Optuna dashboard of a non-admin.

optuna-dashboard reads a storage whole and knows no owners. `OwnerView` is a storage that holds
only the Optuna studies of one owner's droptune studies: every read that names a study or a trial
of anyone else's raises KeyError, as Optuna's own storage does for an id that does not exist (the
dashboard answers 404), and no other study is listed. Every write raises: the dashboard is
read-only (service/routes/dashboard.py refuses its write routes before they run, so this is the
second lock on that door).

Which studies are the owner's is read from droptune's table and kept for `ttl` seconds (a study
submitted meanwhile shows within that). A trial's study is read from Optuna's trials table, so a
trial id of another owner's study is refused without loading that trial.
"""

from __future__ import annotations

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

from droptune.storage.readmodel.answer_cache import o_studies, o_trials
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies


class ReadOnlyError(RuntimeError):
    pass


class OwnerView(BaseStorage):
    def __init__(self, base: RDBStorage, engine: Engine, owner: str, ttl: float = 2.0) -> None:
        self.base, self.engine, self.owner, self.ttl = base, engine, owner, ttl
        self._ids: frozenset[int] = frozenset()
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    # --- which studies are the owner's -----------------------------------------------------

    def study_ids(self) -> frozenset[int]:
        """The Optuna study ids of the owner's droptune studies (read at most every `ttl` s)."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl:
                names = sa.select(studies.c.optuna_study).where(studies.c.owner == self.owner)
                query = sa.select(o_studies.c.study_id).where(o_studies.c.study_name.in_(names))
                with transaction(self.engine, read_only=True) as conn:
                    self._ids = frozenset(int(i) for i in conn.scalars(query))
                self._read_at = time.monotonic()
            return self._ids

    def _study(self, study_id: int) -> int:
        if study_id not in self.study_ids():
            raise KeyError(f"No study with study_id {study_id} exists.")
        return study_id

    def _trial(self, trial_id: int) -> int:
        query = sa.select(o_trials.c.study_id).where(o_trials.c.trial_id == trial_id)
        with transaction(self.engine, read_only=True) as conn:
            study_id = conn.execute(query).scalar_one_or_none()
        if study_id is None or int(study_id) not in self.study_ids():
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return trial_id

    # --- reads, each checked -----------------------------------------------------------------

    def get_all_studies(self) -> list[FrozenStudy]:
        mine = self.study_ids()
        return [s for s in self.base.get_all_studies() if s._study_id in mine]

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._study(self.base.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.base.get_study_name_from_id(self._study(study_id))

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
