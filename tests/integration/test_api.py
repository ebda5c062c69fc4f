"""The REST API in-process (TestClient) on a real SQLite file: validation, errors, routes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings

PROBLEM = "application/problem+json"
SEARCH_INPUT = {"input_dropout_high": 0.3}
OK = {"dataset": {"builtin": "digits"}, "search": {"n_trials": 4}}


@pytest.fixture
def api(sqlite_url: str) -> Iterator[TestClient]:
    app = create_app(ServiceSettings(database_url=sqlite_url))
    with TestClient(
        app, base_url="http://localhost", headers={"Accept-Encoding": "gzip"}
    ) as client:
        yield client


class InProcess(httpx.BaseTransport):
    """The real app, in-process, as the `Client`'s transport.

    httpx's own ASGITransport is async only; the TestClient runs the app (its lifespan started)
    on a thread of its own, so each request goes through it.
    """

    def __init__(self, api: TestClient) -> None:
        self.api = api

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Streamed: the Client reads (and closes) the body, as it would off the network.
        response: httpx.Response = self.api.send(request, stream=True)
        return response


def count(api: TestClient) -> int:
    total: int = api.get("/studies").json()["total"]
    return total


def test_submit_fills_defaults_and_lists(api: TestClient) -> None:
    r = api.post("/studies", json=OK)
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/studies/{body['id']}"
    assert body["status"] == "queued"
    assert body["spec"]["model"] == {"kind": "mlp", "hidden": [256, 256]}  # no CNN channels
    assert body["spec"]["cv"] == {"folds": 5, "metric": "accuracy", "seed": 0, "repeats": 1}
    assert body["progress"] == {
        "n_trials": 4,
        "complete": 0,
        "pruned": 0,
        "failed": 0,
        "interrupted": 0,
        "running": 0,
        "refit": "waiting",  # digits holds out 20% of its rows by default
    }
    assert api.get(f"/studies/{body['id']}").json()["id"] == body["id"]
    api.post("/studies", json=OK)
    page = api.get("/studies", params={"limit": 1, "status": "queued"}).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    assert api.get("/studies", params={"status": "running"}).json()["total"] == 0


BAD: list[tuple[dict[str, Any], str]] = [
    ({"search": {"dropout_low": 0.5, "dropout_high": 0.5}}, "search.dropout_low"),
    ({"search": {"input_dropout_low": 0.3, "input_dropout_high": 0.2}}, "search.input_dropout_low"),
    ({"search": {"dropout_low": -0.1}}, "search.dropout_low"),
    ({"search": {"dropout_high": 1.0}}, "search.dropout_high"),
    ({"search": {"n_trials": 0}}, "search.n_trials"),
    ({"search": {"n_trials": 10001}}, "search.n_trials"),
    ({"search": {"sampler": "cmaes"}}, "search.sampler"),
    ({"search": {"pruner": "asha"}}, "search.pruner"),
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"training": {"epochs": 1001}}, "training.epochs"),
    ({"cv": {"folds": 1}}, "cv.folds"),
    ({"cv": {"metric": "f1"}}, "cv.metric"),
    ({"model": {"hidden": [0]}}, "model.hidden.0"),
    ({"model": {"hidden": [8193]}}, "model.hidden.0"),
    ({"model": {"hidden": [8] * 9}}, "model.hidden"),
    ({"model": {"kind": "transformer"}}, "model.kind"),
    ({"colour": "blue"}, "colour"),
    ({"search": {"n_trials": 3, "typo": 1}}, "search.typo"),
]


@pytest.mark.parametrize(("patch", "field"), BAD)
def test_bad_spec_is_422_problem_naming_the_field(
    api: TestClient, patch: dict[str, Any], field: str
) -> None:
    body: dict[str, Any] = {"dataset": {"builtin": "digits"}}
    for key, value in patch.items():
        body[key] = value
    r = api.post("/studies", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["status"] == 422 and field in problem["detail"], problem
    assert field in [e["field"] for e in problem["errors"]], problem
    assert "Value error" not in problem["detail"]
    assert count(api) == 0  # nothing stored


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"dataset": {"builtin": "mnist"}}, "dataset.builtin", "Input should be"),
        ({}, "dataset", "required"),
        ({"dataset": "digits"}, "dataset", "must be a JSON object"),
        (
            {"dataset": {"builtin": "iris"}, "cv": {"folds": 51}},
            "cv.folds",
            "exceed the smallest class",
        ),
        ({"dataset": {"builtin": "wine"}, "model": {"kind": "cnn"}}, "model.kind", "image data"),
        (
            {"dataset": {"builtin": "digits"}, "model": {"kind": "cnn"}, "search": SEARCH_INPUT},
            "search.input_dropout_high",
            "only supported for MLP",
        ),
        (
            {"dataset": {"builtin": "iris", "options": {"n_samples": 5}}},
            "dataset.options",
            "takes no options",
        ),
        (
            {"dataset": {"builtin": "synthetic", "options": {"n_rows": 5}}},
            "dataset.options",
            "unknown synthetic",
        ),
        (
            {"dataset": {"builtin": "synthetic", "options": {"n_samples": -5}}},
            "dataset.options.n_samples",
            "between 20 and",
        ),
        (
            {"dataset": {"builtin": "synthetic", "options": {"seed": -1}}},
            "dataset.options.seed",
            "between 0 and 4294967295",
        ),
        (
            {
                "dataset": {
                    "builtin": "synthetic",
                    "options": {"n_samples": 1_000_000, "n_features": 10_000},
                }
            },
            "dataset.options",
            "GiB of fold data per worker",
        ),
        (
            {"dataset": {"builtin": "iris"}, "search": {"input_dropout_low": 0.5}},
            "search.input_dropout_high",
            "set search.input_dropout_high too",
        ),
    ],
)
def test_bad_dataset_is_rejected(
    api: TestClient, body: dict[str, Any], field: str, words: str
) -> None:
    r = api.post("/studies", json=body)
    assert r.status_code == 422, r.text
    (err,) = r.json()["errors"]
    assert err["field"] == field and words in err["message"], err
    assert count(api) == 0


def test_folds_are_bounded_by_the_smallest_class_only(api: TestClient) -> None:
    none = {"holdout": 0}
    r = api.post("/studies", json={"dataset": {"builtin": "digits"}, "cv": {"folds": 174}})
    assert r.status_code == 422 and "(139 after evaluation.holdout 0.2" in r.json()["detail"]
    study = {"dataset": {"builtin": "digits"}, "cv": {"folds": 174}, "evaluation": none}
    r = api.post("/studies", json=study)
    assert r.status_code == 201, r.text
    study["cv"] = {"folds": 175}
    r = api.post("/studies", json=study)
    assert r.status_code == 422 and "(174)" in r.json()["detail"]


def test_malformed_json_is_a_problem(api: TestClient) -> None:
    r = api.post("/studies", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["errors"][0]["field"] == "body"
    assert "not valid JSON" in r.json()["detail"]
    # curl -d without -H 'content-type: application/json': the problem says what to send
    r = api.post("/studies", content=b'{"dataset": {"builtin": "iris"}}')
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"]
    assert count(api) == 0


def test_unknown_study_is_404_problem(api: TestClient) -> None:
    for path in ("/studies/42", "/studies/42/best", "/studies/42/trials"):
        r = api.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        assert r.json()["detail"] == "study 42 not found"
    assert api.post("/studies/42/cancel").status_code == 404


def test_cancel_then_cancel_again_conflicts(api: TestClient) -> None:
    sid = api.post("/studies", json=OK).json()["id"]
    r = api.post(f"/studies/{sid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = api.post(f"/studies/{sid}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["detail"]
    best = api.get(f"/studies/{sid}/best").json()
    assert best["complete"] is True and best["dropout"] is None


def test_best_wait_holds_until_timeout(api: TestClient) -> None:
    sid = api.post("/studies", json=OK).json()["id"]
    t0 = time.monotonic()
    best = api.get(f"/studies/{sid}/best", params={"wait": 1.2}).json()
    assert time.monotonic() - t0 >= 1.0
    assert best["complete"] is False and best["dropout"] is None
    assert (best["state"], best["state_why"]) == ("none", "no trial has finished yet")
    assert api.get(f"/studies/{sid}/best", params={"wait": -1}).status_code == 422


def test_dashboard_is_served_read_only(api: TestClient) -> None:
    sid = api.post("/studies", json=OK).json()["id"]
    assert api.get("/dashboard").status_code == 200
    assert "text/html" in api.get("/dashboard").headers["content-type"]
    for method, path in [
        ("DELETE", "/api/studies/1"),
        ("POST", "/api/trials/1/tell"),
        ("PUT", "/api/studies/1/note"),
        ("POST", "/api/studies"),
    ]:
        r = api.request(method, path, json={})
        assert r.status_code == 403, (method, path, r.text)
        assert r.headers["content-type"] == PROBLEM and "read-only" in r.json()["detail"]
    assert api.get(f"/studies/{sid}").status_code == 200
    assert api.get("/api/studies").status_code == 200  # the dashboard's own reads still work
    home = api.get("/", follow_redirects=False)
    assert home.status_code == 302 and home.headers["location"].endswith("/dashboard")
    lost = api.get("/no/such/route")
    assert lost.status_code == 404 and lost.headers["content-type"] == PROBLEM
    # A client that sends no Accept-Encoding (curl) still gets the dashboard's script.
    bundle = api.get("/static/bundle.js", headers={"Accept-Encoding": ""})
    assert bundle.status_code == 200 and len(bundle.content) > 1000


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/studies/1", "DELETE, GET"),
        ("POST", "/healthz", "GET"),
        ("PUT", "/studies", "GET, POST"),
        ("GET", "/studies/1/cancel", "POST"),
    ],
)
@pytest.mark.parametrize("dashboard", [True, False], ids=["dashboard", "no-dashboard"])
def test_a_method_a_route_does_not_take_is_405(
    sqlite_url: str, method: str, path: str, allow: str, dashboard: bool
) -> None:
    app = create_app(ServiceSettings(database_url=sqlite_url, dashboard=dashboard))
    with TestClient(app, base_url="http://localhost") as api:
        r = api.request(method, path)
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM, r.text
    assert r.headers["allow"] == allow and allow in r.json()["detail"]


def test_health_workers_and_docs(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "database": "sqlite"}
    assert api.get("/workers").json() == []
    assert api.get("/docs").status_code == 200
    assert "/studies/{study_id}/best" in api.get("/openapi.json").json()["paths"]


def test_client_names_an_answer_that_is_not_droptune(api: TestClient) -> None:
    from droptune.client.api import Client, ClientError

    with Client("http://localhost", transport=InProcess(api)) as c:
        with pytest.raises(ClientError, match="without JSON: is it droptune"):
            c._call("GET", "/dashboard")  # an HTML page: 200, but no JSON
        with pytest.raises(ClientError, match=r"^404: study 12345 not found"):
            c.get(12345)
        with pytest.raises(ClientError) as refused:
            c.submit({"dataset": {"builtin": "iris"}, "cv": {"folds": 51}})
        assert refused.value.status == 422
        assert [e["field"] for e in refused.value.errors] == ["cv.folds"]
        assert "exceed the smallest class count" in refused.value.detail


def test_a_study_stored_before_a_submit_check_still_reads(api: TestClient, sqlite_url: str) -> None:
    import sqlalchemy as sa

    from droptune.client.api import Client
    from droptune.storage.sql.db import create_engine, transaction
    from droptune.storage.sql.tables import studies

    sid = api.post("/studies", json=OK).json()["id"]
    legacy = {"dataset": {"builtin": "digits"}, "model": {"kind": "cnn"}, "search": SEARCH_INPUT}
    assert api.post("/studies", json=legacy).status_code == 422  # refused today
    with transaction(create_engine(sqlite_url)) as conn:  # as an earlier version stored it
        conn.execute(sa.update(studies).where(studies.c.id == sid).values(spec=legacy))
    got = api.get(f"/studies/{sid}")
    assert got.status_code == 200, got.text
    assert got.json()["spec"]["search"]["input_dropout_high"] == 0.3
    assert api.get("/studies").json()["items"][0]["id"] == sid
    schema = api.get("/openapi.json").json()["components"]["schemas"]["StudyOut"]
    assert schema["properties"]["spec"] == {"$ref": "#/components/schemas/StudySpec"}
    with Client("http://localhost", transport=InProcess(api)) as c:
        assert c.get(sid).spec.model.kind == "cnn"


def test_head_answers_as_get_without_a_body(api: TestClient) -> None:
    sid = api.post("/studies", json=OK).json()["id"]
    for path in ("/healthz", "/studies", f"/studies/{sid}"):
        get, head = api.get(path), api.head(path)
        assert head.status_code == get.status_code == 200, (path, head.text)
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    # The study never ends here: a GET of its events would stream on; HEAD returns.
    events = api.head(f"/studies/{sid}/events")
    assert events.status_code == 200 and events.content == b""
    assert events.headers["content-type"].startswith("text/event-stream")
    assert api.head("/studies/999").status_code == 404
    r = api.head(f"/studies/{sid}/cancel")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert api.head("/dashboard").status_code == 200


def test_ids_and_offsets_past_the_database_range_are_422(api: TestClient) -> None:
    huge = 10**23
    for method, path, field in [
        ("GET", f"/studies/{huge}", "study_id"),
        ("POST", f"/studies/{huge}/cancel", "study_id"),
        ("GET", f"/studies?offset={huge}", "offset"),
        ("GET", "/studies/0", "study_id"),
    ]:
        r = api.request(method, path)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (path, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field]


def test_an_unforeseen_error_is_a_500_problem(sqlite_url: str) -> None:
    app = create_app(ServiceSettings(database_url=sqlite_url))

    def boom() -> None:
        raise ZeroDivisionError("simulated")

    app.add_api_route("/boom", boom)
    app.router.routes.insert(0, app.router.routes.pop())  # before the dashboard's catch-all
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
    assert "ZeroDivisionError" in r.json()["detail"]
