"""A heartbeat thread around the work: renews the leases, notices lost leases and ended studies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.engine import Engine

from droptune.core.errors import StorageError
from droptune.storage.jobs import registry
from droptune.storage.jobs.queue import Beat

log = logging.getLogger("droptune.worker")


class LeaseHeartbeat:
    """`with LeaseHeartbeat(...) as hb:` beats every `interval` seconds until the block ends.

    Blocking torch code holds the GIL only in short stretches, so a thread suits it. What the
    beats learn (`lost`, `ended`) the training loop reads at its next epoch.
    """

    def __init__(
        self,
        engine: Engine,
        worker_id: str,
        interval: float,
        current: Callable[[], tuple[int | None, list[int]]],
    ) -> None:
        self._engine = engine
        self._worker_id = worker_id
        self._interval = interval
        self._current = current
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="droptune-heartbeat", daemon=True)
        self.lost: set[int] = set()  # lease ids another process has recovered
        self.ended: dict[int, str] = {}  # studies that have ended (cancelled, failed): id -> status
        self._held: set[int] = set()
        self._beating = threading.Lock()

    def hold(self, lease_ids: set[int]) -> None:
        """Start watching a new batch's leases (an empty set when idle)."""
        self.lost = set()
        self.ended = {}
        self._held = set(lease_ids)

    def beat(self) -> Beat | None:
        # One beat at a time: the thread's beat must not read the batch it is on, be overtaken
        # by the batch's last beat (which says the worker is idle), and land after it.
        with self._beating:
            study_id, trials = self._current()
            try:
                held = self._held
                b = registry.heartbeat(self._engine, self._worker_id, study_id, trials, held)
            except StorageError as exc:
                log.warning("heartbeat failed (will retry): %s", exc)
                return None
        self.lost |= held - b.live_leases
        self.ended |= b.ended_studies
        return b

    def _run(self) -> None:
        # Never dies of an error: a silent heartbeat would let every lease of a live worker go
        # stale and be retried (and count against max_failed) while it trains on.
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed (will retry)")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
