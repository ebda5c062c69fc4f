"""Uploads through the API in-process, on real databases: records, dedupe, bad files refused
with nothing stored, submit checks against the data set, delete, and the worker's file cache."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from droptune.datafiles import datafile
from droptune.service.app import create_app
from droptune.service.settings import ServiceSettings
from droptune.storage import datasets as store
from droptune.storage.sql.db import create_engine, transaction
from droptune.storage.sql.tables import dataset_chunks, datasets
from droptune.worker.run.datasets import FileCache, load_uploaded
from tests import datafiles

PROBLEM = "application/problem+json"


@pytest.fixture
def api(db_url: str) -> Iterator[TestClient]:
    settings = ServiceSettings(
        database_url=db_url, max_upload_mb=2, max_categories=20, max_columns=40, max_cells=60_000
    )
    app = create_app(settings)
    with TestClient(app, base_url="http://localhost") as client:
        yield client


def upload(api: TestClient, path: Path, **form: str) -> Any:
    with path.open("rb") as f:
        return api.post("/datasets", files={"file": (path.name, f)}, data=form)


def stored(db_url: str) -> tuple[int, int]:
    """(data set rows, stored bytes)."""
    engine = create_engine(db_url)
    try:
        with transaction(engine) as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(datasets)).scalar_one()
            size = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(dataset_chunks.c.data)), 0))
            ).scalar_one()
    finally:
        engine.dispose()
    return int(rows), int(size)


def test_upload_record_dedupe_list_show(api: TestClient, db_url: str, tmp_path: Path) -> None:
    csv = datafiles.cancer_csv(tmp_path / "cancer.csv")
    r = upload(api, csv, target="target")
    assert r.status_code == 201, r.text
    d = r.json()
    assert r.headers["location"] == f"/datasets/{d['id']}"
    assert (d["name"], d["format"], d["rows"], d["features"]) == ("cancer.csv", "csv", 569, 30)
    assert d["task"] == "classification" and d["task_inferred"] is True
    assert d["classes"] == ["0", "1"] and d["class_counts"] == [212, 357]
    assert d["bytes"] == csv.stat().st_size and len(d["sha256"]) == 64
    assert all(c["kind"] == "numeric" for c in d["columns"]) and len(d["columns"]) == 30
    assert stored(db_url) == (1, csv.stat().st_size)

    again = upload(api, csv, target="target", name="other name")
    assert again.status_code == 200 and again.json()["id"] == d["id"]
    assert stored(db_url) == (1, csv.stat().st_size)  # the bytes are stored once
    # No target given, but the default (the last column) is the one asked for before.
    same = upload(api, csv)
    assert same.status_code == 200 and same.json()["id"] == d["id"]
    assert upload(api, csv, task="classification").json()["id"] == d["id"]
    # The same bytes read another way are another data set.
    as_regression = upload(api, csv, target="mean radius")
    assert as_regression.status_code == 201 and as_regression.json()["task"] == "regression"

    page = api.get("/datasets").json()
    assert page["total"] == 2 and [i["id"] for i in page["items"]][-1] == d["id"]
    shown = api.get(f"/datasets/{d['id']}").json()
    assert shown["sha256"] == d["sha256"] and shown["studies"] == []
    assert api.get("/datasets/999").status_code == 404


def test_mixed_columns_and_images_are_described(api: TestClient, tmp_path: Path) -> None:
    mixed = upload(api, datafiles.mixed_csv(tmp_path / "mixed.csv")).json()
    assert mixed["target"] == "label" and mixed["classes"] == ["no", "yes"]
    kinds = {c["name"]: (c["kind"], c["missing"], c["categories"]) for c in mixed["columns"]}
    assert kinds["colour"][0] == "categorical" and kinds["colour"][2] == 3
    assert kinds["x1"][0] == "numeric" and kinds["x1"][1] > 0
    # 2 numeric + 3 categories + indicators for the two columns with gaps
    assert mixed["encoded_features"] == 2 + 3 + 2
    images = upload(api, datafiles.image_npz(tmp_path / "digits.npz")).json()
    assert images["image_shape"] == [1, 8, 8] and images["features"] == 64
    assert images["classes"][0] == "d0" and images["target"] is None


def _ragged(p: Path) -> None:
    p.write_text("a,b,label\n1,2,x\n3,y\n5,6,x\n7,8,y\n")


def _npz_object(p: Path) -> None:
    np.savez(p, X=np.array([[1, "a"], [2, "b"]], dtype=object), y=np.array([0, 1]))


def _npz_nan(p: Path) -> None:
    X = np.ones((10, 3))
    X[2, 1] = np.nan
    np.savez(p, X=X, y=np.arange(10) % 2)


def _npz_mismatch(p: Path) -> None:
    np.savez(p, X=np.ones((10, 3)), y=np.arange(9) % 2)


def _npz_5d(p: Path) -> None:
    np.savez(p, X=np.ones((4, 1, 2, 2, 2)), y=np.arange(4) % 2)


def _npz_bomb(p: Path) -> None:
    """An .npy header declaring 10^12 cells, with almost no data behind it."""
    header = np.lib.format.header_data_from_array_1_0(np.ones((2, 2)))
    header["shape"] = (10**6, 10**6)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    y = io.BytesIO()
    np.save(y, np.zeros(10**6))
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", buf.getvalue() + b"\0" * 64)
        z.writestr("y.npy", y.getvalue())


def _wide(p: Path) -> None:
    # 30 distinct strings in one column; the test API allows 20 categories
    p.write_text("name,v,label\n" + "".join(f"n{i},{i},{i % 2}\n" for i in range(30)))


def _columns(p: Path) -> None:
    p.write_text(",".join(f"c{i}" for i in range(50)) + ",label\n" + "1," * 50 + "x\n")


def _cells(p: Path) -> None:  # 20 columns x 4000 rows: over the test API's 60 000 cells
    p.write_text(",".join(f"c{i}" for i in range(20)) + ",label\n" + ("1," * 20 + "x\n") * 4000)


BAD: list[tuple[str, Any, int, str]] = [
    ("empty.csv", lambda p: p.write_bytes(b""), 422, "empty"),
    ("header.csv", lambda p: p.write_text("a,b,label\n"), 422, "no data rows"),
    ("ragged.csv", _ragged, 422, "has 2 fields"),
    ("unknown.csv", lambda p: p.write_text("a,b\n1,2\n3,4\n"), 422, "nope"),
    ("gap.csv", lambda p: p.write_text("a,label\n1,x\n2,\n3,y\n4,x\n5,y\n"), 422, "missing"),
    ("one.csv", lambda p: p.write_text("a,label\n1,x\n2,x\n3,x\n"), 422, "one class"),
    ("tiny.csv", lambda p: p.write_text("a,label\n1,x\n2,x\n3,y\n4,x\n"), 422, "'y'"),
    ("nan.npz", _npz_nan, 422, "non-finite"),
    ("object.npz", _npz_object, 422, "object"),
    ("mismatch.npz", _npz_mismatch, 422, "10"),
    ("five.npz", _npz_5d, 422, "5 dimensions"),
    ("bomb.npz", _npz_bomb, 422, "limit"),
    ("wide.csv", _wide, 422, "name"),
    ("columns.csv", _columns, 422, "40"),
    ("cells.csv", _cells, 422, "60000"),
    ("binary.bin", lambda p: p.write_bytes(bytes(range(256)) * 8), 422, "CSV, NPZ or Parquet"),
    ("big.csv", lambda p: p.write_bytes(b"a,label\n" + b"1,x\n2,y\n" * 300_000), 413, "MAX_UPLOAD"),
]


@pytest.mark.parametrize(("name", "make", "status", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_upload_is_a_problem_and_stores_nothing(
    api: TestClient, db_url: str, tmp_path: Path, name: str, make: Any, status: int, words: str
) -> None:
    path = tmp_path / name
    make(path)
    form = {"target": "nope"} if name == "unknown.csv" else {}
    r = upload(api, path, **form)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["status"] == status and words.lower() in problem["detail"].lower(), problem
    assert "Traceback" not in problem["detail"]
    assert stored(db_url) == (0, 0)


def test_submit_is_checked_against_the_data_set(api: TestClient, tmp_path: Path) -> None:
    cls = upload(api, datafiles.mixed_csv(tmp_path / "mixed.csv")).json()
    reg = upload(api, datafiles.regression_csv(tmp_path / "reg.csv")).json()
    assert reg["task"] == "regression" and reg["target"] == "price" and reg["target_std"] > 1
    smallest = min(cls["class_counts"])
    six = tmp_path / "six.csv"  # issue 22: a tiny table "succeeded" at 1.0 +- 0
    six.write_text("a,label\n" + "".join(f"{i},{'xy'[i % 2]}\n" for i in range(6)))
    tiny = upload(api, six).json()
    cases = [
        ({"dataset": {"id": tiny["id"]}, "cv": {"folds": 2}}, "dataset", "at least 8 rows"),
        ({"dataset": {"builtin": "iris"}, "cv": {"folds": 50}}, "dataset", "3 unseen rows"),
        (  # 4 rows searched after the holdout; 10 rows would leave the 8 that two folds need
            {"dataset": {"id": tiny["id"]}, "cv": {"folds": 2}, "evaluation": {"holdout": 0.2}},
            "dataset",
            "at least 10 rows",
        ),
        ({"dataset": {"id": 999}}, "dataset.id", "not found"),
        ({"dataset": {"id": cls["id"]}, "cv": {"folds": smallest + 1}}, "cv.folds", "smallest"),
        ({"dataset": {"id": cls["id"]}, "cv": {"metric": "rmse"}}, "cv.metric", "classification"),
        ({"dataset": {"id": reg["id"]}, "cv": {"metric": "accuracy"}}, "cv.metric", "regression"),
        ({"dataset": {"id": cls["id"]}, "model": {"kind": "cnn"}}, "model.kind", "tabular"),
        ({"dataset": {"builtin": "wine", "path": "/tmp/x.csv"}}, "dataset.path", "upload"),
        ({"dataset": {"url": "https://x/y.csv"}}, "dataset.url", "upload"),
        ({"dataset": {"builtin": "iris", "id": cls["id"]}}, "dataset.builtin", "exactly one"),
    ]
    for body, field, words in cases:
        r = api.post("/studies", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == PROBLEM
        p = r.json()
        assert field in [e["field"] for e in p["errors"]], (body, p)
        assert words in p["detail"], (body, p)
    assert api.get("/studies").json()["total"] == 0
    r = api.post("/studies", json={"dataset": {"id": reg["id"]}, "search": {"n_trials": 2}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["cv"]["metric"] == "rmse"  # the regression default, resolved
    assert r.json()["spec"]["dataset"] == {"id": reg["id"], "options": {}}


def test_delete_is_refused_while_a_study_uses_it(api: TestClient, tmp_path: Path) -> None:
    d = upload(api, datafiles.tabular_npz(tmp_path / "t.npz")).json()
    sid = api.post("/studies", json={"dataset": {"id": d["id"]}}).json()["id"]
    assert api.get(f"/datasets/{d['id']}").json()["studies"] == [sid]
    r = api.delete(f"/datasets/{d['id']}")
    assert r.status_code == 409 and str(sid) in r.json()["detail"], r.text
    api.post(f"/studies/{sid}/cancel")
    assert api.delete(f"/datasets/{d['id']}").status_code == 204
    assert api.get(f"/datasets/{d['id']}").status_code == 404
    assert api.delete(f"/datasets/{d['id']}").status_code == 404
    # The ended study's record and answer stay readable.
    assert api.get(f"/studies/{sid}").status_code == 200
    assert api.get(f"/studies/{sid}/best").status_code == 200
    r = api.post("/studies", json={"dataset": {"id": d["id"]}})
    assert r.status_code == 422 and "not found" in r.json()["detail"]


def test_openapi_documents_the_multipart_form(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    body = doc["paths"]["/datasets"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    ref = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    props = doc["components"]["schemas"][ref]["properties"]
    assert {"file", "name", "target", "task"} <= set(props)


def _store(engine: sa.Engine, path: Path, fmt: str) -> tuple[Any, str]:
    """A data set stored as the API stores an upload: (record, sha256)."""
    with path.open("rb") as f:
        sha, size = store.sha256_of(f)
        record, created = store.create(
            engine,
            owner="a",
            name=path.name,
            sha256=sha,
            size=size,
            summary=datafile.inspect(f, fmt),
            f=f,
            asked_target=None,
            asked_task=None,
        )
    assert created
    return record, sha


def _count_chunk_reads(engine: sa.Engine) -> list[str]:
    seen: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _log(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if "droptune_dataset_chunks" in statement:
            seen.append(statement)

    return seen


def test_worker_cache_reads_the_bytes_once_and_checks_them(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    csv = datafiles.mixed_csv(tmp_path / "mixed.csv")
    record, sha = _store(engine, csv, "csv")
    cache = FileCache(engine, tmp_path / "cache", max_bytes=10 * 2**20)
    reads = _count_chunk_reads(engine)
    ds = load_uploaded(cache, record.id)
    assert (
        cache.fetched == 1 and reads and (tmp_path / "cache" / sha).read_bytes() == csv.read_bytes()
    )
    assert ds.n_classes == 2 and ds.y.shape == (240,)
    reads.clear()
    again = load_uploaded(FileCache(engine, tmp_path / "cache", 10 * 2**20), record.id)
    assert reads == [] and again.y.tolist() == ds.y.tolist()  # from disk, not the database
    # Bytes fetched from the database are checked against the record's sha256.
    with transaction(engine) as conn:
        conn.execute(dataset_chunks.update().values(data=b"tampered"))
    fresh = FileCache(engine, tmp_path / "other", 10 * 2**20)
    with pytest.raises(ValueError, match="sha256"):
        fresh.path(record.id)
    assert list((tmp_path / "other").iterdir()) == []  # no partial file left behind
    engine.dispose()


def test_cache_evicts_least_recently_used(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    ids = []
    for seed in range(3):
        path = datafiles.tabular_npz(tmp_path / f"t{seed}.npz", n=400, seed=seed)
        rec, sha = _store(engine, path, "npz")
        size = path.stat().st_size
        ids.append((rec.id, sha, size))
    limit = ids[0][2] + ids[1][2] + 10  # room for two files
    cache = FileCache(engine, tmp_path / "c", limit)
    for n, (i, sha, _) in enumerate(ids):
        cache.path(i)
        t = 1_000_000 + n  # distinct use times, whatever the file system's clock resolution
        os.utime(tmp_path / "c" / sha, (t, t))
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert names == {ids[1][1], ids[2][1]}  # the first, least recently used, went
    engine.dispose()
