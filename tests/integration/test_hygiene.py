"""Inputs that are not quite wrong, and outputs that must not leak, against a real `droptune serve`
on SQLite and PostgreSQL: control characters in names, strings and booleans for numbers, bodies
that are not UTF-8 or nest too deep, 5xx bodies without internals, and the CLI escaping names."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from droptune.core.escape import safe
from droptune.service.errors import MAX_JSON_DEPTH
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import studies
from tests import procs
from tests.conftest import PG_ADMIN

PROBLEM = "application/problem+json"
IRIS = {"dataset": {"builtin": "iris"}, "search": {"n_trials": 2}}
CSV = b"a,label\n" + b"1,0\n2,1\n" * 20
# What a 5xx body must never carry, beyond the database's own name and path (per test).
LEAKS = ("127.0.0.1", "5432", "port", "postgres", "sqlite", "SELECT", "Traceback", 'File "', ".py")
BAD_NAMES = [
    "nul\x00here",
    "red\x1b[31mtext",
    "title\x1b]0;pwned\x07",
    "csi\x9b2J",
    "bell\x07",
    "tab\tname",
    "two\nlines",
    "del\x7f",
]


@contextlib.contextmanager
def serving(url: str, tmp: Path) -> Iterator[str]:
    """A real `droptune serve` (no worker: studies stay queued); its log is tmp/serve.log."""
    port = procs.free_port()
    proc = procs.serve(url, port, tmp / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop(proc)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[str]:
    with serving(db_url, tmp_path) as base:
        yield base


@pytest.fixture
def sqlite_api(sqlite_url: str, tmp_path: Path) -> Iterator[str]:
    with serving(sqlite_url, tmp_path) as base:
        yield base


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


def _total(base: str, what: str) -> int:
    r = httpx.get(f"{base}/{what}")
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def _post_json(base: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{base}/studies", content=body, headers={"content-type": "application/json"}, timeout=30
    )


def test_a_control_character_in_a_study_name_is_a_422_naming_it_on_every_backend(
    api: str,
) -> None:
    """PostgreSQL answered 500 to a NUL, SQLite stored it; an escape sequence was stored as is."""
    for name in BAD_NAMES:
        body = _problem(httpx.post(f"{api}/studies", json={**IRIS, "name": name}), 422)
        assert [e["field"] for e in body["errors"]] == ["name"], (name, body)
        assert "NUL" in body["detail"] or "control character" in body["detail"], body
    # A lone surrogate is valid JSON, but no database stores it.
    raw = b'{"name": "half\\ud800", "dataset": {"builtin": "iris"}}'
    assert [e["field"] for e in _problem(_post_json(api, raw), 422)["errors"]] == ["name"]
    assert _total(api, "studies") == 0
    fine = "dropout für 日本 ✓ [a] {b} \\x1b"  # any printable text, brackets and backslashes
    r = httpx.post(f"{api}/studies", json={**IRIS, "name": fine})
    assert r.status_code == 201, r.text
    assert httpx.get(f"{api}/studies/{r.json()['id']}").json()["name"] == fine


UPLOAD_FIELDS = [
    ("name", "x\x00y"),
    ("name", "x\x1b[31my"),
    ("target", "lab\x00el"),
    ("target", "label\x1b[0m"),
]


def test_a_control_character_in_an_upload_s_name_or_target_is_a_422_naming_it(api: str) -> None:
    for field, value in UPLOAD_FIELDS:
        r = httpx.post(f"{api}/datasets", files={"file": ("d.csv", CSV)}, data={field: value})
        body = _problem(r, 422)
        assert [e["field"] for e in body["errors"]] == [field], (value, body)
    assert _total(api, "datasets") == 0
    # No name given: the file's own, without its folders and control characters, names it.
    boundary = "droptuneboundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="dir/ev\x1b[31mil\x00.csv"\r\nContent-Type: text/csv\r\n\r\n'
    ).encode()
    r = httpx.post(
        f"{api}/datasets",
        content=part + CSV + f"\r\n--{boundary}--\r\n".encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "ev[31mil.csv"


NOT_NUMBERS: list[tuple[dict[str, Any], str, str]] = [
    ({"training": {"epochs": "5"}}, "training.epochs", "a string"),
    ({"training": {"epochs": True}}, "training.epochs", "true/false"),
    ({"training": {"lr": "0.01"}}, "training.lr", "a string"),
    ({"search": {"n_trials": "2"}}, "search.n_trials", "a string"),
    ({"evaluation": {"holdout": "0.2"}}, "evaluation.holdout", "a string"),
    ({"priority": False}, "priority", "true/false"),
    ({"model": {"hidden": ["256", 128]}}, "model.hidden", "a string"),
    ({"model": {"hidden": [True]}}, "model.hidden", "true/false"),
    (
        {"dataset": {"builtin": "synthetic", "options": {"n_samples": "100"}}},
        "dataset.options",
        "a string",
    ),
    ({"search": {"per_layer": 1}}, "search.per_layer", "true or false"),
]


def test_strings_and_booleans_where_numbers_are_meant_are_a_422(sqlite_api: str) -> None:
    """Pydantic's lax mode stored `"epochs": "5"` as 5 epochs and `true` as 1."""
    for spec, field, wrong in NOT_NUMBERS:
        body = _problem(httpx.post(f"{sqlite_api}/studies", json={**IRIS, **spec}), 422)
        assert [e["field"] for e in body["errors"]] == [field], (spec, body)
        assert wrong in body["errors"][0]["message"], (spec, body)
    assert _total(sqlite_api, "studies") == 0
    r = httpx.post(f"{sqlite_api}/studies", json={**IRIS, "training": {"epochs": 3, "lr": 1}})
    assert r.status_code == 201, r.text  # an integer is a number for a float field


