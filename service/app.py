"""The FastAPI application: routes under /api/v1, errors as `{"detail": "..."}`, and the
coordinator thread started and stopped with the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from service.api.deps import SpecRejectedError
from service.api.routes import api_router
from service.dashboard.routes import router as dashboard_router
from service.read.model import TrialNotFound
from service.settings import Settings
from service.store import studies as store
from service.tuning.spec.model import StudySpec

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
STOP_WAIT_S = 30.0
"""How long shutdown waits for the coordinator to hand its study back to the queue."""


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="shapetune",
        summary="Tune dense reward shaping for RLHF: submit, watch and resume studies.",
        version="1",
        lifespan=_lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.coordinator = None
    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(dashboard_router)  # pages at /, signed in as `service.auth` says
    _errors(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The coordinator imports the trainer (torch): an app that only serves reads, or a test
    # of the routes, never pays for it.
    from service.tuning.optuna_storage import create_tables
    from service.tuning.study.coordinator import Coordinator, CoordinatorConfig
    from service.tuning.study.loop import Timing

    settings: Settings = app.state.settings
    url = settings.storage_url()
    # Migrations and Optuna's tables, before the first request or the coordinator needs them.
    await run_in_threadpool(create_tables, url)
    if settings.coordinator:
        app.state.coordinator = Coordinator(
            CoordinatorConfig(
                url=url,
                home=settings.resolved_home(),
                timing=Timing(
                    heartbeat=settings.heartbeat_s, grace=settings.grace_s, lease=settings.lease_s
                ),
                poll_s=settings.poll_s,
                executor=settings.executor,
                ray_address=settings.ray_address,
            )
        )
        app.state.coordinator.start()
    try:
        yield
    finally:
        if app.state.coordinator is not None:
            await run_in_threadpool(app.state.coordinator.stop, STOP_WAIT_S)


def _errors(app: FastAPI) -> None:
    """Every refusal as JSON naming the problem; a database fault is the only 5xx."""

    def reply(code: int, detail: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"detail": detail, **extra}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = [_describe(err) for err in e.errors()]
        return reply(status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(problems))

    @app.exception_handler(SpecRejectedError)
    async def _spec(_: Request, e: SpecRejectedError) -> JSONResponse:
        return reply(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e), problems=e.problems)

    @app.exception_handler(store.StoreError)
    async def _store(_: Request, e: store.StoreError) -> JSONResponse:
        if isinstance(e, store.StudyNotFound | TrialNotFound):
            return reply(status.HTTP_404_NOT_FOUND, str(e))
        if isinstance(e, store.StudyExists | store.StudyStateError):
            return reply(status.HTTP_409_CONFLICT, str(e))
        log.error("study database error: %s", e)  # the cause, with SQL, stays in the log
        return reply(status.HTTP_503_SERVICE_UNAVAILABLE, "the study database is unavailable")


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    given = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
    return f"{where}: {err['msg']}{given}"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, plus the study spec as `StudyCreate`: the create route reads
    its body itself (size-bounded, validated by `parse_spec`), so FastAPI cannot see it."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    spec_schema = StudySpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(spec_schema.pop("$defs", {}))
    components["StudyCreate"] = {**spec_schema, "title": "StudyCreate"}
    app.openapi_schema = schema
    return schema
