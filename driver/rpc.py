"""Request-scoped facts that services report back to the error boundary."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

#: The servicer context every handler receives.
Ctx = grpc.aio.ServicerContext[Any, Any]


@dataclass(slots=True)
class RpcInfo:
    method: str
    protocol: str = ""
    outcome: dict[str, object] | None = None
    deadline: float | None = None  # time.monotonic() when the caller gives up
    repairs: list[tuple[str, bool]] | None = None  # (protocol, succeeded) per mount repair


_current: contextvars.ContextVar[RpcInfo | None] = contextvars.ContextVar("csi_rpc", default=None)


def current() -> RpcInfo | None:
    return _current.get()


def begin(method: str, time_remaining: float | None = None) -> contextvars.Token[RpcInfo | None]:
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return _current.set(RpcInfo(method, deadline=deadline))


def time_left() -> float | None:
    """Seconds until the caller's deadline (None: no deadline, or no RPC)."""
    info = _current.get()
    if info is None or info.deadline is None:
        return None
    return info.deadline - time.monotonic()


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


def note_repair(protocol: str, *, succeeded: bool) -> None:
    """Count a mount repair (attempted; succeeded or not) in the metrics."""
    info = _current.get()
    if info is not None:
        if info.repairs is None:
            info.repairs = []
        info.repairs.append((protocol, succeeded))
