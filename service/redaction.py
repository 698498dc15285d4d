"""The one redaction of what may hold a secret before anything shows it."""

from __future__ import annotations

import re

_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|sslpassword|token|secret)=)[^&#]*")


def safe_url(url: str) -> str:
    """The URL as it may be shown: its password (in the user part or the query) as `***`.

    The one function every URL goes through before a log line, an error, an API response,
    a page or the terminal shows it."""
    scheme, sep, rest = url.partition("://")
    if sep:
        location, query_sep, query = rest.partition("?")
        creds, at, host = location.rpartition("@")
        if at and ":" in creds:
            location = f"{creds.split(':', 1)[0]}:***@{host}"
        rest = location + query_sep + query
    return _SECRET_QUERY.sub(r"\1***", scheme + sep + rest)
