from fastapi import APIRouter, Request

from service.api.deps import StorageDep
from service.api.schemas import Health
from service.store.db import ping, safe_url

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request, url: StorageDep) -> Health:
    """The service is up and its database answers. Needs no token."""
    ping(url)
    coordinator = request.app.state.coordinator
    return Health(
        status="ok",
        database=safe_url(url),
        coordinator=coordinator.holder if coordinator else None,
        driving=coordinator.current if coordinator else None,
    )
