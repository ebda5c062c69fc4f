"""The dashboard's copy of each answer, written off the training path.

After every batch a worker publishes the study's answer so far into its Optuna study (the note,
the curve graph, the trial notes: storage/dashboard_answer.py). Done in line, that cost 0.3 s
between one batch and the next of a default digits study (py-spy, 2026-12-06): the next stack
waited for plotly's JSON. A `Publisher` does it on its own thread instead: `request(study_id)`
returns at once, a study asked for twice before its turn is published once (with what the
database holds then, the latest), and `close()` waits for what is pending, so a worker that
stops has published every batch it told. The refit's publish (the note gains the test score) is
requested the same way; `publish_study` never raises.
"""

from __future__ import annotations

import logging
import threading

from optuna.storages import RDBStorage
from sqlalchemy.engine import Engine

from droptune.storage.dashboard_answer import publish_study

log = logging.getLogger("droptune.worker")

CLOSE_TIMEOUT_S = 60.0


class Publisher:
    def __init__(self, engine: Engine, storage: RDBStorage) -> None:
        self._engine, self._storage = engine, storage
        self._pending: list[int] = []  # study ids, oldest first, each once
        self._busy = False
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="dashboard-publish", daemon=True)

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, study_id: int) -> None:
        """Publish this study's answer soon (at once when the thread is not running). Called
        from the worker's one loop thread (batches and refits), which also closes it."""
        if not self._thread.is_alive():
            publish_study(self._engine, self._storage, study_id)
            return
        with self._cond:
            if study_id not in self._pending:
                self._pending.append(study_id)
            self._cond.notify_all()

    def flush(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until nothing is pending or being written; False when the time ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        if not self.flush():
            log.warning("the dashboard's copy of some answers was not published before stopping")
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
                study_id = self._pending.pop(0)
                self._busy = True
            try:
                publish_study(self._engine, self._storage, study_id)
            except Exception:  # publish_study never raises; a bug must not end the thread
                log.exception("study %s: publishing its answer to the dashboard broke", study_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