def _nested(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


def _named(name_json: str) -> bytes:
    return ('{"dataset": {"builtin": "iris"}, "name": ' + name_json + "}").encode()


NOT_UTF8 = {
    "latin-1": b'{"name": "caf\xe9", "dataset": {"builtin": "iris"}}',
    "utf-16": json.dumps(IRIS).encode("utf-16"),  # Python's json would have read these three
    "utf-16-le": json.dumps(IRIS).encode("utf-16-le"),  # no BOM: valid UTF-8 bytes, with NULs
    "utf-32-le": json.dumps(IRIS).encode("utf-32-le"),
    "surrogate": b'{"dataset": {"builtin": "iris"}, "name": "\xed\xa0\x80"}',  # encoded
}
TOO_DEEP = {
    "arrays-10k": _nested(10_000).encode(),
    "arrays-100k": _nested(100_000).encode(),
    "objects-10k": ('{"a":' * 10_000 + "1" + "}" * 10_000).encode(),
    "just-past-the-limit": _named(_nested(MAX_JSON_DEPTH)),  # 1 + 64 levels
}


def test_a_body_not_utf8_or_nested_too_deep_is_a_400_saying_so(sqlite_api: str) -> None:
    """FastAPI answered "There was an error parsing the body" to both, or read UTF-16 and -32;
    parsed, 10 000 levels raised RecursionError. Counted before parsing, any depth is the same
    quick refusal."""
    for case, raw in NOT_UTF8.items():
        problem = _problem(_post_json(sqlite_api, raw), 400)
        assert "not UTF-8" in problem["detail"], (case, problem)
    for case, raw in TOO_DEEP.items():
        problem = _problem(_post_json(sqlite_api, raw), 400)
        assert "nested too deep" in problem["detail"], (case, problem)
        assert f"more than {MAX_JSON_DEPTH} levels" in problem["detail"], (case, problem)
    assert _total(sqlite_api, "studies") == 0
    # Up to the limit is read (and refused for what it is); brackets in strings are no nesting.
    body = _problem(_post_json(sqlite_api, _named(_nested(MAX_JSON_DEPTH - 1))), 422)
    assert [e["field"] for e in body["errors"]] == ["name"], body
    name = "[" * 150 + "{" * 40
    r = _post_json(sqlite_api, json.dumps({**IRIS, "name": name}).encode())
    assert r.status_code == 201 and r.json()["name"] == name, r.text


def _assert_clean(r: httpx.Response, *secrets: str) -> None:
    assert r.status_code >= 500, r.text
    leaked = [s for s in (*LEAKS, *secrets) if s and s in r.text]
    assert leaked == [], r.text


def _drop(url: str, table: str) -> None:
    engine = create_engine(url)
    try:
        with transaction(engine) as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()


def test_a_server_error_body_names_no_sql_table_or_path(
    api: str, db_url: str, tmp_path: Path
) -> None:
    """A forced internal error: the workers table dropped under the running API. The body
    names the exception's class only; the log keeps the statement for the operator."""
    _drop(db_url, "droptune_workers")
    r = httpx.get(f"{api}/workers", timeout=30)
    database = sa.make_url(db_url).database or ""
    _assert_clean(r, "droptune_workers", "heartbeat", database, str(tmp_path))
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["title"] == "Internal error", r.text
    assert "droptune_workers" in (tmp_path / "serve.log").read_text()


def test_a_dropped_database_is_a_503_naming_no_host_port_or_database(
    pg_url: str, tmp_path: Path
) -> None:
    database = sa.make_url(pg_url).database or ""
    with serving(pg_url, tmp_path) as base:
        r = httpx.post(f"{base}/studies", json=IRIS)
        assert r.status_code == 201, r.text
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/studies", {}),
            ("GET", "/studies/1", {}),
            ("GET", "/studies/1/best", {}),
            ("GET", "/studies/1/curve", {}),
            ("GET", "/datasets", {}),
            ("GET", "/workers", {}),
            ("POST", "/studies", {"json": IRIS}),
            ("POST", "/datasets", {"files": {"file": ("d.csv", CSV)}}),
        ]
        for method, path, kw in calls:
            r = httpx.request(method, base + path, timeout=30, **kw)
            _assert_clean(r, database, "droptune_t_")
            assert r.status_code == 503 and r.headers["content-type"] == PROBLEM, (path, r.text)
        # The dashboard's own API answers in its own words (a 503, or its 500 where Optuna's
        # storage raised outside a transaction): either way nothing about the database.
        _assert_clean(httpx.get(f"{base}/api/studies", timeout=30), database, "droptune_t_")
        shown = procs.cli("status", "1", "--url", base)
    assert shown.returncode == 1 and "unreachable" in shown.stderr, shown
    assert database not in shown.stderr + shown.stdout and "5432" not in shown.stderr


