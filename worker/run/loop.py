"""The worker: claim trial slots, train them as one batch, tell Optuna, repeat; stop cleanly."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType

import torch

from droptune.core import logs
from droptune.core.errors import StorageError
from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue, refits, registry
from droptune.storage.jobs.lifecycle import NO_TRIAL, Why, settle
from droptune.storage.jobs.notify import QueueWaiter
from droptune.storage.jobs.recovery import recover_stale
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.sql.db import create_engine, is_outage
from droptune.worker.engine.data import FoldData, prepare_folds
from droptune.worker.engine.sizing import auto_batch_trials
from droptune.worker.engine.stacked import warm_up
from droptune.worker.run import plugins
from droptune.worker.run.batch import BatchRunner
from droptune.worker.run.context import BatchContext
from droptune.worker.run.datasets import FileCache, load_for_search
from droptune.worker.run.design import design_width
from droptune.worker.run.heartbeat import LeaseHeartbeat
from droptune.worker.run.plugins import model_config, model_kind
from droptune.worker.run.publisher import Publisher
from droptune.worker.run.refit import RefitRunner
from droptune.worker.run.settings import WorkerSettings

log = logging.getLogger("droptune.worker")

# Unexpected errors in a row in recovery or claiming after which the worker gives up.
MAX_BUGS = 10


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    return device


def device_memory(device: torch.device) -> int | None:
    """The device's total memory: the GPU's, or the machine's physical RAM on a CPU (None where
    the platform does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class _DataCache:
    """The folds of the last study, kept on the device between batches of the same study."""

    files: FileCache
    key: str = ""
    data: FoldData | None = None
    hits: int = field(default=0)

    def get(self, spec: StudySpec, device: torch.device) -> FoldData:
        cv, holdout = spec.cv, spec.evaluation.holdout or 0.0
        key = (
            f"{spec.dataset.model_dump_json()}|{cv.folds}|{cv.repeats}|{cv.seed}|{holdout}|{device}"
        )
        if key != self.key or self.data is None:
            self.data = None  # free the last study's folds before building these
            ds = load_for_search(self.files, spec)
            self.data = prepare_folds(ds, cv.folds, cv.seed, device, cv.repeats)
            self.key = key
        return self.data


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.engine = create_engine(settings.database_url)
        self.optuna = optuna_storage(settings.database_url)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._cache = _DataCache(
            FileCache(self.engine, settings.cache_dir, int(settings.cache_mb * 2**20))
        )
        self._current: tuple[int | None, list[int]] = (None, [])
        self._last_recovery = 0.0
        self._bugs = 0  # errors in a row in recovery or claiming that were not outages
        # The custom models this worker can build, by name (a bad DROPTUNE_MODELS stops it).
        self.models = plugins.load_models(settings.models)
        if self.models:
            log.info("custom models: %s", ", ".join(sorted(self.models)))

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        # Event.set takes a lock: a second signal landing inside it must not set it again.
        if not self._stop.is_set():
            log.info("worker %s: signal %s, stopping after the current epoch", self.id, signum)
            self._stop.set()

    def run(self) -> int:
        """Loop until stopped (or idle, with exit_when_idle); return the exit status."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        warm_up()
        registry.register(
            self.engine,
            self.id,
            socket.gethostname(),
            os.getpid(),
            str(self.device),
            memory_bytes=self.memory_bytes,
            models=sorted(self.models),
        )
        log.info("worker %s started on %s", self.id, self.device)
        waiter = QueueWaiter(self.settings.listen_url or self.settings.database_url)
        hb = LeaseHeartbeat(
            self.engine, self.id, self.settings.heartbeat_seconds, lambda: self._current
        )
        publisher = Publisher(self.engine, self.optuna)
        ctx = BatchContext(
            self.engine,
            self.optuna,
            self.device,
            self.id,
            self._stop,
            self.set_current,
            self.models,
            publisher.request,
        )
        runner = BatchRunner(ctx, hb)
        self._refitter = RefitRunner(ctx, hb, self._cache.files)
        try:
            with hb, publisher:
                while not self.stopping:
                    if not self._step(runner):
                        if self.settings.exit_when_idle:
                            break
                        waiter.wait(self.settings.idle_wait_seconds)
        finally:
            waiter.close()
            try:
                registry.stopped(self.engine, self.id)
            except StorageError as exc:
                log.warning("could not mark worker stopped: %s", exc)
            log.info("worker %s stopped", self.id)
        return 0

    def _step(self, runner: BatchRunner) -> bool:
        """Recover stale work, claim one batch and run it. False when there was nothing to do.

        A database that went away, an Optuna storage error or a bug in one study's batch is
        logged, the leases are released or left to recovery, and the loop goes on. Only an error
        that is not an outage in recovery or claiming, MAX_BUGS times in a row, ends the worker
        (exit status 1): that is a bug, which retrying for ever would only hide.
        """
        if not runner.hb.alive:  # cannot happen (it catches everything); never claim blind
            raise RuntimeError("the heartbeat thread has died: leases would go stale")
        found = self._find_work()
        if isinstance(found, bool):
            return found
        refit, claim = found
        if refit is not None:
            try:
                self._refitter.run(refit)  # ends its lease whatever happens (or leaves it stale)
            except Exception:
                log.exception("worker %s: refit of study %s broke off", self.id, refit.study_id)
                time.sleep(1.0)
        elif claim is None:
            if not self.stopping:
                time.sleep(0.02)  # another claim took or held the slots (SKIP LOCKED): again
        elif self.stopping:  # a signal came while claiming: give the slots straight back
            self._release(claim)
        else:
            self._run_batch(runner, claim)
        return True

    def _find_work(self) -> bool | tuple[refits.RefitClaim | None, queue.Claim | None]:
        """Recover stale work, then claim a ready refit or a batch: (refit, claim), or what
        `_step` returns at once (False: nothing to do; True: try again)."""
        try:
            self._maybe_recover()
            if self.stopping:  # a signal came during recovery: claim nothing more
                return True
            # A study's last step goes first; only studies whose model this worker has.
            refit = refits.claim(self.engine, self.id, self.models)
            nxt = None if refit else queue.peek(self.engine, self.models)
            self._bugs = 0  # recovery and the peek went through
            if refit is None and nxt is None:
                return False  # nothing to do: idle
            return refit, None if nxt is None else self._claim(*nxt)
        except Exception as exc:
            if is_outage(exc):
                log.warning("database unavailable (%s); retrying", exc)
                time.sleep(1.0)
                return True
            self._bugs += 1
            if self._bugs >= MAX_BUGS:
                log.exception(
                    "worker %s: recovery or claim failed %d times; stopping", self.id, self._bugs
                )
                raise
            log.exception("worker %s: recovery or claim failed; retrying", self.id)
            time.sleep(1.0)
            return True

    def _run_batch(self, runner: BatchRunner, claim: queue.Claim) -> None:
        try:
            ensure_study(self.optuna, claim.optuna_study, claim.spec, claim.study_id)
        except Exception:
            log.exception("worker %s: cannot open study %s; releasing", self.id, claim.study_id)
            self._release(claim)
            time.sleep(1.0)
            return
        try:
            runner.run(claim, lambda: self._cache.get(claim.spec, self.device))
        except Exception:
            # The database went away mid-batch, say: the leases go stale and are retried.
            log.exception("worker %s: batch of study %s broke off", self.id, claim.study_id)
            time.sleep(1.0)

    def _release(self, claim: queue.Claim) -> None:
        """Give back the slots of a claim no trial was created for (leases that cannot be
        ended now go stale and are recovered)."""
        for lease in claim.leases:
            settle(self.engine, self.optuna, lease.id, NO_TRIAL, Why.SHUTDOWN, attempts=2)

    def _maybe_recover(self) -> None:
        now = time.monotonic()
        if now - self._last_recovery >= self.settings.recover_every_seconds:
            self._last_recovery = now
            recover_stale(self.engine, self.optuna, self.settings.lease_grace_seconds)

    def _claim(self, study_id: int, spec: StudySpec, open_slots: int) -> queue.Claim | None:
        """Claim a batch of the study `peek` saw (None: nothing claimed, a signal came while
        sizing it or another claim took or held the slots)."""
        size = self.batch_size(spec, open_slots)
        if self.stopping:
            return None
        # That study only: the batch was sized for its model and open slots.
        return queue.claim(self.engine, self.id, size, study_id, self.models)

    def batch_size(self, spec: StudySpec, open_slots: int) -> int:
        """How many trials to train together.

        The spec's `batch_trials` if set; else what memory allows, no more than a quarter of
        the study (so TPE learns between batches; the design sampler: its first design, then
        its refining width, design.design_width), and a fair share of the open slots among the
        live workers (so one study spreads across them).
        """
        if spec.search.batch_trials:
            return spec.search.batch_trials
        fixed = model_kind(spec).fixed_batch
        if fixed:
            # Its size is unknown until it is built: a few trials (search.batch_trials for more).
            return self._share(spec, open_slots, fixed)
        try:
            data = self._cache.get(spec, self.device)
        except Exception:
            # Claim one slot: the batch loads the data again and fails its trial with the
            # reason, which retries and max_failed turn into a failed study.
            log.exception("worker %s: cannot load the data set of the next study", self.id)
            return 1
        fits = auto_batch_trials(
            model_config(spec),
            data,
            open_slots,
            self.device,
            spec.training.batch_size,
            self.memory_limit,
        )
        return self._share(spec, open_slots, fits)

    def _share(self, spec: StudySpec, open_slots: int, fits: int) -> int:
        """At most `fits` (and DROPTUNE_MAX_BATCH_TRIALS), a quarter of the study (the design's
        widths with that sampler), and this worker's share of the open slots."""
        if self.settings.max_batch_trials:
            fits = min(fits, self.settings.max_batch_trials)
        live = max(1, registry.count_live(self.engine, self.settings.lease_grace_seconds))
        # A model-based sampler learns between batches: a quarter of the study at a time. The
        # design sampler: its first space-filling design, then narrower refining batches.
        quarter = max(1, math.ceil(spec.search.n_trials / 4))
        if spec.search.sampler == "design":
            quarter = design_width(spec.search.n_trials, open_slots)
        return max(1, min(fits, quarter, math.ceil(open_slots / live)))

    @property
    def memory_limit(self) -> int | None:
        """DROPTUNE_WORKER_MEMORY_GB in bytes, when it is set."""
        gb = self.settings.worker_memory_gb
        return None if gb is None else int(gb * 2**30)

    @property
    def memory_bytes(self) -> int | None:
        """What this worker advertises for a batch: the configured memory, else its device's."""
        limit = self.memory_limit
        return limit if limit is not None else device_memory(self.device)

    def set_current(self, study_id: int | None, trials: list[int]) -> None:
        self._current = (study_id, trials)
        logs.bind_process(study=study_id, trial=trials or None)  # on this batch's log lines
