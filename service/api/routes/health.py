from fastapi import APIRouter, Request

from service.api.deps import StorageDep
from service.read.schemas import Health
from service.store.db import ping

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request, url: StorageDep) -> Health:
    """The service is up and its database answers. Needs no token."""
    ping(url)
    return Health(status="ok", database="ok", coordinator=request.app.state.coordinator is not None)
