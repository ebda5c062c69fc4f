"""Uploaded data sets: their records and bytes in the database, found by id or by content.

The bytes live in `droptune_dataset_chunks`, CHUNK_BYTES a row, written and read one chunk at a
time: neither the API nor a worker holds a whole file in memory to store or fetch it, and any
worker with the database URL can train on any data set.
"""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core.errors import Conflict, Invalid, NotFound, StorageError
from droptune.core.schemas import DatasetOut, DatasetPage, DataSummary
from droptune.core.spec.strict import FieldError
from droptune.core.spec.study import StudySpec
from droptune.core.states import ACTIVE
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import dataset_chunks, datasets, studies
from droptune.storage.submit.quotas import DATASETS, Quotas, check_dataset_bytes, lock_owner

CHUNK_BYTES = 4 << 20


def sha256_of(f: BinaryIO) -> tuple[str, int]:
    """The file's sha256 and size, read in chunks from the start."""
    f.seek(0)
    h, n = hashlib.sha256(), 0
    while block := f.read(1 << 20):
        h.update(block)
        n += len(block)
    f.seek(0)
    return h.hexdigest(), n


def _out(row: sa.Row[Any], used_by: list[int]) -> DatasetOut:
    return DatasetOut(
        **{**DataSummary.model_validate(row.summary).model_dump(), "held_bytes": row.held_bytes},
        id=row.id,
        name=row.name,
        owner=row.owner,
        sha256=row.sha256,
        bytes=row.bytes,
        created_at=row.created_at,
        studies=used_by,
    )


