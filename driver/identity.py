"""The CSI Identity service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from driver.csi import csi_pb2, csi_pb2_grpc
from driver.plugin import ServicePlugin
from driver.version import package_version


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, driver_name: str, plugins: Sequence[ServicePlugin]) -> None:
        self._name = driver_name
        self._version = package_version()
        self._plugins = list(plugins)

    async def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self._name, vendor_version=self._version)

    async def GetPluginCapabilities(
        self,
        request: csi_pb2.GetPluginCapabilitiesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        caps = []
        if any(p.name == "controller" for p in self._plugins):
            caps.append(
                csi_pb2.PluginCapability(
                    service=csi_pb2.PluginCapability.Service(
                        type=csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE
                    )
                )
            )
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    async def Probe(
        self, request: csi_pb2.ProbeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> csi_pb2.ProbeResponse:
        ready = True
        for plugin in self._plugins:
            ready = ready and await plugin.ready()
        response = csi_pb2.ProbeResponse()
        response.ready.value = ready
        return response
