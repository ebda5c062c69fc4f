"""/datasets: upload a data set once (CSV, NPZ, Parquet), list, inspect and delete it.

An upload is spooled to a temporary file by Starlette's form parser (in memory only up to 1 MB),
hashed, deduplicated by content, validated by reading it once in blocks (`storage.datafile`), and
stored in the database in chunks: the API never holds the whole file in memory.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile

from droptune.service.deps import EngineDep, Owner, SettingsDep
from droptune.service.errors import problems
from droptune.service.settings import ServiceSettings
from droptune.storage import datafile, datasets
from droptune.storage.errors import TooLarge, too_large
from droptune.storage.schemas import DatasetOut, DatasetPage

DB_INT = 2**63 - 1
DatasetId = Annotated[int, Path(ge=1, le=DB_INT, description="the data set's id")]
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around the file
ONE_DATASET = problems(404, 422, 503, why={404: "no such data set"})


def upload_limit(settings: ServiceSettings) -> int:
    return int(settings.max_upload_mb * 2**20)


# The body limit is service.limits.UploadLimit, set up by create_app with
# upload_limit(settings) + FORM_OVERHEAD.
router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={
        200: {"model": DatasetOut, "description": "the same bytes were uploaded before"},
        **problems(
            400,
            413,
            422,
            503,
            why={422: "a missing or invalid field, or a file droptune cannot train on"},
        ),
    },
)
def upload(
    response: Response,
    owner: Owner,
    engine: EngineDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="CSV with a header row, NPZ (X, y), Parquet")],
    name: Annotated[
        str | None, Form(max_length=200, description="default: the file's name")
    ] = None,
    target: Annotated[
        str | None,
        Form(max_length=200, description="the label column (default: `label`, else the last)"),
    ] = None,
    task: Annotated[
        Literal["classification", "regression"] | None,
        Form(description="default: decided from the target"),
    ] = None,
) -> DatasetOut:
    """Upload a data set; the same bytes (read the same way) again answer 200 with the
    record stored before."""
    f = file.file
    sha, size = datasets.sha256_of(f)
    if size > upload_limit(settings):  # within the form's overhead allowance
        raise TooLarge(too_large(settings.max_upload_mb))
    existing = datasets.find(engine, owner, sha, target, task)
    if existing is not None:
        response.status_code = 200
        return existing
    fmt = datafile.detect_format(file.filename, f.read(4096))
    f.seek(0)
    limits = datafile.Limits(
        max_columns=settings.max_columns,
        max_cells=settings.max_cells,
        max_categories=settings.max_categories,
    )
    summary = datafile.inspect(f, fmt, target=target, task=task, limits=limits)
    record, created = datasets.create(
        engine,
        owner=owner,
        name=name or PurePath(file.filename or f"upload.{fmt}").name[:200],
        sha256=sha,
        size=size,
        summary=summary,
        f=f,
        asked_target=target,
        asked_task=task,
    )
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{record.id}"
    return record


@router.get("", response_model=DatasetPage, responses=problems(422, 503))
def list_datasets(
    owner: Owner,
    engine: EngineDep,
    offset: Annotated[int, Query(ge=0, le=DB_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DatasetPage:
    """Your data sets, newest first."""
    return datasets.page(engine, owner, offset, limit)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=ONE_DATASET)
def get_dataset(dataset_id: DatasetId, owner: Owner, engine: EngineDep) -> DatasetOut:
    """A data set's record, with the studies that train on it."""
    return datasets.get(engine, dataset_id, owner)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses=problems(
        404, 409, 422, 503, why={404: "no such data set", 409: "a queued or running study uses it"}
    ),
)
def delete_dataset(dataset_id: DatasetId, owner: Owner, engine: EngineDep) -> Response:
    """Delete a data set and its bytes (ended studies keep their answers)."""
    datasets.delete(engine, dataset_id, owner)
    return Response(status_code=204)
