"""Who a caller is: a bearer token the operator configured (`Settings.token` writes and
reads, `Settings.read_token` reads), or the dashboard's session cookie.

A browser cannot send a bearer header with a page request, so the dashboard's login form
takes a token once and leaves a cookie derived from it: an HMAC, not the token itself, and
worth a read only whichever token made it. Writes take the bearer header alone, so a page
on another site cannot make a signed-in browser write (no CSRF to defend against).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from pydantic import SecretStr

from service.settings import Settings

Role = Literal["write", "read"]
OWNER_CHARS = "A-Za-z0-9._@+-"
OWNER_PATTERN = rf"^[{OWNER_CHARS}]{{1,128}}$"
"""Who a study is for, as the client names it (tokens are shared, names are not)."""
SESSION_COOKIE = "shapetune_session"
_SESSION_CONTEXT = b"shapetune dashboard session v1"


def reads_open(settings: Settings) -> bool:
    return not settings.auth_reads or (settings.token is None and settings.read_token is None)


def _matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def token_role(token: str, settings: Settings) -> Role | None:
    if settings.token is not None and _matches(token, settings.token.get_secret_value()):
        return "write"
    if settings.read_token is not None and _matches(token, settings.read_token.get_secret_value()):
        return "read"
    return None


def session_value(token: SecretStr) -> str:
    """The cookie a token's login leaves: changing the token signs every browser out."""
    key = token.get_secret_value().encode()
    return hmac.new(key, _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def session_reads(cookie: str, settings: Settings) -> bool:
    tokens = [t for t in (settings.token, settings.read_token) if t is not None]
    return any(_matches(cookie, session_value(t)) for t in tokens)
