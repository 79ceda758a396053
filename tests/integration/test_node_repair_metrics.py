"""Repairs reach the metrics through the real gRPC server and its error
boundary: the Node service with LinuxPlatform over the stateful fakes."""

from __future__ import annotations

import errno
from pathlib import Path

import grpc
import pytest

from driver.config import Config, parse_endpoint
from node.service import NodePlugin
from tests.fakes.linux import make_platform
from tests.harness import running_driver
from tests.unit.test_node_service import (
    NFS_CONTEXT,
    SECRETS,
    SMB_CONTEXT,
    World,
    publish_req,
    stage_req,
)


async def test_repairs_are_counted_per_protocol(tmp_path: Path) -> None:
    world = World(tmp_path)
    cfg = Config(
        endpoint=parse_endpoint(f"unix://{tmp_path}/csi.sock"),
        node_id="n1",
        kubelet_dir=str(world.kubelet),
    )
    platform = make_platform(world.host, world.runner, world.secrets_dir)
    async with running_driver(tmp_path / "csi.sock", [NodePlugin(cfg, platform)], metrics=True) as (
        srv,
        c,
    ):
        for context, secrets in ((SMB_CONTEXT, SECRETS), (NFS_CONTEXT, {})):
            name = context["protocol"]
            stage = stage_req(world, volume_context=context, secrets=secrets)
            stage.staging_target_path = world.staging(name)
            await c.node.NodeStageVolume(stage)
            publish = publish_req(world, volume_context=context, target_path=world.target(name))
            publish.staging_target_path = world.staging(name)
            await c.node.NodePublishVolume(publish)
            world.host.break_mount(world.staging(name), errno.ESTALE)
            if name == "smb":
                world.host.down.add(("srv", 445))  # first: the server is still down
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await c.node.NodePublishVolume(publish)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                world.host.down.clear()
            await c.node.NodePublishVolume(publish)  # repaired
            await c.node.NodePublishVolume(publish)  # healthy: not counted
        assert srv.metrics is not None
        body = srv.metrics.render().decode()
    assert 'csi_smb_nfs_mount_repairs_attempted_total{protocol="smb"} 1.0' in body
    assert 'csi_smb_nfs_mount_repairs_succeeded_total{protocol="smb"} 1.0' in body
    assert 'csi_smb_nfs_mount_repairs_attempted_total{protocol="nfs"} 1.0' in body
    assert 'csi_smb_nfs_mount_repairs_succeeded_total{protocol="nfs"} 1.0' in body
    assert (
        'csi_smb_nfs_operations_total{code="UNAVAILABLE",method="NodePublishVolume",'
        'protocol="smb"} 1.0' in body
    )
