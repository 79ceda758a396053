"""The error boundary is applied when services are registered, once per method."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from driver.boundary import ErrorBoundary
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.errors import NotFound


class _RecordingServer:
    """Keeps what the registrar forwards, as the real server would."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered[service] = dict(handlers)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Identity(csi_pb2_grpc.IdentityServicer):
    async def Probe(self, request: Any, context: Any) -> Any:
        raise NotFound("nothing here")


class _Ctx:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise RuntimeError("aborted")


async def test_both_registration_paths_are_wrapped_and_reused() -> None:
    server = _RecordingServer()
    registrar = ErrorBoundary().registrar(server)  # type: ignore[arg-type]
    csi_pb2_grpc.add_IdentityServicer_to_server(_Identity(), registrar)  # type: ignore[abstract]

    registered = server.registered["csi.v1.Identity"]["Probe"]
    (generic,) = server.generic
    first = generic.service(_Details("/csi.v1.Identity/Probe"))
    assert first is not None
    assert generic.service(_Details("/csi.v1.Identity/Probe")) is first  # wrapped once
    assert generic.service(_Details("/csi.v1.Identity/Nope")) is None  # grpc answers UNIMPLEMENTED

    for handler in (registered, first):
        ctx = _Ctx()
        with pytest.raises(RuntimeError, match="aborted"):
            await handler.unary_unary(csi_pb2.ProbeRequest(), ctx)  # type: ignore[arg-type,misc]
        # The domain error became its gRPC code: the boundary ran.
        assert ctx.aborted == (grpc.StatusCode.NOT_FOUND, "nothing here")
        assert handler.request_deserializer == csi_pb2.ProbeRequest.FromString
