"""The light workers of bench/bench_queue_light.py: droptune's own Worker loop in forked
processes, with training replaced by a sleep and its queue calls timed (`light_swaps`)."""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


@dataclasses.dataclass(frozen=True)
class Light:
    train_s: float  # the sleep that stands in for training one batch
    epochs: int  # on_epoch calls per batch (report, should_prune, status read)
    batch: int  # search.batch_trials: trials per claim
    heartbeat_s: float
    publish: bool  # keep the per-batch dashboard publish (its cost grows with the study)
    no_prepare: bool  # psycopg prepare_threshold=None (PgBouncer < 1.21, transaction pooling)
    named: bool = True  # application_name per pool (through PgBouncer it would cost SETs)


Events = dict[str, list[tuple[float, float, Any]]]  # kind -> (time, seconds, result)


def light_worker(i: int, url: str, out: str, o: Light) -> None:
    """One light worker: droptune's Worker with `light_swaps`, its pools' connections named
    `w{i}:droptune` and `w{i}:optuna`, its LISTEN connection `w{i}:listen`; the timed calls and
    the WARNING+ log lines (counted) are written to out/w{i}.json when SIGTERM ends it."""
    import logging

    from sqlalchemy import event

    from droptune.core import logs
    from droptune.worker.run.loop import Worker
    from droptune.worker.run.settings import WorkerSettings

    ev: Events = {"claim": [], "beat": [], "settle": []}
    errors: collections.Counter[str] = collections.Counter()
    for module, attr, value in light_swaps(o, ev):
        # a name the code no longer has would be a swap that silently does nothing
        assert hasattr(module, attr), f"{module.__name__}.{attr} is gone: update light_swaps"
        setattr(module, attr, value)
    sys.stderr = open(Path(out, f"w{i}.log"), "w", buffering=1)  # noqa: SIM115
    logs.configure()

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            exc = record.exc_info[1] if record.exc_info else None
            why = f" [{type(exc).__name__}: {str(exc).splitlines()[0][:70]}]" if exc else ""
            errors[f"{record.levelname} {record.name}: {record.msg}"[:100] + why] += 1

    logging.getLogger().addHandler(Count(logging.WARNING))
    settings = WorkerSettings(
        database_url=url, device="cpu", threads=1, heartbeat_seconds=o.heartbeat_s,
        cache_dir=Path(out, "cache"),
    )  # fmt: skip
    worker = Worker(settings)
    for engine, kind in ((worker.engine, "droptune"), (worker.optuna.engine, "optuna")):

        def named(_d: Any, _r: Any, _a: Any, cparams: dict[str, Any], k: str = kind) -> None:
            cparams["application_name"] = f"w{i}:{k}"

        if o.named:
            event.listen(engine, "do_connect", named)
            engine.dispose()  # the connections Optuna opened while it set up had no name
    if o.named:
        os.environ["PGAPPNAME"] = f"w{i}:listen"  # QueueWaiter's own psycopg connection
    try:
        worker.run()
    finally:
        Path(out, f"w{i}.json").write_text(json.dumps({"events": ev, "errors": errors}))


def light_swaps(o: Light, ev: Events) -> list[tuple[Any, str, Any]]:
    """(module, attribute, replacement): claim, heartbeat and settle timed into `ev`; training
    replaced by a sleep; no data set; no dashboard publish unless asked; psycopg's prepared
    statements off with `no_prepare`."""
    import numpy as np

    from droptune.storage import optuna_bridge
    from droptune.storage.jobs import lifecycle, queue, registry
    from droptune.storage.sql import db
    from droptune.worker.engine.kinds.base import ModelKind
    from droptune.worker.engine.stacked import TrialResult
    from droptune.worker.run import batch, loop

    def timed(fn: Any, key: str, record: Any) -> Any:
        def call(*a: Any, **kw: Any) -> Any:
            t, p = time.time(), time.perf_counter()
            r = fn(*a, **kw)
            ev[key].append((t, time.perf_counter() - p, record(r)))
            return r

        return call

    def no_train(
        _k: Any, _d: Any, _m: Any, cfg: Any, rates: list[Any], _dev: Any, on_epoch: Any
    ) -> Any:
        """ModelKind.train's contract (on_epoch after every epoch stops trials), untrained."""
        results: list[Any] = [TrialResult([0.9] * 3, cfg.epochs, False, o.train_s)] * len(rates)
        active = list(range(len(rates)))
        for epoch in range(1, cfg.epochs + 1):
            time.sleep(o.train_s / cfg.epochs)
            for t in set(on_epoch(epoch, active, np.full((len(active), 3), 0.9))):
                results[t] = TrialResult([0.9] * 3, epoch, True, o.train_s)
                active.remove(t)
            if not active:
                break
        return results, None, "stacked"

    plain = db.engine_kwargs  # before the swap below replaces it

    def no_prepare(u: str) -> dict[str, Any]:
        return {**plain(u), "connect_args": {"prepare_threshold": None}}

    periodic = "droptune-heartbeat"  # 1: the thread's beat; 0: the one a batch sends as it ends
    fake = SimpleNamespace(k=3, train_len_host=np.array([1000.0]), val_len_host=np.array([500.0]))
    swaps: list[tuple[Any, str, Any]] = [
        (queue, "claim", timed(queue.claim, "claim", lambda c: 0 if c is None else len(c.leases))),
        (registry, "heartbeat", timed(registry.heartbeat, "beat",
            lambda _b: int(threading.current_thread().name == periodic))),
        (batch, "settle", timed(lifecycle.settle, "settle", lambda r: getattr(r, "value", None))),
        (ModelKind, "train", no_train),
        (loop._DataCache, "get", lambda _self, _spec, _device: fake),
    ]  # fmt: skip
    if not o.publish:
        swaps.append((batch, "publish_study", lambda _engine, _optuna, _study_id: None))
    if o.no_prepare:
        swaps += [(db, "engine_kwargs", no_prepare), (optuna_bridge, "engine_kwargs", no_prepare)]
    return swaps


def fork_workers(n: int, url: str, out: Path, o: Light) -> list[Any]:
    """Fork n light workers from this process, which holds no connection now: the worker code
    is imported once and frozen, so the children's garbage collector never copies its pages."""
    import gc

    import droptune.worker.run.loop  # noqa: F401

    gc.freeze()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=light_worker, args=(i, url, str(out), o)) for i in range(n)]
    for p in procs:
        p.start()
    return procs


def stop_all(procs: list[Any]) -> None:
    for p in procs:
        if p.pid and p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.time() + 60
    for p in procs:
        p.join(max(0.1, deadline - time.time()))
        if p.is_alive():
            p.kill()
