"""Dual-protocol volumes through a real gRPC socket: one directory exported by
a real Samba *and* a real nfs-ganesha on loopback.

The two servers serve the same directory on disk: Samba's share ``export``
is ``<root>/shares/export`` and ganesha (root ``<root>/shares``) exports
``<root>/shares/export``, so what one protocol creates the other sees.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controller.params import TRASH_DIR
from driver.csi import csi_pb2
from driver.server import DriverServer
from driver.volume_id import parse_volume_id
from tests.csi_requests import cap
from tests.harness import Client, expect_code, running_controller, wait_until
from tests.servers.ganesha import GaneshaServer
from tests.servers.samba import SambaServer, Share

pytestmark = [pytest.mark.integration, pytest.mark.root]

AM = csi_pb2.VolumeCapability.AccessMode
USER = "csitest1"


@dataclass
class Tree:
    samba: SambaServer
    ganesha: GaneshaServer
    name: str  # a new tree per test: ganesha caches names, so never reuse a removed one

    @property
    def disk(self) -> Path:
        """The tree both protocols serve, inside the shared directory."""
        return self.ganesha.export_path / self.name

    @property
    def params(self) -> dict[str, str]:
        g = self.ganesha
        return {
            "smbSource": f"//{self.samba.host}:{self.samba.port}/export/{self.name}",
            "nfsSource": f"nfs://{g.host}:{g.port}{g.pseudo_path}/{self.name}",
        }

    @property
    def secrets(self) -> dict[str, str]:
        return {"username": USER, "password": self.samba.password(USER)}

    def create(self, name: str, *, via: str, **params: str) -> csi_pb2.CreateVolumeRequest:
        return csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=[cap("nfs:nfsvers=4.1", "smb:vers=3.1.1")],
            parameters={**self.params, "provisionVia": via, **params},
            secrets=self.secrets if via == "smb" else {},
        )

    def entries(self) -> list[str]:
        return sorted(os.listdir(self.disk))


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SambaServer, GaneshaServer]]:
    """A Samba share and an NFS export of one directory (its own pair: the
    session's servers serve separate trees)."""
    # Not under pytest's basetemp (0700 root): smbd reaches the share as the user.
    root = Path(tempfile.mkdtemp(prefix="pytest-dual-"))
    samba = SambaServer(root, users={USER: "dual-" + os.urandom(9).hex()}, shares=[Share("export")])
    ganesha = GaneshaServer(root / "shares", versions=("4",))
    try:
        samba.start()
        assert ganesha.export_path == samba.share_path("export")
        ganesha.start()
        yield samba, ganesha
    finally:
        ganesha.close()
        samba.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tree(servers: tuple[SambaServer, GaneshaServer]) -> Tree:
    t = Tree(*servers, name="k8s-" + os.urandom(4).hex())
    t.disk.mkdir()
    t.disk.chmod(0o777)  # the SMB user and NFS root both write here
    return t


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[tuple[DriverServer, Client]]:
    async with running_controller(tmp_path / "csi.sock", backend_timeout=10) as pair:
        yield pair


@pytest.mark.parametrize("via", ["nfs", "smb"])
async def test_create_delete_through_each_protocol(
    driver: tuple[DriverServer, Client], tree: Tree, via: str
) -> None:
    _, c = driver
    vol = (await c.controller.CreateVolume(tree.create("pvc-a", via=via))).volume
    vid = parse_volume_id(vol.volume_id)
    assert vid.dual is not None
    assert vol.volume_id.startswith(f"v2#{via}#nfs#")
    context = dict(vol.volume_context)
    assert context["smbSource"] == tree.params["smbSource"]
    assert context["nfsSource"] == tree.params["nfsSource"]
    assert context["subDir"] == "pvc-a"
    assert tree.samba.password(USER) not in str(context)
    assert tree.entries() == ["pvc-a"]  # one directory, whatever the protocol

    # The same directory through the other protocol: it already exists.
    other = "smb" if via == "nfs" else "nfs"
    twin = await c.controller.CreateVolume(tree.create("pvc-twin", via=other, subDir="pvc-a"))
    twin_id = parse_volume_id(twin.volume.volume_id)
    assert twin_id.subdir == vid.subdir
    assert tree.entries() == ["pvc-a"]

    (tree.disk / "pvc-a" / "data.txt").write_text("both\n")
    secrets = tree.secrets if via == "smb" else {}
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=secrets)
    )
    # The volume held a file: it went into the trash at once, and the purge empties it.
    assert tree.entries() == [TRASH_DIR]
    await wait_until(lambda: os.listdir(tree.disk / TRASH_DIR) == [], timeout=60)
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=secrets)
    )


