"""A server plus how to build an NfsBackend for one NFS version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.nfs.backend import NfsBackend, Version
from tests.servers.ganesha import GaneshaServer

TIMEOUT = 5.0
FAULT_TIMEOUT = 1.5
UID = 4242  # an unprivileged owner for permission tests (no account needed)


@dataclass
class Target:
    """A server plus how to build a backend for one NFS version."""

    server: GaneshaServer
    version: Version

    def backend(self, timeout: float = TIMEOUT, **kwargs: int) -> NfsBackend:
        s = self.server
        if self.version == "3":
            return NfsBackend(s.host, None, s.export, "3", timeout, **kwargs)
        port = None if s.namespaced else s.port
        return NfsBackend(s.host, port, s.pseudo_path, self.version, timeout, **kwargs)

    def disk(self, rel: str = "") -> Path:
        return self.server.export_path / rel if rel else self.server.export_path
