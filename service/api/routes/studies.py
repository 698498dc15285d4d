from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, status

from service.api.deps import SpecDep, StorageDep, require_read, require_write
from service.auth import OWNER_PATTERN
from service.read import model as read
from service.read.schemas import (
    ArtifactsPublic,
    ErrorMessage,
    SpecRejected,
    Status,
    StudiesPublic,
    StudyAction,
    StudyCurves,
    StudyPublic,
    StudySummary,
    TrialPublic,
    TrialsPublic,
)
from service.store import studies as store
from service.tuning.spec.model import NAME_PATTERN

Owner = Annotated[
    str | None,
    Query(pattern=OWNER_PATTERN, description="Only studies this owner submitted."),
]

MAX_PAGE = 100
MAX_OFFSET = 10**9  # beyond any real study; keeps the number inside every database's integers

router = APIRouter(
    prefix="/studies",
    tags=["studies"],
    responses={
        401: {"model": ErrorMessage, "description": "No token, or a wrong one."},
        422: {"model": ErrorMessage, "description": "A parameter is out of range."},
    },
)
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The study's name.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page.")]
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": ErrorMessage, "description": "No such study (or trial)."}}
CONFLICT: Responses = {
    409: {"model": ErrorMessage, "description": "Not possible in the study's state."}
}

STUDY_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StudyCreate"}}},
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_write)],
    openapi_extra=STUDY_CREATE_BODY,
    responses={
        403: {"model": ErrorMessage, "description": "A read-only token."},
        409: {"model": ErrorMessage, "description": "A study of that name exists."},
        413: {"model": ErrorMessage, "description": "The body is too large."},
        422: {"model": SpecRejected, "description": "The spec is refused; every problem named."},
    },
)
def create_study(
    spec: SpecDep,
    url: StorageDep,
    owner: Annotated[
        str,
        Header(
            alias="Shapetune-Owner",
            pattern=OWNER_PATTERN,
            description="Who submits it (user@host, say); tokens are shared, names are not.",
        ),
    ] = "",
) -> StudySummary:
    """Queue a study. The body is a study spec (the schema `shapetune schema` prints); model
    directories and prompt files must lie under the server's allowed folders, sizes within
    its limits, and `storage` is the server's own."""
    record = store.create_study(url, spec.name, spec.stored(), owner)  # queued for the coordinator
    return read.queued(url, record)


@router.get("", dependencies=[Depends(require_read)])
def list_studies(
    url: StorageDep,
    offset: Offset = 0,
    limit: Limit = 20,
    status: Annotated[Status | None, Query(description="Only studies in this status.")] = None,
    owner: Owner = None,
) -> StudiesPublic:
    """Studies, newest first, a page at a time."""
    return read.studies(url, status, owner, offset, limit)


@router.get("/{name}", dependencies=[Depends(require_read)], responses=NOT_FOUND)
def read_study(name: Name, url: StorageDep) -> StudyPublic:
    """A study: status, progress, the incumbent's weights and objective ± s.e., control arms."""
    return read.study(url, name)


@router.get("/{name}/trials", dependencies=[Depends(require_read)], responses=NOT_FOUND)
def list_trials(name: Name, url: StorageDep, offset: Offset = 0, limit: Limit = 20) -> TrialsPublic:
    """A study's trials in the order they started."""
    return read.trials(url, name, offset, limit)


@router.get("/{name}/trials/{number}", dependencies=[Depends(require_read)], responses=NOT_FOUND)
def read_trial(
    name: Name, number: Annotated[int, Path(ge=0, le=2**31 - 1)], url: StorageDep
) -> TrialPublic:
    """One trial in full: parameters, weights, per-seed values and curves, cost, samples."""
    return read.trial(url, name, number)


@router.get("/{name}/artifacts", dependencies=[Depends(require_read)], responses=NOT_FOUND)
def list_artifacts(
    name: Name,
    url: StorageDep,
    trial: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, description="Only this trial's artifacts.")
    ] = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> ArtifactsPublic:
    """Files the study's inner runs left on their workers (checkpoints, results), by trial,
    seed and kind."""
    return read.artifacts(url, name, trial, offset, limit)


@router.get("/{name}/curves", dependencies=[Depends(require_read)], responses=NOT_FOUND)
def read_curves(name: Name, url: StorageDep) -> StudyCurves:
    """Each trial's parameters and held-out reward curve (mean over seeds), for plots."""
    return read.curves(url, name)


@router.post(
    "/{name}/resume",
    dependencies=[Depends(require_write)],
    responses={**NOT_FOUND, **CONFLICT},
)
def resume_study(name: Name, url: StorageDep) -> StudyAction:
    """Queue an interrupted or cancelled study again; it continues to its total budget."""
    return StudyAction.model_validate({"name": name, "status": store.requeue(url, name)})


@router.post("/{name}/cancel", dependencies=[Depends(require_write)], responses=NOT_FOUND)
def cancel_study(name: Name, url: StorageDep) -> StudyAction:
    """Stop a study: its coordinator ends the running trials and marks it cancelled."""
    return StudyAction.model_validate({"name": name, "status": store.request_cancel(url, name)})
