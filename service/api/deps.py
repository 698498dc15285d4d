"""What routes depend on: the settings, the study database, who is calling, the spec."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.limits import admit
from service.auth import SESSION_COOKIE, Role, reads_open, session_reads, token_role
from service.settings import Settings
from service.tuning.spec.model import SpecError, StudySpec
from service.tuning.spec.text import SpecTextError, load_json

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer TOKEN`")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_storage(settings: SettingsDep) -> str:
    return settings.storage_url()


StorageDep = Annotated[str, Depends(get_storage)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _role(credentials: HTTPAuthorizationCredentials | None, settings: Settings) -> Role | None:
    return None if credentials is None else token_role(credentials.credentials, settings)


def _unauthorized(credentials: HTTPAuthorizationCredentials | None) -> HTTPException:
    detail = "a bearer token is required" if credentials is None else "the token is not valid"
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def may_read(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """A bearer token, or the dashboard's session cookie (`service.auth`)."""
    settings = get_settings(request)
    if reads_open(settings) or _role(credentials, settings) is not None:
        return True
    cookie = request.cookies.get(SESSION_COOKIE)
    return cookie is not None and session_reads(cookie, settings)


def require_read(request: Request, credentials: CredentialsDep) -> None:
    if not may_read(request, credentials):
        raise _unauthorized(credentials)


def require_write(credentials: CredentialsDep, settings: SettingsDep) -> None:
    """Without a configured token the server binds to loopback only (`serve` refuses
    otherwise), and writes are open to whoever can reach it. Never the cookie."""
    if settings.token is None:
        return
    role = _role(credentials, settings)
    if role is None:
        raise _unauthorized(credentials)
    if role == "read":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token may read but not write")


class SpecRejectedError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(SpecError(problems).args[0])
        self.problems = problems


async def submitted_spec(request: Request, settings: SettingsDep) -> StudySpec:
    """The request body as a spec this server accepts (see `service.api.limits`)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > settings.max_body_bytes:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"the spec is over {settings.max_body_bytes} bytes (SHAPETUNE_MAX_BODY_BYTES)",
            )
    try:
        data = load_json(bytes(body))
    except SpecTextError as e:
        raise SpecRejectedError([str(e)]) from None
    try:
        return admit(data, settings)
    except SpecError as e:
        raise SpecRejectedError(e.problems) from None


SpecDep = Annotated[StudySpec, Depends(submitted_spec)]
