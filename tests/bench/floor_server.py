"""The required stack's floor: the smallest CSI server it allows.

``python tests/bench/floor_server.py unix:///path.sock`` (with the driver installed:
the CSI messages come from the installed package)

It imports what every mode of the driver must (asyncio, grpcio's aio
server, the generated CSI messages, structlog configured for JSON lines,
psutil) and answers Identity.Probe, nothing more.  The start-up benchmark
runs it beside the driver in the same run, so the driver's start-up and idle
memory read as a ratio over what the stack itself costs on this machine.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import grpc
import psutil
import structlog

from driver.csi import csi_pb2, csi_pb2_grpc


class _Identity(csi_pb2_grpc.IdentityServicer):
    async def GetPluginInfo(self, request: Any, context: Any) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name="floor.csi.example", vendor_version="0")

    async def GetPluginCapabilities(
        self, request: Any, context: Any
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        return csi_pb2.GetPluginCapabilitiesResponse()

    async def Probe(self, request: Any, context: Any) -> csi_pb2.ProbeResponse:
        response = csi_pb2.ProbeResponse()
        response.ready.value = True
        return response


async def _serve(endpoint: str) -> None:
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    psutil.Process()  # the driver reads its own process for health and metrics
    server = grpc.aio.server()
    csi_pb2_grpc.add_IdentityServicer_to_server(_Identity(), server)
    server.add_insecure_port(endpoint)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
