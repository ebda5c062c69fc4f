"""Schemathesis against the real app's OpenAPI document, in-process on a real SQLite file.

Every operation the document lists is called with generated requests (valid and invalid), every
check on: no 5xx, and each answer's status, media type, headers and body are the ones the
document declares. A study and a data set exist first, so the GET-by-id routes also hit real rows.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial
from schemathesis import APIOperation, Case
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)
from schemathesis.python import asgi
from schemathesis.schemas import BaseSchema

from droptune.core.schemas import StudyOut, TrialOut
from droptune.core.spec.study import StudySpec
from droptune.service.app import create_app
from droptune.service.errors import PROBLEM
from droptune.service.settings import ServiceSettings
from droptune.storage.access import tokens
from droptune.storage.jobs import registry
from droptune.storage.optuna_bridge import ensure_study
from droptune.storage.sql.db import create_engine
from droptune.storage.sql.migrate import upgrade
from tests import datafiles

# An event stream of a study that has not ended never closes: cut it after its first events
# (`retry`, `progress`) or after the timeout, whichever comes first.
# A schema-valid submit or upload may still be refused (422) by checks JSON Schema cannot
# state (exactly one of dataset.builtin and dataset.id; a file that is not a data set).
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "request-timeout": 5,
        "max-stream-events": 2,
        "operations": [
            {
                "include-name-regex": "^POST /(studies|datasets)$",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "422"]}},
            }
        ],
    }
)
EXAMPLES = 50  # per operation and mode: both modes in about a minute


def seeded_app(tmp_path: Path, token: str | None = None, url: str | None = None) -> FastAPI:
    """The app on a fresh database (a SQLite file unless `url` names a migrated one) holding a
    data set (id 1), a study on it with three finished trials (id 1), a cancelled study (id 2)
    and a live worker; with `token`, in token mode, the rows belonging to that token's
    (non-admin) owner."""
    if url is None:
        url = f"sqlite:///{tmp_path / 'fuzz.db'}"
        upgrade(url)
    headers = {}
    if token is not None:
        engine = create_engine(url)
        tokens.create(engine, "fuzzer", token=token)
        engine.dispose()
        headers = {"Authorization": f"Bearer {token}"}
    # Held requests (`/best?wait=`) answer within the transport's timeout.
    # schemathesis calls the app as `testserver`, a name the Host check must be told of.
    settings = ServiceSettings(
        database_url=url, max_upload_mb=1, max_wait_seconds=0.2, allowed_hosts="testserver"
    )
    app = create_app(settings)
    csv = datafiles.cancer_csv(tmp_path / "cancer.csv")
    spec = {"dataset": {"id": 1}, "search": {"n_trials": 4}}
    with TestClient(app, base_url="http://localhost", headers=headers) as api:
        with csv.open("rb") as f:
            assert api.post("/datasets", files={"file": (csv.name, f)}).status_code == 201
        first = api.post("/studies", json=spec)
        assert first.status_code == 201, first.text
        assert api.post("/studies", json=spec).status_code == 201
        assert api.post("/studies/2/cancel").status_code == 200
    study = ensure_study(app.state.optuna, first.json()["optuna_study"], StudySpec(**spec), 1)
    for rate in (0.1, 0.3, 0.5):
        folds = [0.9 - rate / 10 + d for d in (0.01, -0.01, 0.0, 0.02, -0.02)]
        attrs = {"fold_scores": folds, "score_mean": sum(folds) / 5, "epochs": 10}
        study.add_trial(
            create_trial(
                value=sum(folds) / 5,
                params={"dropout": rate},
                distributions={"dropout": FloatDistribution(0.0, 0.9)},
                user_attrs=attrs,
            )
        )
    registry.register(app.state.engine, "fuzz-worker", "localhost", 1, "cpu")
    return app


TOKEN = "dt_fuzz-" + "x" * 40


@pytest.fixture(params=["open-sqlite", "token-postgres"])
def fuzz_schema(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[BaseSchema, dict[str, str]]]:
    """The app in open mode on SQLite, or in token mode on PostgreSQL with every request sent
    as a non-admin owner (PostgreSQL refuses what SQLite stores: ids past 32 bits, NULs)."""
    token = TOKEN if request.param.startswith("token") else None
    url = str(request.getfixturevalue("pg_url")) if request.param.endswith("postgres") else None
    app = seeded_app(tmp_path, token, url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG, headers=headers)
    try:
        yield schema, headers  # every case sends the headers
    finally:
        asgi.shutdown_lifespans()  # the app's recovery task and watcher stop with the test


def fuzz(
    operation: APIOperation[Any, Any, Any, Any], statuses: set[int], headers: dict[str, str]
) -> None:
    """Requests to one operation as the CLI makes them (the schema's examples, the coverage
    phase's boundary and missing values, then `EXAMPLES` valid and invalid generated ones),
    every check on each answer; the statuses answered are added to `statuses`.

    Built as `schema.parametrize()` builds its tests, without the lazy fixture-backed schema
    (`schemathesis.pytest.from_fixture`), which needs a pytest attribute pytest 9.2 removed."""

    def run(case: Case[Any]) -> None:
        statuses.add(case.call_and_validate(headers=headers).status_code)

    config = HypothesisTestConfig(
        project=operation.schema.config,
        modes=list(HypothesisTestMode),
        settings=settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    create_test(operation=operation, test_func=run, config=config)()


@pytest.mark.slow
def test_api_conforms_to_its_openapi(
    fuzz_schema: tuple[BaseSchema, dict[str, str]],
) -> None:
    schema, headers = fuzz_schema
    failures = []
    answered: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation the document describes wrongly
            raise result.err()
        operation = result.ok()
        statuses = answered.setdefault(operation.label, set())
        try:
            fuzz(operation, statuses, headers)
        except (Exception, FailureGroup) as exc:  # every operation's, not the first only
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    documented = {f"{m.upper()} {p}" for p, ops in schema.raw_schema["paths"].items() for m in ops}
    assert set(answered) == documented and all(answered.values()), answered
    # The seeded rows were reached, and so were ids that name nothing.
    for label in (
        "GET /studies/{study_id}",
        "GET /studies/{study_id}/trials",
        "GET /datasets/{dataset_id}",
    ):
        assert {200, 404} <= answered[label], (label, answered[label])


def test_errors_are_documented_as_problem_json(tmp_path: Path) -> None:
    """Every documented error is the problem+json droptune sends: no FastAPI
    `HTTPValidationError`, and each route on one resource lists its 404 (quick, without
    the fuzzing)."""
    doc = seeded_app(tmp_path).openapi()
    assert "HTTPValidationError" not in str(doc)
    assert set(doc["components"]["schemas"]["Problem"]["required"]) == {
        "type",
        "title",
        "status",
        "detail",
    }
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert set(response["content"]) == {PROBLEM}, (method, path, status)
            if "{" in path:
                assert "404" in operation["responses"], (method, path)
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in operation["responses"], (method, path)


@pytest.fixture
def far_east(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 9 hours off UTC, so naive local time cannot pass for UTC."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_east")
def test_timestamps_are_rfc3339_with_their_offset(tmp_path: Path) -> None:
    """Stored naive UTC (droptune's tables) and naive local time (Optuna's trials) both go
    out as UTC with `Z`, and the client's schemas read them back as the same instant."""
    assert dt.datetime.now().astimezone().utcoffset() == dt.timedelta(hours=9)
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)  # SQLite keeps milliseconds
    app = seeded_app(tmp_path)
    with TestClient(app, base_url="http://localhost") as api:
        study = StudyOut.model_validate(api.get("/studies/1").json())
        trials = api.get("/studies/1/trials").json()["items"]
        stamps = [
            api.get("/studies/1").json()["created_at"],
            api.get("/studies/2").json()["ended_at"],
            api.get("/datasets/1").json()["created_at"],
            api.get("/workers").json()[0]["heartbeat_at"],
            trials[0]["started_at"],
            trials[0]["ended_at"],
        ]
    after = dt.datetime.now(dt.UTC)
    assert all(isinstance(s, str) and s.endswith("Z") for s in stamps), stamps
    # The instants this test saw happen, not hours off by a time zone.
    started = TrialOut.model_validate(trials[0]).started_at
    assert started is not None and before <= started <= after
    assert before <= study.created_at <= after