EVIL = "evil\x1b[31mred\x1b]0;title\x07\u202e"


def _parquet(tmp: Path) -> Path:
    """A data set whose column name and class labels carry escape sequences (Parquet takes
    any string; they are the data's own, so stored as they are)."""
    rows = range(40)
    table = pa.table(
        {
            "a": list(rows),
            "c\x1b[31m": [i % 3 for i in rows],
            "label": ["yes\x1b[5m" if i % 2 else "no\x9b2J" for i in rows],
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = tmp / "evil.parquet"
    path.write_bytes(buf.getvalue())
    return path


def test_the_cli_prints_names_with_escape_sequences_escaped(
    sqlite_api: str, sqlite_url: str, tmp_path: Path
) -> None:
    """A study stored before names were checked (its name and reason written straight into the
    database) and a data set whose columns and labels hold escapes: every command that shows
    them prints `\\x1b`, never the byte."""
    r = httpx.post(f"{sqlite_api}/studies", json={**IRIS, "name": "plain"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    engine = create_engine(sqlite_url)
    try:
        with transaction(engine) as conn:
            spec = conn.execute(sa.select(studies.c.spec).where(studies.c.id == sid)).scalar_one()
            conn.execute(
                studies.update()
                .where(studies.c.id == sid)
                .values(name=EVIL, reason=f"why\x1b[2J{EVIL}", spec={**spec, "name": EVIL})
            )
    finally:
        engine.dispose()
    assert httpx.get(f"{sqlite_api}/studies/{sid}").json()["name"] == EVIL  # still readable
    uploaded = procs.cli("dataset", "upload", str(_parquet(tmp_path)), "--url", sqlite_api)
    assert uploaded.returncode == 0, uploaded.stderr
    did = uploaded.stdout.split("\t")[0]
    runs = [
        ("list",),
        ("status", str(sid)),
        ("dataset", "list"),
        ("dataset", "show", did),
    ]
    outputs = {args: procs.cli(*args, "--url", sqlite_api) for args in runs}
    outputs[("upload",)] = uploaded
    for args, run in outputs.items():
        assert run.returncode == 0, (args, run.stderr)
        text = run.stdout + run.stderr
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), (args, text)
    assert safe(EVIL) in outputs[("list",)].stdout
    status = outputs[("status", str(sid))].stdout
    assert "evil\\x1b[31mred\\x1b]0;title\\x07\\u202e" in status
    assert "reason: why\\x1b[2J" in status
    assert "c\\x1b[31m: numeric" in outputs[("dataset", "show", did)].stdout
    assert "yes\\x1b[5m: 20" in outputs[("dataset", "list")].stdout


def test_safe_spells_out_what_a_terminal_would_act_on() -> None:
    assert safe("a\x1b[31mb\x00\x7f\x9b\u202e\u2066\u2028") == (
        "a\\x1b[31mb\\x00\\x7f\\x9b\\u202e\\u2066\\u2028"
    )
    assert safe("one\ntwo\tthree\r") == "one\\ntwo\\tthree\\r"
    assert safe("one\ntwo\t\x1b", lines=True) == "one\ntwo\t\\x1b"
    assert safe("dropout für 日本 ✓ 👩‍👩‍👧") == "dropout für 日本 ✓ 👩‍👩‍👧"
