"""The CSI Node service.

Only what is built is advertised: NodeGetInfo answers; staging and publishing
arrive with the platform mounters and answer UNIMPLEMENTED until then.
"""

from __future__ import annotations

from typing import Any

import grpc

from driver.config import Config
from driver.csi import csi_pb2, csi_pb2_grpc
from driver.errors import Unimplemented

Ctx = grpc.aio.ServicerContext[Any, Any]


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    async def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: Ctx
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self._node_id)

    async def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: Ctx
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[])

    # -- built with the platform mounters ---------------------------------

    async def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeStageVolumeResponse:
        raise Unimplemented("NodeStageVolume is not supported by this driver")

    async def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        raise Unimplemented("NodeUnstageVolume is not supported by this driver")

    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: Ctx
    ) -> csi_pb2.NodePublishVolumeResponse:
        raise Unimplemented("NodePublishVolume is not supported by this driver")

    async def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        raise Unimplemented("NodeUnpublishVolume is not supported by this driver")

    async def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: Ctx
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        raise Unimplemented("NodeGetVolumeStats is not supported by this driver")

    async def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeExpandVolumeResponse:
        raise Unimplemented("NodeExpandVolume is not supported by this driver")


class NodePlugin:
    name = "node"

    def __init__(self, config: Config) -> None:
        self.service = NodeService(config.node_id)

    def register(self, server: grpc.aio.Server) -> None:
        csi_pb2_grpc.add_NodeServicer_to_server(self.service, server)

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def build(config: Config) -> NodePlugin:
    return NodePlugin(config)
