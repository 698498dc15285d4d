"""One module per resource; `api_router` mounts them under /api/v1."""

from fastapi import APIRouter

from service.api.routes import health, studies

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(studies.router)
