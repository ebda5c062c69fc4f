"""GET /studies/{id}/model: the refit model to take home (a torch.export .pt2 file)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from droptune.core.errors import NotFound
from droptune.core.states import RefitState
from droptune.service.deps import CallerDep, EngineDep, ReaderDep
from droptune.service.errors import problems
from droptune.service.routes.studies import StudyId
from droptune.storage.jobs import refits

router = APIRouter(prefix="/studies", tags=["studies"])

PT2 = "application/octet-stream"


@router.get(
    "/{study_id}/model",
    response_class=Response,
    responses={
        200: {
            "content": {PT2: {"schema": {"type": "string", "format": "binary"}}},
            "description": "a torch.export program: `torch.export.load(path, extra_files=...)`",
        },
        **problems(
            404, 422, 503, why={404: "no such study, or it has no model (`detail` says why)"}
        ),
    },
)
def model(
    study_id: StudyId,
    caller: CallerDep,
    engine: EngineDep,
    reader: ReaderDep,
    which: Annotated[
        Literal["recommended", "best"],
        Query(description="the recommended rate's model, or the best rate's when it differs"),
    ] = "recommended",
) -> Response:
    status = reader.status(study_id, caller.scope)  # 404 for a study that is not the caller's
    f = refits.model_file(engine, study_id, which)
    if f is None:
        raise NotFound(_why_none(engine, study_id, status, which))
    name = f"droptune-{study_id}-{which}-dropout-{f.dropout:.3f}.pt2"
    return Response(
        f.data, media_type=PT2, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def _why_none(engine: EngineDep, study_id: int, status: str, which: str) -> str:
    state = refits.state(engine, study_id)
    if state is None:
        return (
            f"study {study_id} has no model: it ran before every study ended with one, and "
            "held out no rows to refit on (submit it again; with --holdout 0.2, or "
            "evaluation.holdout, its model is also scored on unseen rows)"
        )
    if state == RefitState.SKIPPED:
        return f"study {study_id} has no model: it ended ({status}) before its final refit"
    if state != RefitState.DONE:
        return f"study {study_id} has no model yet ({status}): the refit runs after the search"
    if which == "best" and refits.model_file(engine, study_id, "recommended") is not None:
        return f"study {study_id}: the best rate is the recommended one; download that model"
    return (
        f"study {study_id} has no stored model (no trial completed, it was too large, or its "
        "custom model could not be exported: the worker's log says why)"
    )
