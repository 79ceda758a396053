"""How the core finds and runs the Controller and Node services.

``driver`` may not import ``controller`` or ``node`` (an import-linter
contract).  Each of them publishes a ``build(config) -> ServicePlugin``
function as an entry point in the ``csi_smb_nfs.services`` group; the core
loads the ones the ``--mode`` asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Protocol

import grpc

from driver.config import Config

ENTRY_POINT_GROUP = "csi_smb_nfs.services"


class ServicePlugin(Protocol):
    """A CSI service (controller or node) with its resources."""

    name: str

    def register(self, server: grpc.aio.Server) -> None:
        """Add the gRPC servicer(s) to ``server``."""
        ...

    async def start(self) -> None:
        """Begin background work once the server listens (must not block:
        long work runs in a task of its own)."""
        ...

    async def ready(self) -> bool:
        """True when the service can take requests (used by Probe)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and background tasks."""
        ...


class GaugeSource(Protocol):
    """A plugin with numbers of its own for /metrics (optional)."""

    def gauges(self) -> dict[str, tuple[str, Callable[[], float]]]:
        """Metric name (without the prefix) -> (help text, reader)."""
        ...


Builder = Callable[[Config], ServicePlugin]


class PluginMissingError(RuntimeError):
    pass


def load_builder(name: str) -> Builder:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            builder: Builder = ep.load()
            return builder
    raise PluginMissingError(
        f"service {name!r} not found: install the package (make install / pip install .)"
    )


def build_plugins(config: Config) -> list[ServicePlugin]:
    names = [
        n for n, on in (("controller", config.runs_controller), ("node", config.runs_node)) if on
    ]
    return [load_builder(name)(config) for name in names]
