"""The real BackendFactory: SMB through smbprotocol, NFS through libnfs.

Backends are cached per share and identity by the protocol pools, so a
CreateVolume after the first costs one round trip, not a new session.
The NFS client library is loaded only when an NFS volume is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.backend import ShareBackend
from controller.smb import SmbBackendPool, SmbSettings
from driver.config import Config
from driver.credentials import Credentials
from driver.errors import InvalidArgument
from driver.source import Source

if TYPE_CHECKING:
    from controller.nfs import NfsBackendPool

DEFAULT_NFS_VERSION = "4.1"


class ShareBackends:
    def __init__(self, config: Config) -> None:
        self._smb = SmbBackendPool(SmbSettings(op_timeout=config.backend_timeout))
        self._nfs: NfsBackendPool | None = None
        self._timeout = config.backend_timeout

    def _nfs_pool(self) -> NfsBackendPool:
        if self._nfs is None:
            from controller.nfs import NfsBackendPool

            self._nfs = NfsBackendPool(timeout=self._timeout)
        return self._nfs

    def get(
        self, source: Source, *, credentials: Credentials | None, nfs_version: str | None
    ) -> ShareBackend:
        if source.protocol == "smb":
            if credentials is None:
                raise InvalidArgument("SMB shares need credentials")
            return self._smb.get(source.server, source.effective_port, source.share, credentials)
        version = nfs_version or DEFAULT_NFS_VERSION
        return self._nfs_pool().get(source.server, source.port, source.share, version)  # type: ignore[arg-type]

    def cached(self, source: Source) -> ShareBackend | None:
        if source.protocol == "smb":
            return self._smb.cached(source.server, source.effective_port, source.share)
        return None

    async def aclose(self) -> None:
        await self._smb.aclose()
        if self._nfs is not None:
            await self._nfs.aclose()
