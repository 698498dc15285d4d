"""A client of a running `shapetune serve`: what `submit` and `status/resume/cancel --url`
call. It imports no model library, so these commands start in a second."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from service.redaction import safe_url

API_PREFIX = "/api/v1"
PAGE = 100


class RemoteError(RuntimeError):
    """The service refused the request or could not be reached; the message says which."""


class ServiceClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers, timeout=timeout_s)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RemoteError(f"cannot reach the service at {safe_url(self.url)}: {e}") from None
        if response.is_error:
            try:
                detail = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                detail = response.text[:500] or response.reason_phrase
            hint = " (give --token or set SHAPETUNE_TOKEN)" if response.status_code == 401 else ""
            raise RemoteError(
                f"{safe_url(self.url)} answered {response.status_code}: {detail}{hint}"
            )
        return response.json()

    def submit(self, spec: dict[str, Any], owner: str = "") -> dict[str, Any]:
        headers = {"Shapetune-Owner": owner} if owner else {}
        result: dict[str, Any] = self._call("POST", "/studies", json=spec, headers=headers)
        return result

    def studies(
        self, status: str | None = None, owner: str | None = None
    ) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in (("status", status), ("owner", owner)) if v is not None}
        yield from self._pages("/studies", params)

    def study(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/studies/{quote(name, safe='')}")
        return result

    def trials(self, name: str) -> Iterator[dict[str, Any]]:
        yield from self._pages(f"/studies/{quote(name, safe='')}/trials", {})

    def resume(self, name: str) -> str:
        return str(self._call("POST", f"/studies/{quote(name, safe='')}/resume")["status"])

    def cancel(self, name: str) -> str:
        return str(self._call("POST", f"/studies/{quote(name, safe='')}/cancel")["status"])

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self._call("GET", path, params={**params, "offset": offset, "limit": PAGE})
            yield from page["data"]
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                return
