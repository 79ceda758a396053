"""Request-scoped facts that services report back to the interceptor."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

import structlog


@dataclass(slots=True)
class RpcInfo:
    method: str
    protocol: str = ""
    outcome: dict[str, object] | None = None


_current: contextvars.ContextVar[RpcInfo | None] = contextvars.ContextVar("csi_rpc", default=None)


def current() -> RpcInfo | None:
    return _current.get()


def begin(method: str) -> contextvars.Token[RpcInfo | None]:
    return _current.set(RpcInfo(method))


def end(token: contextvars.Token[RpcInfo | None]) -> None:
    _current.reset(token)


def set_protocol(protocol: str) -> None:
    """Label this RPC's metrics and log lines with ``smb`` or ``nfs``."""
    info = _current.get()
    if info is not None:
        info.protocol = protocol
    structlog.contextvars.bind_contextvars(protocol=protocol)


def report(**fields: object) -> None:
    """Facts about the outcome for this RPC's one log line (e.g. ``created``).

    Cheaper than a log line of the service's own, and the operator finds the
    request and its result in one place.
    """
    info = _current.get()
    if info is not None:
        if info.outcome is None:
            info.outcome = {}
        info.outcome.update(fields)
