"""Which backend serves a share: one place that knows SMB from NFS."""

from __future__ import annotations

from typing import Protocol

from controller.backend import FileShareBackend
from driver.credentials import SmbAuth
from driver.source import Source


class BackendFactory(Protocol):
    def get(
        self, source: Source, *, credentials: SmbAuth | None, nfs_version: str | None
    ) -> FileShareBackend:
        """A backend for the share root of ``source`` (cheap when cached)."""
        ...

    def cached(self, source: Source) -> FileShareBackend | None:
        """A live backend for this share, if one was used already (any identity)."""
        ...

    async def aclose(self) -> None: ...
