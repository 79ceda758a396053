"""The core against a real gRPC server on a Unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import grpc
import pytest

from controller.service import ControllerPlugin
from driver.config import Config, parse_endpoint
from driver.csi import csi_pb2
from driver.server import serve
from driver.version import package_version
from node.service import NodePlugin
from tests.csi_requests import cap
from tests.fakes.share import FakeBackends
from tests.harness import (
    client_for,
    driver_process,
    run_ctl,
    running_driver,
    scrape_metrics,
    wait_until,
)

pytestmark = pytest.mark.integration

MOUNT_CAP = cap()


def _plugins(backends: FakeBackends, mode: str = "all") -> list[object]:
    cfg = Config(endpoint=parse_endpoint("unix:///unused"), node_id="test-node")
    out: list[object] = []
    if mode in ("all", "controller"):
        out.append(ControllerPlugin(backends))
    if mode in ("all", "node"):
        out.append(NodePlugin(cfg, None))
    return out


def _create(name: str) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        volume_capabilities=[MOUNT_CAP],
        parameters={"source": "//127.0.0.1/share"},
        secrets={"username": "u", "password": "Sup3r-Secret!pw"},
    )


async def test_identity(tmp_path: Path) -> None:
    async with running_driver(tmp_path / "csi.sock", _plugins(FakeBackends())) as (_, c):
        info = await c.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
        assert info.name == "smb-nfs.csi.io"
        assert info.vendor_version == package_version()
        caps = await c.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
        assert [cap.service.type for cap in caps.capabilities] == [
            csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE
        ]
        probe = await c.identity.Probe(csi_pb2.ProbeRequest())
        assert probe.ready.value is True


async def test_node_mode_has_no_controller(tmp_path: Path) -> None:
    async with running_driver(
        tmp_path / "csi.sock", _plugins(FakeBackends(), "node"), mode="node"
    ) as (_, c):
        caps = await c.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
        assert list(caps.capabilities) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.controller.CreateVolume(_create("v"))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        info = await c.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        assert info.node_id == "test-node"


async def test_unbuilt_rpcs_are_unimplemented(tmp_path: Path) -> None:
    async with running_driver(tmp_path / "csi.sock", _plugins(FakeBackends())) as (_, c):
        for call, req in (
            (c.controller.ListVolumes, csi_pb2.ListVolumesRequest()),
            (c.controller.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest()),
            (c.controller.GetSnapshot, csi_pb2.GetSnapshotRequest()),
            (c.controller.ControllerUnpublishVolume, csi_pb2.ControllerUnpublishVolumeRequest()),
            (c.controller.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest()),
            (c.controller.ControllerModifyVolume, csi_pb2.ControllerModifyVolumeRequest()),
            (c.node.NodeExpandVolume, csi_pb2.NodeExpandVolumeRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(req)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, call


async def test_same_volume_concurrently_is_aborted(tmp_path: Path) -> None:
    backends = FakeBackends()
    share = backends.share("smb://127.0.0.1/share")
    share.hold = asyncio.Event()
    async with running_driver(tmp_path / "csi.sock", _plugins(backends)) as (_, c):
        first = asyncio.ensure_future(c.controller.CreateVolume(_create("vol-a")))
        await wait_until(lambda: share.in_flight == 1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.controller.CreateVolume(_create("vol-a"))
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "already in progress" in (err.value.details() or "")
        share.hold.set()
        done = await first
        assert done.volume.volume_id.endswith("#vol-a#delete")
        again = await c.controller.CreateVolume(_create("vol-a"))
        assert again.volume.volume_id == done.volume.volume_id


async def test_sigterm_lets_in_flight_rpc_finish(tmp_path: Path) -> None:
    backends = FakeBackends()
    share = backends.share("smb://127.0.0.1/share")
    share.hold = asyncio.Event()
    sock = tmp_path / "csi.sock"
    config = Config(endpoint=parse_endpoint(f"unix://{sock}"), node_id="n", grace_period=10)
    server_task = asyncio.ensure_future(serve(config, _plugins(backends)))  # type: ignore[arg-type]
    await wait_until(sock.exists)
    client = client_for(f"unix://{sock}")
    try:
        in_flight = asyncio.ensure_future(client.controller.CreateVolume(_create("vol-b")))
        await wait_until(lambda: share.in_flight == 1)
        os.kill(os.getpid(), signal.SIGTERM)

        async def probe_code() -> grpc.StatusCode:
            try:
                await client.identity.Probe(csi_pb2.ProbeRequest(), timeout=2)
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        # New calls are refused (once the signal is handled) while the old one drains.
        deadline = asyncio.get_running_loop().time() + 10
        while (code := await probe_code()) == grpc.StatusCode.OK:
            assert asyncio.get_running_loop().time() < deadline, "SIGTERM was not handled"
        # UNAVAILABLE once the server has sent GOAWAY; a call that raced the
        # GOAWAY (accepted by grpc core, never handed to a handler) is
        # CANCELLED instead.  Seen once in CI under load.  Both mean: not
        # served, retry elsewhere.
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not server_task.done()
        share.hold.set()
        response = await in_flight
        assert response.volume.volume_id
        await asyncio.wait_for(server_task, 15)
        assert not sock.exists()
        assert backends.closed
    finally:
        await client.channel.close()
        if not server_task.done():
            server_task.cancel()


async def test_stale_socket_replaced_live_one_refused(tmp_path: Path) -> None:
    import socket as so

    sock = tmp_path / "csi.sock"
    stale = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # leaves a socket file nobody listens on
    async with running_driver(sock, _plugins(FakeBackends())) as (_, c):
        assert (await c.identity.Probe(csi_pb2.ProbeRequest())).ready.value
        from driver.server import DriverServer, EndpointInUseError

        second = DriverServer(Config(endpoint=parse_endpoint(f"unix://{sock}"), node_id="x"), [])
        with pytest.raises(EndpointInUseError):
            await second.start()
    assert not sock.exists()


async def test_metrics_count_rpcs(tmp_path: Path) -> None:
    async with running_driver(tmp_path / "csi.sock", _plugins(FakeBackends()), metrics=True) as (
        srv,
        c,
    ):
        await c.identity.Probe(csi_pb2.ProbeRequest())
        await c.controller.CreateVolume(_create("vol-m"))
        bad = _create("")
        with pytest.raises(grpc.aio.AioRpcError):
            await c.controller.CreateVolume(bad)
        body = await scrape_metrics(srv.metrics_port)
    assert 'csi_smb_nfs_operations_total{code="OK",method="Probe",protocol="none"} 1.0' in body
    assert (
        'csi_smb_nfs_operations_total{code="OK",method="CreateVolume",protocol="smb"} 1.0' in body
    )
    assert 'method="CreateVolume",protocol="none"' in body  # rejected before the protocol was known
    assert 'code="INVALID_ARGUMENT"' in body
    assert "csi_smb_nfs_operation_duration_seconds_bucket" in body
    assert "Sup3r-Secret" not in body


def test_ctl_end_to_end(tmp_path: Path) -> None:
    with driver_process(tmp_path, "--mode", "all") as drv:
        out = run_ctl(drv.endpoint, "info")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["name"] == "smb-nfs.csi.io"
        out = run_ctl(drv.endpoint, "probe")
        assert json.loads(out.stdout) == {"ready": True}
        out = run_ctl(drv.endpoint, "capabilities")
        caps = json.loads(out.stdout)
        assert caps["plugin"] == [{"service": {"type": "CONTROLLER_SERVICE"}}]
        assert {"rpc": {"type": "CREATE_DELETE_VOLUME"}} in caps["controller"]
        assert isinstance(caps["node"], list)
    # After SIGTERM the socket is gone and the process exited cleanly.
    assert drv.proc.returncode == 0, drv.logs()
    assert not (tmp_path / "csi.sock").exists()
    out = run_ctl(drv.endpoint, "probe", timeout=30)
    assert out.returncode == 1
    assert out.stderr.startswith("UNAVAILABLE")


def test_logs_are_json_and_never_hold_secrets(tmp_path: Path) -> None:
    secret = "Zz9-very-secret-pw"
    with driver_process(tmp_path, "--mode", "controller", "-v", "5") as drv:
        import grpc as g

        from driver.csi import csi_pb2_grpc

        with g.insecure_channel(drv.endpoint) as ch:
            stub = csi_pb2_grpc.ControllerStub(ch)
            req = csi_pb2.CreateVolumeRequest(
                name="v",
                volume_capabilities=[MOUNT_CAP],
                parameters={"source": "//127.0.0.1:1/share", "password": secret},
                secrets={"username": "u", "password": secret},
            )
            with pytest.raises(g.RpcError) as err:
                stub.CreateVolume(req, timeout=30)
            assert err.value.code() == g.StatusCode.INVALID_ARGUMENT
            assert secret not in (err.value.details() or "")
            delete = csi_pb2.DeleteVolumeRequest(volume_id="garbage", secrets={"password": secret})
            stub.DeleteVolume(delete, timeout=30)
    logs = drv.logs()
    assert secret not in logs
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]
    rpc_lines = [line for line in lines if line.get("event") == "rpc"]
    assert {line["method"] for line in rpc_lines} >= {"CreateVolume", "DeleteVolume"}
    create = next(line for line in rpc_lines if line["method"] == "CreateVolume")
    assert create["request"]["secrets"] == {"username": "***", "password": "***"}
    assert create["request"]["parameters"]["password"] == "***"
    assert create["code"] == "INVALID_ARGUMENT"
