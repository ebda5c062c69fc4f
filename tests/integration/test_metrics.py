"""GET /metrics: counts read from the database (both backends), request latency by route
template, and the whole thing against a real server and worker running a small study."""

from __future__ import annotations

from pathlib import Path

import httpx
import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from optuna.storages import RDBStorage
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from droptune.client import Client
from droptune.core.spec.study import StudySpec
from droptune.service.app import create_app
from droptune.service.middleware.metrics import DatabaseCollector
from droptune.service.settings import ServiceSettings
from droptune.storage.jobs import queue, registry
from droptune.storage.jobs.lifecycle import Why, settle
from droptune.storage.jobs.recovery import recover_stale
from droptune.storage.readmodel.metrics_sql import DURATION_BUCKETS, snapshot
from droptune.storage.sql.db import create_engine
from droptune.storage.submit import submits
from droptune.worker.run.objective import new_trial
from tests import procs
from tests.queueing import age_leases, refit_done, spec, started_trial

FAMILIES = {
    "droptune_database_up",
    "droptune_studies",
    "droptune_queue_depth",
    "droptune_trials_finished",
    "droptune_trials_retried",
    "droptune_lease_expiries_recovered",
    "droptune_workers_live",
    "droptune_trial_duration_seconds",
    "droptune_http_request_duration_seconds",
}
TINY = {
    "name": "metrics",
    "dataset": {"builtin": "iris"},
    "model": {"hidden": [8]},
    "training": {"epochs": 2},
    "cv": {"folds": 2},
    "search": {"n_trials": 3},
}


