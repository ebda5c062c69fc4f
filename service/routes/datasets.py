"""/datasets: upload a data set once (CSV, NPZ, Parquet), list, inspect and delete it.

An upload is spooled to a temporary file by Starlette's form parser (in memory only up to 1 MB),
hashed, deduplicated by content, validated by reading it once in blocks (`datafiles.datafile`), and
stored in the database in chunks: the API never holds the whole file in memory.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile
from starlette.datastructures import UploadFile as FormFile

from droptune.core.errors import Invalid, TooLarge, too_large
from droptune.core.schemas import DatasetOut, DatasetPage
from droptune.core.spec.names import check_text, printable
from droptune.service.deps import CallerDep, EngineDep, SettingsDep
from droptune.service.errors import problems
from droptune.service.settings import ServiceSettings
from droptune.storage import datasets
from droptune.storage.submit.quotas import Quotas

DB_INT = 2**63 - 1
DatasetId = Annotated[int, Path(ge=1, le=DB_INT, description="the data set's id")]
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around the file
ONE_DATASET = problems(404, 422, 503, why={404: "no such data set"})


def upload_limit(settings: ServiceSettings) -> int:
    return int(settings.max_upload_mb * 2**20)


def form_text(value: str | None, field: str) -> str | None:
    """A form field naming something (`name`, `target`), refused (422 naming the field) when
    it holds a NUL or a control character: PostgreSQL refuses a NUL (a 500), SQLite stores it."""
    if value is None:
        return None
    try:
        return check_text(value, field)
    except ValueError as exc:
        raise Invalid(str(exc), field=field) from None


def default_name(filename: str | None, fmt: str) -> str:
    """The file's own name, without its folders and control characters (the client chose no
    name, so nothing is refused for it)."""
    return printable(PurePath(filename or "").name)[:200] or f"upload.{fmt}"


async def one_file(request: Request) -> None:
    """Refuse (422 naming `file`) a form holding more than one file part: FastAPI hands the
    route the last `file` part and drops the rest without a word, so a client (or an attacker
    probing what gets checked) would not know which file was stored. The form is parsed once:
    Starlette keeps the one FastAPI read for the route's parameters."""
    form = await request.form()
    # A file under any name, and anything named `file` (a text part beside the file as well).
    files = [
        (key, value.filename if isinstance(value, FormFile) else None)
        for key, value in form.multi_items()
        if isinstance(value, FormFile) or key == "file"
    ]
    if len(files) > 1:
        parts = ", ".join(f"{key}={name!r}" for key, name in files[:5])
        raise Invalid(
            f"file: one file per upload: the request has {len(files)} file parts ({parts}); "
            "send each data set in its own request",
            field="file",
        )


# The body limit is service.limits.BodyLimit, set up by create_app: upload_limit(settings) +
# FORM_OVERHEAD for this route.
router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    dependencies=[Depends(one_file)],
    response_model=DatasetOut,
    responses={
        200: {"model": DatasetOut, "description": "the same bytes were uploaded before"},
        **problems(
            400,
            403,
            413,
            422,
            503,
            why={
                403: "DROPTUNE_QUOTA_DATASET_MB: the owner's stored data sets would exceed it",
                422: "a missing or invalid field, more than one file part, or a file droptune "
                "cannot train on",
            },
        ),
    },
)
def upload(
    response: Response,
    caller: CallerDep,
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
    name, target = form_text(name, "name"), form_text(target, "target")
    f = file.file
    sha, size = datasets.sha256_of(f)
    if size > upload_limit(settings):  # within the form's overhead allowance
        raise TooLarge(too_large(settings.max_upload_mb))
    existing = datasets.find(engine, caller.name, sha, target, task)
    if existing is not None:
        response.status_code = 200
        return existing
    # Here, not at the top: the readers bring pandas and pyarrow (~0.6 s of CPU and ~100 MiB),
    # which `serve` then loads on its first upload instead of at every start.
    from droptune.datafiles import datafile

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
        owner=caller.name,
        name=name or default_name(file.filename, fmt),
        sha256=sha,
        size=size,
        summary=summary,
        f=f,
        asked_target=target,
        asked_task=task,
        quotas=Quotas.of(settings),
    )
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{record.id}"
    return record


@router.get("", response_model=DatasetPage, responses=problems(422, 503))
def list_datasets(
    caller: CallerDep,
    engine: EngineDep,
    offset: Annotated[int, Query(ge=0, le=DB_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DatasetPage:
    """Your data sets, newest first."""
    return datasets.page(engine, caller.scope, offset, limit)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=ONE_DATASET)
def get_dataset(dataset_id: DatasetId, caller: CallerDep, engine: EngineDep) -> DatasetOut:
    """A data set's record, with the studies that train on it."""
    return datasets.get(engine, dataset_id, caller.scope)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses=problems(
        404, 409, 422, 503, why={404: "no such data set", 409: "a queued or running study uses it"}
    ),
)
def delete_dataset(dataset_id: DatasetId, caller: CallerDep, engine: EngineDep) -> Response:
    """Delete a data set and its bytes (ended studies keep their answers)."""
    datasets.delete(engine, dataset_id, caller.scope)
    return Response(status_code=204)
