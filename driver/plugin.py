"""How the core finds and runs the Controller and Node services.

``driver`` may not import ``controller`` or ``node`` (an import-linter
contract).  Each of them publishes a ``build(config) -> ServicePlugin``
function as an entry point in the ``csi_smb_nfs.services`` group; the core
loads the ones the ``--mode`` asks for, and only those: a node never
imports the controller's client libraries, a controller never the mounters.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
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


#: The services this distribution ships, as its entry points name them
#: (pyproject.toml; a unit test keeps the two equal).  Resolved by name
#: first: scanning entry points needs ``importlib.metadata``, which costs
#: the start-up ~15 ms and ~6 MiB of RSS (measured), for nothing.
BUILTIN: dict[str, str] = {
    "controller": "controller.service:build",
    "node": "node.service:build",
}


def _resolve(spec: str) -> Builder:
    module, _, attr = spec.partition(":")
    builder: Builder = getattr(importlib.import_module(module), attr)
    return builder


def load_builder(name: str) -> Builder:
    spec = BUILTIN.get(name)
    if spec is not None:
        try:
            return _resolve(spec)
        except ModuleNotFoundError as exc:
            module = spec.partition(":")[0]
            if not exc.name or not (module + ".").startswith(exc.name + "."):
                raise  # the service is there but one of its own imports is not
    from importlib import metadata

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            found: Builder = ep.load()
            return found
    raise PluginMissingError(
        f"service {name!r} not found: install the package (make install / pip install .)"
    )


def build_plugins(config: Config) -> list[ServicePlugin]:
    names = [
        n for n, on in (("controller", config.runs_controller), ("node", config.runs_node)) if on
    ]
    return [load_builder(name)(config) for name in names]
