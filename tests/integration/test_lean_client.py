"""The benchmarks' lean HTTP/2 client against a real grpc.aio server on a Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.bench.lean_client import LeanChannel, LeanRpcError

pytestmark = pytest.mark.integration

BIG = "m" * 100_000  # several DATA frames and well past the default 64 KiB window


class _Identity(csi_pb2_grpc.IdentityServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        #: When set, Probe calls wait until this many are in flight together.
        self.hold_until = 0
        self._enough = asyncio.Event()

    async def GetPluginInfo(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return csi_pb2.GetPluginInfoResponse(name="lean.test", manifest={"big": BIG})

    async def Probe(self, request: Any, context: Any) -> Any:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold_until:
                if self.in_flight >= self.hold_until:
                    self._enough.set()
                # Bounded only so that a client that does not multiplex fails
                # the assertion instead of hanging the suite.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._enough.wait(), 30)
        finally:
            self.in_flight -= 1
        return csi_pb2.ProbeResponse()

    async def GetPluginCapabilities(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today: 100% sure ✓")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, _Identity, grpc.aio.Server]]:
    service = _Identity()
    srv = grpc.aio.server()
    csi_pb2_grpc.add_IdentityServicer_to_server(service, srv)
    sock = f"unix://{tmp_path / 'lean.sock'}"
    srv.add_insecure_port(sock)
    await srv.start()
    try:
        yield sock, service, srv
    finally:
        await srv.stop(None)


async def test_calls_errors_big_messages_and_concurrency(
    server: tuple[str, _Identity, grpc.aio.Server],
) -> None:
    sock, service, _ = server
    async with LeanChannel(sock) as channel:
        info = await channel.unary(
            "/csi.v1.Identity/GetPluginInfo",
            csi_pb2.GetPluginInfoRequest(),
            csi_pb2.GetPluginInfoResponse,
        )
        assert info.name == "lean.test"
        assert info.manifest["big"] == BIG
        for _ in range(3):  # the receive window stays open across big responses
            again = await channel.unary(
                "/csi.v1.Identity/GetPluginInfo",
                csi_pb2.GetPluginInfoRequest(),
                csi_pb2.GetPluginInfoResponse,
            )
            assert again == info

        with pytest.raises(LeanRpcError) as err:
            await channel.unary(
                "/csi.v1.Identity/GetPluginCapabilities",
                csi_pb2.GetPluginCapabilitiesRequest(),
                csi_pb2.GetPluginCapabilitiesResponse,
            )
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details == "not today: 100% sure ✓"

        with pytest.raises(LeanRpcError) as err:
            await channel.unary(
                "/csi.v1.Identity/Nope", csi_pb2.ProbeRequest(), csi_pb2.ProbeResponse
            )
        assert err.value.code == grpc.StatusCode.UNIMPLEMENTED

        before = service.calls
        service.hold_until = 32
        await asyncio.gather(
            *(
                channel.unary(
                    "/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), csi_pb2.ProbeResponse
                )
                for _ in range(64)
            )
        )
        assert service.calls - before == 64
        assert service.most_in_flight >= 32  # multiplexed on the one connection


async def test_server_gone_fails_calls(server: tuple[str, _Identity, grpc.aio.Server]) -> None:
    sock, _, srv = server
    async with LeanChannel(sock) as channel:
        await channel.unary("/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), csi_pb2.ProbeResponse)
        pending = asyncio.ensure_future(
            channel.unary("/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), csi_pb2.ProbeResponse)
        )
        await srv.stop(None)
        with pytest.raises((LeanRpcError, ConnectionError)):
            await asyncio.wait_for(pending, 10)
        with pytest.raises((LeanRpcError, ConnectionError)):
            await asyncio.wait_for(
                channel.unary(
                    "/csi.v1.Identity/Probe", csi_pb2.ProbeRequest(), csi_pb2.ProbeResponse
                ),
                10,
            )
