"""One NFS backend per export: what ``controller.pools`` hands NFS volumes to."""

from __future__ import annotations

from controller.nfs.backend import NfsBackend, Version

PoolKey = tuple[str, int | None, str, Version]


class NfsBackendPool:
    """One :class:`NfsBackend` per (server, port, export, version)."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._backends: dict[PoolKey, NfsBackend] = {}

    def get(self, server: str, port: int | None, export: str, version: Version) -> NfsBackend:
        key: PoolKey = (server, port, export, version)
        backend = self._backends.get(key)
        if backend is None:
            backend = NfsBackend(server, port, export, version, self._timeout)
            self._backends[key] = backend
        return backend

    def __len__(self) -> int:
        return len(self._backends)

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.aclose()
