"""Controller RPCs through a real gRPC socket against nfs-ganesha (v4 and v3)."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from driver.csi import csi_pb2
from driver.server import DriverServer
from tests.csi_requests import cap
from tests.harness import Client, expect_code, running_controller
from tests.servers.ganesha import GaneshaServer

pytestmark = pytest.mark.integration

AM = csi_pb2.VolumeCapability.AccessMode


@dataclass
class Nfs:
    server: GaneshaServer
    version: str

    @property
    def source(self) -> str:
        s = self.server
        if self.version == "3":
            return f"{s.host}:{s.export}/k8s"
        return f"nfs://{s.host}:{s.port}{s.pseudo_path}/k8s"

    @property
    def flags(self) -> tuple[str, ...]:
        return ("nfsvers=3",) if self.version == "3" else ("nfsvers=4.1",)

    def disk(self, rel: str = "") -> Path:
        return self.server.export_path / "k8s" / rel

    def create(self, name: str, **params: str) -> csi_pb2.CreateVolumeRequest:
        return csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[cap(*self.flags)],
            parameters={"source": self.source, **params},
        )


@pytest.fixture(params=["4", "3"], ids=["v4", "v3"])
def nfs(request: pytest.FixtureRequest) -> Iterator[Nfs]:
    server: GaneshaServer = request.getfixturevalue(f"ganesha_v{request.param}")
    (server.export_path / "k8s").mkdir(exist_ok=True)
    with server.client_netns():  # v3: this thread's sockets open inside the server's netns
        yield Nfs(server, request.param)


@pytest.fixture
async def driver(tmp_path: Path, nfs: Nfs) -> AsyncIterator[tuple[DriverServer, Client]]:
    async with running_controller(tmp_path / "csi.sock", backend_timeout=5) as pair:
        yield pair


async def test_create_delete_with_mode(driver: tuple[DriverServer, Client], nfs: Nfs) -> None:
    _, c = driver
    vol = (await c.controller.CreateVolume(nfs.create("pvc-a", mountPermissions="2770"))).volume
    vers = "3" if nfs.version == "3" else "4.1"
    assert vol.volume_id.endswith(f"/k8s#pvc-a#delete#vers={vers}")
    assert dict(vol.volume_context)["protocol"] == "nfs"
    path = nfs.disk("pvc-a")
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o2770
    again = await c.controller.CreateVolume(nfs.create("pvc-a", mountPermissions="2770"))
    assert again.volume == vol
    await expect_code(
        c.controller.CreateVolume(nfs.create("pvc-a")), grpc.StatusCode.ALREADY_EXISTS
    )
    (path / "f.txt").write_text("x")
    await c.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id))
    assert not path.exists()
    await c.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id))


async def test_on_delete_modes_and_read_only_tree(
    driver: tuple[DriverServer, Client], nfs: Nfs
) -> None:
    _, c = driver
    keep = (
        await c.controller.CreateVolume(nfs.create("pvc-keep", onDelete="retain"))
    ).volume.volume_id
    await c.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=keep))
    assert nfs.disk("pvc-keep").is_dir()

    arch = (
        await c.controller.CreateVolume(nfs.create("pvc-arch", onDelete="archive"))
    ).volume.volume_id
    nfs.disk("archived-pvc-arch").mkdir(exist_ok=True)
    (nfs.disk("archived-pvc-arch") / "old.txt").write_text("old")
    (nfs.disk("pvc-arch") / "new.txt").write_text("new")
    await c.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=arch))
    assert not nfs.disk("pvc-arch").exists()
    assert sorted(p.name for p in nfs.disk("archived-pvc-arch").iterdir()) == ["new.txt"]

    ro = (await c.controller.CreateVolume(nfs.create("pvc-ro"))).volume.volume_id
    vol = nfs.disk("pvc-ro")
    (vol / "d" / "e").mkdir(parents=True)
    (vol / "d" / "e" / "f.txt").write_text("x")
    nobody = pwd.getpwnam("nobody")
    for p in [vol, *vol.rglob("*")]:
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
        p.chmod(0o555 if p.is_dir() else 0o444)
    await c.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=ro))
    assert not vol.exists()


async def test_capacity_and_validate(driver: tuple[DriverServer, Client], nfs: Nfs) -> None:
    _, c = driver
    vid = (await c.controller.CreateVolume(nfs.create("pvc-cap"))).volume.volume_id
    got = await c.controller.GetCapacity(
        csi_pb2.GetCapacityRequest(
            parameters={"source": nfs.source}, volume_capabilities=[cap(*nfs.flags)]
        )
    )
    st = os.statvfs(nfs.server.export_path)
    expected = st.f_bavail * st.f_frsize
    assert abs(got.available_capacity - expected) < max(expected // 20, 64 << 20)
    ok = await c.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[cap()])
    )
    assert ok.HasField("confirmed")
    await expect_code(
        c.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id=vid.replace("pvc-cap", "pvc-none"), volume_capabilities=[cap()]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_traversal_and_bad_input(driver: tuple[DriverServer, Client], nfs: Nfs) -> None:
    _, c = driver
    before = sorted(str(p) for p in nfs.server.export_path.rglob("*"))
    for bad in ("../x", "a/../../x", "a\\b", "x\x00", ".."):
        await expect_code(
            c.controller.CreateVolume(nfs.create("v", subDir=bad)), grpc.StatusCode.INVALID_ARGUMENT
        )
    await expect_code(
        c.controller.CreateVolume(nfs.create("v", unknown="1")), grpc.StatusCode.INVALID_ARGUMENT
    )
    krb = nfs.create("v")
    krb.volume_capabilities[0].mount.mount_flags.append("sec=krb5")
    details = await expect_code(c.controller.CreateVolume(krb), grpc.StatusCode.INVALID_ARGUMENT)
    assert "sec=krb5" in details
    assert sorted(str(p) for p in nfs.server.export_path.rglob("*")) == before


async def test_server_stop_and_restart(driver: tuple[DriverServer, Client], nfs: Nfs) -> None:
    _, c = driver
    await c.controller.CreateVolume(nfs.create("pvc-s1"))
    nfs.server.stop()
    try:
        await expect_code(
            c.controller.CreateVolume(nfs.create("pvc-s2")), grpc.StatusCode.UNAVAILABLE
        )
    finally:
        nfs.server.start()
    await c.controller.CreateVolume(nfs.create("pvc-s2"))
    assert nfs.disk("pvc-s2").is_dir()


async def test_200_concurrent_creates(driver: tuple[DriverServer, Client], nfs: Nfs) -> None:
    _, c = driver
    names = [f"pvc-n{i:03d}" for i in range(200)]
    results = await asyncio.gather(
        *(c.controller.CreateVolume(nfs.create(n)) for n in names), return_exceptions=True
    )
    assert not [r for r in results if isinstance(r, BaseException)]
    assert all(nfs.disk(n).is_dir() for n in names)
    await asyncio.gather(
        *(
            c.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=r.volume.volume_id))
            for r in results
        )
    )
    assert not any(nfs.disk(n).exists() for n in names)