@pytest.mark.parametrize("via", ["nfs", "smb"])
async def test_archive_through_each_protocol(
    driver: tuple[DriverServer, Client], tree: Tree, via: str
) -> None:
    _, c = driver
    vol = (
        await c.controller.CreateVolume(
            tree.create("pvc-b", via=via, onDelete="archive", mountPermissions="0777")
        )
    ).volume
    (tree.disk / "pvc-b" / "keep.txt").write_text("kept\n")
    await c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(
            volume_id=vol.volume_id, secrets=tree.secrets if via == "smb" else {}
        )
    )
    assert tree.entries() == ["archived-pvc-b"]
    assert (tree.disk / "archived-pvc-b" / "keep.txt").read_text() == "kept\n"


async def test_snapshot_over_smb_restored_and_cloned_over_nfs(
    driver: tuple[DriverServer, Client], tree: Tree
) -> None:
    """Both sources survive a snapshot; a class provisioning over the other
    protocol finds the archive under its own name.  (The other direction needs
    an SMB account that may read what NFS root wrote: docs/mixed-clusters.md.)"""
    _, c = driver
    vol = (await c.controller.CreateVolume(tree.create("pvc-s", via="smb"))).volume
    (tree.disk / "pvc-s" / "a.txt").write_bytes(b"snapshot me\n")
    snap = (
        await c.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(
                name="snap-1", source_volume_id=vol.volume_id, secrets=tree.secrets
            )
        )
    ).snapshot
    assert snap.ready_to_use
    assert snap.snapshot_id.startswith("s2#smb#")
    assert snap.source_volume_id == vol.volume_id
    restore = tree.create("pvc-r", via="nfs")
    restore.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
    restored = (await c.controller.CreateVolume(restore)).volume
    assert restored.volume_id.startswith("v2#nfs#")
    assert (tree.disk / "pvc-r" / "a.txt").read_bytes() == b"snapshot me\n"

    clone = tree.create("pvc-c", via="nfs")
    clone.volume_content_source.volume.volume_id = vol.volume_id
    await c.controller.CreateVolume(clone)
    assert (tree.disk / "pvc-c" / "a.txt").read_bytes() == b"snapshot me\n"
    assert tree.entries() == [".snapshots", "pvc-c", "pvc-r", "pvc-s"]

    await c.controller.DeleteSnapshot(
        csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id, secrets=tree.secrets)
    )
    assert not list((tree.disk / ".snapshots").glob("*.tar.gz"))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"source": "//127.0.0.1/export"}, ["'source'", "smbSource", "nfsSource"]),
        ({"nfsSource": ""}, ["nfsSource"]),
        ({"smbSource": "127.0.0.1:/export"}, ["smbSource"]),
        ({"nfsSource": "nfs://127.0.0.1/csi/../.."}, ["nfsSource"]),
        ({"provisionVia": "ftp"}, ["provisionVia"]),
        ({"linuxProtocol": "iscsi"}, ["linuxProtocol"]),
    ],
)
async def test_parameter_errors(
    driver: tuple[DriverServer, Client], tree: Tree, change: dict[str, str], words: list[str]
) -> None:
    _, c = driver
    req = tree.create("pvc-bad", via="nfs")
    req.parameters.update(change)
    details = await expect_code(c.controller.CreateVolume(req), grpc.StatusCode.INVALID_ARGUMENT)
    for word in words:
        assert word in details
    assert tree.entries() == []


async def test_provision_via_smb_without_secret(
    driver: tuple[DriverServer, Client], tree: Tree
) -> None:
    _, c = driver
    req = tree.create("pvc-c", via="smb")
    req.secrets.clear()
    details = await expect_code(c.controller.CreateVolume(req), grpc.StatusCode.INVALID_ARGUMENT)
    assert "provisioner secret" in details
    assert "username" in details
    assert tree.entries() == []


async def test_capacity_and_validate_of_a_dual_class(
    driver: tuple[DriverServer, Client], tree: Tree
) -> None:
    """GetCapacity carries no secret: a class that provisions over SMB answers
    through the NFS side of the same tree; ValidateVolumeCapabilities finds a
    v2 volume through its provisionVia side."""
    _, c = driver
    params = {**tree.params, "provisionVia": "smb"}
    capacity = await c.controller.GetCapacity(csi_pb2.GetCapacityRequest(parameters=params))
    free = os.statvfs(tree.disk)
    assert 0 < capacity.available_capacity <= free.f_blocks * free.f_frsize
    vol = (await c.controller.CreateVolume(tree.create("pvc-v", via="smb"))).volume
    ok = await c.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id, volume_capabilities=[cap()], secrets=tree.secrets
        )
    )
    assert ok.HasField("confirmed")
    (tree.disk / "pvc-v").rmdir()
    await expect_code(
        c.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id=vol.volume_id, volume_capabilities=[cap()], secrets=tree.secrets
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