def scrape(text: str) -> dict[str, list[Sample]]:
    """The exposition parsed by prometheus-client's own parser: family name -> samples."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def _run(
    engine: sa.Engine,
    storage: RDBStorage,
    study: optuna.Study,
    lease: queue.Lease,
    why: Why,
    s: float,
) -> None:
    """What a worker does with a lease: a trial (retried parameters kept), trained `s` seconds,
    ended with `why`."""
    trial = new_trial(study, lease.params, {"attempt": lease.attempt, "lease": lease.id})
    trial.suggest_float("dropout", 0.0, 0.8)
    assert queue.link_trial(engine, lease.id, trial._trial_id, trial.number, trial.params, "w2")
    value = 0.9 if why is Why.TRAINED else None
    attrs = {"train_seconds": s}
    settle(engine, storage, lease.id, trial._trial_id, why, trial=trial, value=value, attrs=attrs)


def test_the_counts_come_from_the_database(db_url: str) -> None:
    # Study 1: three slots claimed by a worker that dies with one trial running.
    engine, storage, first, _claim, study, trial = started_trial(db_url, 3)
    age_leases(engine, 120)
    assert recover_stale(engine, storage, 30.0) == 3
    registry.register(engine, "w2", "host", 1, "cpu")
    again = queue.claim(engine, "w2", 3)
    assert again is not None and sorted(x.attempt for x in again.leases) == [0, 0, 1]
    retry = [x for x in again.leases if x.attempt]
    fresh = [x for x in again.leases if not x.attempt]
    _run(engine, storage, study, retry[0], Why.TRAINED, 4000.0)
    _run(engine, storage, study, fresh[0], Why.TRAINED, 3.0)
    _run(engine, storage, study, fresh[1], Why.PRUNED, 0.5)
    refit_done(engine, first)  # study 1 succeeds once its refit is done
    # Study 2 waits for its refit; study 3 is queued; study 4 was cancelled.
    holdout = StudySpec.model_validate(
        {"dataset": {"builtin": "iris"}, "search": {"n_trials": 1}, "evaluation": {"holdout": 0.2}}
    )
    refit = submits.enqueue(engine, holdout, "a")
    claim = queue.claim(engine, "w2", 1, refit)
    assert claim is not None
    queue.finish(engine, claim.leases[0].id, queue.Outcome.DONE)
    submits.enqueue(engine, spec(4), "a")
    queue.cancel(engine, submits.enqueue(engine, spec(2), "a"), "a")
    # Another program's Optuna study in the same database counts for nothing.
    other = optuna.create_study(storage=storage, study_name="not droptune's")
    other.enqueue_trial({"x": 1.0}, user_attrs={"attempt": 2, "train_seconds": 1.0})
    other.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)

    snap = snapshot(engine, 30.0)
    by_status = {"queued": 1, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 1}
    assert snap.studies == by_status
    assert (snap.open_slots, snap.refits_ready) == (4, 1)
    assert snap.finished == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    assert storage.get_trial(trial._trial_id).user_attrs["reason"] == Why.LEASE_LOST.value
    assert (snap.retried, snap.recovered, snap.live_workers) == (1, 1, 1)
    complete, pruned = snap.durations["COMPLETE"], snap.durations["PRUNED"]
    assert (complete.count, complete.total, pruned.count, pruned.total) == (2, 4003.0, 1, 0.5)
    bound = dict(zip(DURATION_BUCKETS, complete.cumulative, strict=True))
    assert (bound[2.5], bound[5.0], bound[3600.0], bound[7200.0]) == (0, 1, 1, 2)
    assert pruned.cumulative == [1] * len(DURATION_BUCKETS)

    # The same counts through the collector, rendered and parsed back by prometheus-client.
    got = scrape(_render(DatabaseCollector(engine, 30.0)))
    assert value(got["droptune_trials_finished"], "droptune_trials_finished_total") == 4
    assert value(got["droptune_studies"], "droptune_studies", status="cancelled") == 1
    assert value(got["droptune_queue_depth"], "droptune_queue_depth", kind="refit") == 1
    hist = got["droptune_trial_duration_seconds"]
    assert value(hist, "droptune_trial_duration_seconds_bucket", state="complete", le="+Inf") == 2
    assert value(hist, "droptune_trial_duration_seconds_sum", state="complete") == 4003.0


def _render(collector: Collector) -> str:
    reg = CollectorRegistry()
    reg.register(collector)
    return generate_latest(reg).decode()


def test_reads_are_cached_and_an_unreachable_database_says_so(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    cached = DatabaseCollector(engine, 30.0, ttl=3600)
    before = scrape(_render(cached))
    assert value(before["droptune_studies"], "droptune_studies", status="queued") == 0
    submits.enqueue(engine, spec(2), "a")
    # Within the cache's lifetime the collector does not read again; a fresh one does.
    assert scrape(_render(cached)) == before
    fresh = scrape(_render(DatabaseCollector(engine, 30.0, ttl=0)))
    assert value(fresh["droptune_studies"], "droptune_studies", status="queued") == 1
    assert value(fresh["droptune_database_up"], "droptune_database_up") == 1
    # Port 1 refuses: the database is down, and its counts are absent rather than zero.
    down = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    got = scrape(_render(DatabaseCollector(down, 30.0)))
    assert value(got["droptune_database_up"], "droptune_database_up") == 0
    assert "droptune_studies" not in got


def test_requests_are_labelled_by_route_template(sqlite_url: str) -> None:
    app = create_app(ServiceSettings(database_url=sqlite_url))
    with TestClient(app, base_url="http://localhost") as c:
        for path in ("/studies/123456", "/studies/777"):
            assert c.get(path).status_code == 404
        assert c.head("/studies").status_code == 200  # answered as GET by HeadAsGet
        assert c.delete("/studies/5/best").status_code == 405  # via the dashboard's catch-all
        assert c.get("/dashboard").status_code == 200
        asked = c.get("/healthz", headers={"X-Request-ID": "trace-42"})
        assert asked.headers["X-Request-ID"] == "trace-42"
        bad = c.get("/healthz", headers={"X-Request-ID": "no spaces\tplease"})
        assert len(bad.headers["X-Request-ID"]) == 32  # replaced by a fresh one
        page = c.get("/metrics")
    assert page.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "123456" not in page.text and "/studies/777" not in page.text
    got = scrape(page.text)["droptune_http_request_duration_seconds"]
    name = "droptune_http_request_duration_seconds_count"
    assert value(got, name, method="GET", route="/studies/{study_id}", status="4xx") == 2
    assert value(got, name, method="HEAD", route="/studies", status="2xx") == 1
    assert value(got, name, method="DELETE", route="/studies/{study_id}/best", status="4xx") == 1
    assert value(got, name, method="GET", route="/{path}", status="2xx") == 1
    assert value(got, name, method="GET", route="/healthz", status="2xx") == 2


@pytest.mark.slow
def test_metrics_move_when_a_study_runs(sqlite_url: str, tmp_path: Path) -> None:
    with procs.service(sqlite_url, tmp_path) as (base, work):
        first = httpx.get(f"{base}/metrics")
        assert first.status_code == 200 and first.headers["X-Request-ID"]
        before = scrape(first.text)
        assert set(before) >= FAMILIES, FAMILIES - set(before)
        assert value(before["droptune_trials_finished"], "droptune_trials_finished_total") == 0
        with Client(base) as c:
            study = c.submit(TINY)
            best = c.best(study.id, wait=120)
            assert best.status == "succeeded", best

        def moved() -> dict[str, list[Sample]] | None:
            # The database's counts are cached for a few seconds: ask until they show the study.
            got = scrape(httpx.get(f"{base}/metrics").text)
            done = value(got["droptune_studies"], "droptune_studies", status="succeeded")
            return got if done == 1 else None

        after = procs.wait_until(moved, 30, "the succeeded study in /metrics")
        assert after is not None
        finished = after["droptune_trials_finished"]
        name = "droptune_trials_finished_total"
        assert value(finished, name, state="complete") + value(finished, name, state="pruned") == 3
        assert value(finished, name, state="fail") == 0
        durations = after["droptune_trial_duration_seconds"]
        assert value(durations, "droptune_trial_duration_seconds_count") == 3
        assert value(after["droptune_workers_live"], "droptune_workers_live") == 1
        assert value(after["droptune_queue_depth"], "droptune_queue_depth") == 0
        assert value(after["droptune_studies"], "droptune_studies", status="running") == 0
        requests = after["droptune_http_request_duration_seconds"]
        count = "droptune_http_request_duration_seconds_count"
        assert value(requests, count, method="POST", route="/studies", status="2xx") == 1
        best_route = "/studies/{study_id}/best"
        assert value(requests, count, method="GET", route=best_route, status="2xx") == 1
        # A scrape is counted once it has been answered: the first one shows in the last.
        assert value(requests, count, method="GET", route="/metrics", status="2xx") >= 1
        assert work.poll() is None
