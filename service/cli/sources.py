"""Where the study commands read studies from: the store on this machine (the read model,
`service.read.model`) or a running service (its REST API). Both give the API's schemas, so
`status NAME` prints the same table either way and the commands have no `if url:` branches
past choosing the source."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from service.cli.options import existing_storage, resolve_home, resolve_storage
from service.redaction import safe_url

if TYPE_CHECKING:
    from service.read.schemas import StudiesPublic, StudyPublic, TrialsPublic


T = TypeVar("T")


class SourceError(RuntimeError):
    """The store or the service failed; the message says which and why."""


class StudySource(Protocol):
    where: str
    """What the source is, as it may be shown (no password)."""

    def studies(self) -> StudiesPublic: ...

    def study(self, name: str) -> StudyPublic: ...

    def trials(self, name: str) -> TrialsPublic: ...

    def cancel(self, name: str) -> str: ...


class LocalSource:
    # The read model and the store import optuna and sqlalchemy (about a second): only the
    # methods that read import them, so `--help` and `--url` never pay for them.
    def __init__(self, database: str) -> None:
        self.database, self.where = database, f"studies in {safe_url(database)}"

    def studies(self) -> StudiesPublic:
        from service.read import model as read
        from service.store.db import sqlite_path

        path = sqlite_path(self.database)
        if path is not None and not path.is_file():  # nothing run yet: nothing to create
            from service.read.schemas import StudiesPublic

            return StudiesPublic(data=[], count=0)
        return self._read(lambda: read.studies(self.database))

    def study(self, name: str) -> StudyPublic:
        from service.read import model as read

        return self._read(lambda: read.study(self.database, name))

    def trials(self, name: str) -> TrialsPublic:
        from service.read import model as read

        return self._read(lambda: read.trials(self.database, name))

    def cancel(self, name: str) -> str:
        from service.store.studies import request_cancel

        return self._read(lambda: str(request_cancel(self.database, name)))

    @staticmethod
    def _read(query: Callable[[], T]) -> T:
        from service.store.db import StoreError

        try:
            return query()
        except StoreError as e:
            raise SourceError(str(e)) from None


class RemoteSource:
    def __init__(self, url: str, token: str | None) -> None:
        from service.remote import ServiceClient

        self.client, self.where = ServiceClient(url, token), f"studies at {safe_url(url)}"

    def studies(self) -> StudiesPublic:
        from service.read.schemas import StudiesPublic

        rows = self._call(lambda: list(self.client.studies()))
        return StudiesPublic.model_validate({"data": rows, "count": len(rows)})

    def study(self, name: str) -> StudyPublic:
        from service.read.schemas import StudyPublic

        return StudyPublic.model_validate(self._call(lambda: self.client.study(name)))

    def trials(self, name: str) -> TrialsPublic:
        from service.read.schemas import TrialsPublic

        rows = self._call(lambda: list(self.client.trials(name)))
        return TrialsPublic.model_validate({"data": rows, "count": len(rows)})

    def cancel(self, name: str) -> str:
        return str(self._call(lambda: self.client.cancel(name)))

    def resume(self, name: str) -> str:
        return str(self._call(lambda: self.client.resume(name)))

    @staticmethod
    def _call(request: Callable[[], T]) -> T:
        from service.remote import RemoteError

        try:
            return request()
        except RemoteError as e:
            raise SourceError(str(e)) from None


def study_source(
    url: str | None,
    token: str | None,
    storage: str | None,
    home: Path | None,
    must_exist: bool = True,
) -> StudySource:
    """The service at `url`, or else the study database (which must exist when `must_exist`:
    a command that reads one study never creates an empty database)."""
    if url:
        return RemoteSource(url, token)
    home_dir = resolve_home(home)
    database = existing_storage if must_exist else resolve_storage
    return LocalSource(database(storage, home_dir))
