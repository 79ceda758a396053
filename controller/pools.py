"""The real BackendFactory: SMB through smbprotocol, NFS through libnfs.

Backends are cached per share and identity by the protocol pools, so a
CreateVolume after the first costs one round trip, not a new session.
The NFS client library is loaded only when an NFS volume is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.share import FileShareBackend
from driver.config import Config
from driver.credentials import SmbAuth
from driver.errors import InvalidArgument
from driver.source import Source

if TYPE_CHECKING:
    from controller.nfs.pool import NfsBackendPool
    from controller.smb.pool import SmbBackendPool

# Served over NFSv4.0: libnfs 4.0 has no 4.1 sessions (see controller/nfs/backend.py).
DEFAULT_NFS_VERSION = "4.1"


class ShareBackends:
    def __init__(self, config: Config) -> None:
        # Client libraries load on first use: Probe answers sooner, and a
        # cluster using one protocol never loads the other.
        self._smb: SmbBackendPool | None = None
        self._nfs: NfsBackendPool | None = None
        self._timeout = config.backend_timeout
        self._log = (config.log_format, config.verbosity)

    def _smb_pool(self) -> SmbBackendPool:
        if self._smb is None:
            from controller.smb.connection import SmbSettings
            from controller.smb.pool import SmbBackendPool
            from controller.smb.worker import SmbWorker

            # smbprotocol's CPU goes to a process of its own: see controller/smb/worker.py.
            worker = SmbWorker(log_format=self._log[0], verbosity=self._log[1])
            self._smb = SmbBackendPool(SmbSettings(op_timeout=self._timeout), channels=worker)
        return self._smb

    def _nfs_pool(self) -> NfsBackendPool:
        if self._nfs is None:
            from controller.nfs.pool import NfsBackendPool

            self._nfs = NfsBackendPool(timeout=self._timeout)
        return self._nfs

    def get(
        self, source: Source, *, credentials: SmbAuth | None, nfs_version: str | None
    ) -> FileShareBackend:
        if source.protocol == "smb":
            if credentials is None:
                raise InvalidArgument("SMB shares need credentials")
            return self._smb_pool().get(
                source.server, source.effective_port, source.share, credentials
            )
        version = nfs_version or DEFAULT_NFS_VERSION
        return self._nfs_pool().get(source.server, source.port, source.share, version)  # type: ignore[arg-type]

    def cached(self, source: Source) -> FileShareBackend | None:
        if source.protocol == "smb" and self._smb is not None:
            return self._smb.cached(source.server, source.effective_port, source.share)
        return None

    async def aclose(self) -> None:
        if self._smb is not None:
            await self._smb.aclose()
        if self._nfs is not None:
            await self._nfs.aclose()