def _used_by(conn: Connection, ids: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {i: [] for i in ids}
    if ids:
        rows = conn.execute(
            sa.select(studies.c.dataset_id, studies.c.test_dataset_id, studies.c.id)
            .where(sa.or_(studies.c.dataset_id.in_(ids), studies.c.test_dataset_id.in_(ids)))
            .order_by(studies.c.id.desc())
        ).all()
        for r in rows:
            for used in {r.dataset_id, r.test_dataset_id} & set(ids):
                out[int(used)].append(int(r.id))
    return out


def _matching(
    conn: Connection,
    owner: str,
    sha256: str,
    target: str | None,
    task: str | None,
    *,
    as_read: bool = False,
) -> sa.Row[Any] | None:
    """A record of these bytes read as asked: the same target and task (or, where one was not
    asked for, the same default); with `as_read`, the same target and task as read."""
    rows = conn.execute(
        sa.select(datasets)
        .where(datasets.c.owner == owner, datasets.c.sha256 == sha256)
        .order_by(datasets.c.id)
    ).all()
    for r in rows:
        if as_read:
            if r.summary["target"] == target and r.task == task:
                return r
            continue
        same_target = r.asked_target == "" if target is None else r.summary["target"] == target
        same_task = r.asked_task == "" if task is None else r.task == task
        if same_target and same_task:
            return r
    return None


def find(
    engine: Engine, owner: str, sha256: str, target: str | None, task: str | None
) -> DatasetOut | None:
    """The owner's data set with these bytes, read with this target and task, if stored."""
    with transaction(engine, read_only=True) as conn:
        row = _matching(conn, owner, sha256, target, task)
        return None if row is None else _out(row, _used_by(conn, [row.id])[row.id])


def _store_chunks(conn: Connection, dataset_id: int, f: BinaryIO) -> None:
    """The file's bytes, CHUNK_BYTES a row, in order."""
    f.seek(0)
    seq = 0
    while block := f.read(CHUNK_BYTES):
        conn.execute(dataset_chunks.insert().values(dataset_id=dataset_id, seq=seq, data=block))
        seq += 1


def create(
    engine: Engine,
    *,
    owner: str,
    name: str,
    sha256: str,
    size: int,
    summary: DataSummary,
    f: BinaryIO,
    asked_target: str | None,
    asked_task: str | None,
    quotas: Quotas | None = None,
) -> tuple[DatasetOut, bool]:
    """Store the record and the bytes of `f` in one transaction: (record, True), or the record
    already stored for the same content (record, False). Nothing is stored on any error, nor
    when the owner's stored bytes would pass `quotas.dataset_mb` (403). A data set counts by
    what the workers hold decompressed, and never less than the file stored (an NPZ member or
    Parquet padding no reader touches is still stored)."""
    held = max(summary.held_bytes or 0, size)
    try:
        with transaction(engine) as conn:
            lock_owner(conn, owner, DATASETS)  # two uploads cannot both slip under the quota
            # As asked, or as read: `--target label` and no --target that defaults to `label`
            # are the same data set.
            existing = _matching(conn, owner, sha256, asked_target, asked_task) or _matching(
                conn, owner, sha256, summary.target, summary.task, as_read=True
            )
            if existing is not None:
                return _out(existing, _used_by(conn, [existing.id])[existing.id]), False
            if quotas is not None:
                check_dataset_bytes(conn, owner, held, quotas)
            dataset_id = conn.execute(
                datasets.insert()
                .values(
                    owner=owner,
                    name=name,
                    sha256=sha256,
                    format=summary.format,
                    bytes=size,
                    held_bytes=held,  # what the quota counts
                    rows=summary.rows,
                    features=summary.features,
                    task=summary.task,
                    asked_target=asked_target or "",
                    asked_task=asked_task or "",
                    summary=summary.model_dump(mode="json"),
                )
                .returning(datasets.c.id)
            ).scalar_one()
            _store_chunks(conn, dataset_id, f)
            row = conn.execute(sa.select(datasets).where(datasets.c.id == dataset_id)).one()
            return _out(row, []), True
    except sa.exc.IntegrityError as exc:
        if not _lost_race(exc):
            raise  # another constraint: a bug, not a concurrent upload
    # Two uploads of the same bytes raced (PostgreSQL): the other one stored it.
    found = find(engine, owner, sha256, asked_target, asked_task)
    if found is None:
        raise StorageError("the data set could not be stored (a concurrent upload failed)")
    return found, False


def _lost_race(exc: sa.exc.IntegrityError) -> bool:
    """Whether the insert broke uq_droptune_dataset: the same record was stored meanwhile."""
    diag = getattr(exc.orig, "diag", None)  # psycopg names the constraint; pysqlite does not
    if diag is not None:
        return getattr(diag, "constraint_name", None) == "uq_droptune_dataset"
    return f"UNIQUE constraint failed: {datasets.name}." in str(exc.orig)


def _owned(owner: str | None) -> list[sa.ColumnElement[bool]]:
    """The WHERE clause scoping data sets to an owner (None: an admin's, any owner)."""
    return [] if owner is None else [datasets.c.owner == owner]


def get(engine: Engine, dataset_id: int, owner: str | None) -> DatasetOut:
    with transaction(engine, read_only=True) as conn:
        row = conn.execute(
            sa.select(datasets).where(datasets.c.id == dataset_id, *_owned(owner))
        ).one_or_none()
        if row is None:
            raise NotFound(f"data set {dataset_id} not found")
        return _out(row, _used_by(conn, [row.id])[row.id])


def page(engine: Engine, owner: str | None, offset: int, limit: int) -> DatasetPage:
    with transaction(engine, read_only=True) as conn:
        total = conn.execute(
            sa.select(sa.func.count()).select_from(datasets).where(*_owned(owner))
        ).scalar_one()
        rows = conn.execute(
            sa.select(datasets)
            .where(*_owned(owner))
            .order_by(datasets.c.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        used = _used_by(conn, [r.id for r in rows])
    return DatasetPage(
        items=[_out(r, used[r.id]) for r in rows], total=total, offset=offset, limit=limit
    )


def delete(engine: Engine, dataset_id: int, owner: str | None) -> None:
    """Remove a data set and its bytes; 409 while a queued or running study trains on it.
    Ended studies keep their answers (they never read the data set again)."""
    with transaction(engine) as conn:
        found = conn.execute(
            sa.select(datasets.c.id)
            .where(datasets.c.id == dataset_id, *_owned(owner))
            .with_for_update()  # a submit naming it waits for this (it takes FOR SHARE)
        ).one_or_none()
        if found is None:
            raise NotFound(f"data set {dataset_id} not found")
        active = (
            conn.execute(
                sa.select(studies.c.id)
                .where(
                    sa.or_(
                        studies.c.dataset_id == dataset_id,
                        studies.c.test_dataset_id == dataset_id,  # its refit scores on it
                    ),
                    studies.c.status.in_(ACTIVE),
                )
                .order_by(studies.c.id)
            )
            .scalars()
            .all()
        )
        if active:
            raise Conflict(
                f"data set {dataset_id} is used by queued or running studies {list(active)}: "
                "cancel them (or let them end) first"
            )
        conn.execute(dataset_chunks.delete().where(dataset_chunks.c.dataset_id == dataset_id))
        conn.execute(datasets.delete().where(datasets.c.id == dataset_id))


def fit_spec(conn: Connection, spec: StudySpec, owner: str) -> tuple[StudySpec, DataSummary]:
    """The spec checked against the uploaded data set it names (metric resolved), with that
    data set's summary, or a 422 naming the field; the data set stays locked until the study
    is stored."""
    dataset_id = spec.dataset.id
    assert dataset_id is not None
    summary = for_study(conn, dataset_id, owner)
    if summary is None:
        raise Invalid(
            f"dataset.id: data set {dataset_id} not found; upload one with `droptune dataset "
            "upload FILE` (POST /datasets), and list yours with GET /datasets",
            field="dataset.id",
        )
    try:
        fitted = spec.for_data(
            summary.task,
            summary.image_shape,
            summary.rows,
            summary.encoded_features,
            min(summary.class_counts) if summary.class_counts else None,
        )
        return fitted, summary
    except FieldError as exc:
        raise Invalid(f"{exc.field}: {exc.message}", field=exc.field) from exc


def for_study(conn: Connection, dataset_id: int, owner: str) -> DataSummary | None:
    """The summary of the owner's data set a new study names, held (FOR SHARE on PostgreSQL)
    until the study is stored, so the data set cannot be deleted in between."""
    row = conn.execute(
        sa.select(datasets.c.summary)
        .where(datasets.c.id == dataset_id, datasets.c.owner == owner)
        .with_for_update(read=True)
    ).one_or_none()
    return None if row is None else DataSummary.model_validate(row.summary)


def same_bytes(conn: Connection, a: int, b: int) -> bool:
    """Whether two data sets are one file (the same id, or the same sha256)."""
    shas = (
        conn.execute(sa.select(datasets.c.sha256).where(datasets.c.id.in_([a, b]))).scalars().all()
    )
    return a == b or (len(shas) == 2 and shas[0] == shas[1])


def record(engine: Engine, dataset_id: int) -> tuple[str, int, DataSummary]:
    """(sha256, bytes, summary) of a data set, for a worker (workers act for every owner)."""
    with transaction(engine, read_only=True) as conn:
        row = conn.execute(
            sa.select(datasets.c.sha256, datasets.c.bytes, datasets.c.summary).where(
                datasets.c.id == dataset_id
            )
        ).one_or_none()
    if row is None:
        raise NotFound(f"data set {dataset_id} not found (deleted?)")
    return str(row.sha256), int(row.bytes), DataSummary.model_validate(row.summary)


def read_bytes(engine: Engine, dataset_id: int, out: BinaryIO) -> str:
    """Write a data set's bytes to `out`, one chunk at a time; return their sha256."""
    h = hashlib.sha256()
    with transaction(engine, read_only=True) as conn:
        n = conn.execute(
            sa.select(sa.func.count()).where(dataset_chunks.c.dataset_id == dataset_id)
        ).scalar_one()
        for seq in range(n):
            block = conn.execute(
                sa.select(dataset_chunks.c.data).where(
                    dataset_chunks.c.dataset_id == dataset_id, dataset_chunks.c.seq == seq
                )
            ).scalar_one()
            h.update(block)
            out.write(block)
    return h.hexdigest()


def check_test_dataset(conn: Connection, spec: StudySpec, owner: str) -> None:
    """evaluation.test_dataset must be the owner's, of the same task and the same columns (or
    image shape) as the data set searched, with no class the search never saw."""
    field = "evaluation.test_dataset"
    test_id = spec.evaluation.test_dataset
    assert test_id is not None
    test = for_study(conn, test_id, owner)
    if test is None:
        raise Invalid(f"{field}: data set {test_id} not found", field=field)
    if spec.dataset.id is None:
        raise Invalid(
            f"{field}: a test data set needs an uploaded dataset.id with the same columns; "
            "for a built-in data set use evaluation.holdout (CLI: --holdout)",
            field=field,
        )
    train = for_study(conn, spec.dataset.id, owner)
    assert train is not None  # checked by _for_dataset
    columns = [(c.name, c.kind) for c in train.columns]
    problem: str | None = None
    if same_bytes(conn, test_id, spec.dataset.id):
        problem = "it is the data set searched (the same file): a test score on it would be a "
        problem += "score on training rows; upload held-out rows, or use evaluation.holdout "
        problem += "(CLI: --holdout)"
    elif test.task != train.task:
        problem = f"it is a {test.task} data set; dataset.id is {train.task}"
    elif differ := _column_difference(dict(columns), {c.name: c.kind for c in test.columns}):
        problem = differ
    elif (test.image_shape or None) != (train.image_shape or None) or (
        test.features != train.features
    ):
        problem = "its feature shape differs from dataset.id's"
    elif train.classes is not None and not set(test.classes or []) <= set(train.classes):
        extra = sorted(set(test.classes or []) - set(train.classes))[:5]
        problem = f"it has classes the search never sees: {extra}"
    if problem:
        raise Invalid(f"{field}: data set {test_id} does not fit: {problem}", field=field)


def _column_difference(train: dict[str, str], test: dict[str, str]) -> str | None:
    """How a test data set's columns differ from the searched one's (their order may differ:
    preprocessing picks columns by name), or None."""
    missing = [n for n in train if n not in test]
    extra = [n for n in test if n not in train]
    kinds = [
        f"{n!r} is {test[n]}, not {train[n]}" for n in train if n in test and test[n] != train[n]
    ]
    parts = []
    if missing:
        parts.append(f"it lacks column(s) {missing[:5]}")
    if extra:
        parts.append(f"it has column(s) the search never saw {extra[:5]}")
    if kinds:
        parts.append("; ".join(kinds[:5]))
    return "; ".join(parts) or None
