"""Ids past a 32-bit integer (issue: `GET /studies/2147483648` was a 500 `DataError` on
PostgreSQL, whose id columns are INTEGER): every route and spec field that takes an id answers
them as the id of nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings

BIG = [2**31, 2**31 + 5, 2**62, 2**63 - 1]
STUDY_ROUTES = [
    ("GET", "/studies/{}"),
    ("GET", "/studies/{}/best"),
    ("GET", "/studies/{}/trials"),
    ("GET", "/studies/{}/curve"),
    ("GET", "/studies/{}/curve?format=svg"),
    ("GET", "/studies/{}/model"),
    ("GET", "/studies/{}/events"),
    ("POST", "/studies/{}/cancel"),
    ("DELETE", "/studies/{}"),
]
DATASET_ROUTES = [("GET", "/datasets/{}"), ("DELETE", "/datasets/{}")]


@pytest.fixture
def api(db_url: str) -> Iterator[TestClient]:
    app = create_app(ServiceSettings(database_url=db_url))
    with TestClient(app, base_url="http://localhost") as client:
        yield client


@pytest.mark.parametrize("big", BIG)
def test_routes_answer_a_huge_id_as_missing(api: TestClient, big: int) -> None:
    for method, path in STUDY_ROUTES + DATASET_ROUTES:
        missing = api.request(method, path.format(1))
        r = api.request(method, path.format(big))
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json", (method, path)
        assert r.json()["title"] == missing.json()["title"], (method, path)
        assert str(big) in r.json()["detail"], (method, path, r.json())


@pytest.mark.parametrize("big", BIG)
def test_spec_ids_past_int32_are_missing_data_sets(api: TestClient, big: int) -> None:
    for spec in (
        {"dataset": {"id": big}, "search": {"n_trials": 2}},
        {
            "dataset": {"builtin": "iris"},
            "search": {"n_trials": 2},
            "evaluation": {"test_dataset": big},
        },
    ):
        r = api.post("/studies", json=spec)
        assert r.status_code == 422, r.text
        assert str(big) in r.json()["detail"], r.json()
    assert api.get("/studies").json()["total"] == 0


def test_the_dashboard_answers_a_huge_id_as_missing(api: TestClient) -> None:
    """optuna-dashboard's own routes read Optuna's INTEGER ids (admin only)."""
    for path in ("/api/studies/2147483648", "/api/studies/1/trials/9223372036854775807"):
        r = api.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "application/problem+json"


def test_names_at_the_limit_and_odd_owners_are_no_500s(api: TestClient) -> None:
    """Found by the second probe: a 187-200 character study name overflowed the Optuna
    study's name (name + ` (droptune-N)`, VARCHAR(200)), and an admin's `?owner=` with a NUL
    reached PostgreSQL; both were 500s."""
    for n in (187, 199, 200):
        r = api.post("/studies", json={"name": "x" * n, "dataset": {"builtin": "iris"}})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["name"] == "x" * n and len(body["optuna_study"]) <= 200, body
        assert body["optuna_study"].endswith(f" (droptune-{body['id']})")
    for odd in ("a\x00b", "a\x9db"):  # no owner can have such a name: none of their studies
        r = api.get("/studies", params={"owner": odd})
        assert r.status_code == 200 and r.json()["total"] == 0, r.text
